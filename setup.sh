#!/usr/bin/env bash
# Set up napari-lesion-align in ./.venv (CPU build of torch, the built-in offline model).
#   ./setup.sh          the package, its offline model and the napari GUI (PyQt6)
#   ./setup.sh --test   the same plus what the tests need (pytest, pytest-qt, Xvfb libraries,
#                       Dask for the cluster tests)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

if [ "$with_tests" = 1 ]; then
  # napari needs a real (virtual) X server in the tests: Xvfb and the GL/xcb libraries
  pkgs="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 libxcb-cursor0
        libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0
        libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 libdbus-1-3 libfontconfig1"
  if ! command -v Xvfb >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      SUDO=""
      [ "$(id -u)" != 0 ] && SUDO="sudo"
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $pkgs
    else
      echo "setup.sh: install Xvfb and the OpenGL/xcb libraries with your package manager" >&2
    fi
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: a bare 'torch' requirement would pull a multi-GB CUDA build
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
extras="offline,gui"
[ "$with_tests" = 1 ] && extras="offline,gui,dask,test"
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "setup.sh: ready (.venv)"
