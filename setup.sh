#!/usr/bin/env bash
# Set up napari-lesion-align in ./.venv (torch, the built-in offline model, the napari GUI).
#   ./setup.sh          the package, its offline model and the napari GUI (PyQt6), with the
#                       CPU build of torch (= ./setup.sh --cpu)
#   ./setup.sh --gpu    the same with the default (CUDA) build of torch and accelerate (the
#                       'gpu' extra: [model] device_map for models larger than one GPU)
#   ./setup.sh --test   plus what the tests need (pytest, pytest-qt, Xvfb libraries, Dask
#                       for the cluster tests); combines with --cpu / --gpu
#
# torch with --cpu: from PyTorch's CPU wheel index (https://download.pytorch.org/whl/cpu),
# tried once with a 5 s timeout and no retries; where that index cannot be reached (e.g. a
# machine that only sees a PyPI mirror) it falls back to the default index at once. The
# script says which build it installed. An importable torch is kept as it is (--gpu
# replaces a CPU build).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
with_tests=0
build=cpu
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    --cpu) build=cpu ;;
    --gpu) build=gpu ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (use --cpu, --gpu, --test)" >&2; exit 2 ;;
  esac
done

if [ "$with_tests" = 1 ]; then
  # napari needs a real (virtual) X server in the tests: Xvfb and the GL/xcb libraries
  pkgs="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 libxcb-cursor0
        libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0
        libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 libdbus-1-3 libfontconfig1"
  # the report's test opens it in headless Chromium (selenium drives it)
  pkgs="$pkgs chromium chromium-driver"
  if ! command -v Xvfb >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
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
PIP=(.venv/bin/python -m pip)
"${PIP[@]}" install -q --upgrade pip

# which torch is there: "none", "cpu" or "cuda <version>"
torch_build() {
  .venv/bin/python -c "import torch; print('cuda ' + torch.version.cuda if torch.version.cuda else 'cpu')" \
    2>/dev/null || echo none
}

have=$(torch_build)
# torch first, pinned: a bare 'torch' requirement would pull whatever build the index has
if [ "$have" = none ] || { [ "$build" = gpu ] && [ "$have" = cpu ]; }; then
  if [ "$build" = cpu ]; then
    if "${PIP[@]}" install -q "torch==$TORCH_VERSION" --index-url "$CPU_INDEX" \
         --timeout 5 --retries 0; then
      source_msg="PyTorch's CPU index ($CPU_INDEX)"
    else
      echo "setup.sh: PyTorch's CPU index is not reachable; installing torch from the default index"
      "${PIP[@]}" install -q "torch==$TORCH_VERSION"
      source_msg="the default index (CPU index not reachable)"
    fi
  else
    reinstall=()
    [ "$have" = cpu ] && reinstall=(--force-reinstall)
    "${PIP[@]}" install -q ${reinstall[@]+"${reinstall[@]}"} "torch==$TORCH_VERSION"
    source_msg="the default index"
  fi
  echo "setup.sh: torch $TORCH_VERSION ($(torch_build) build) installed from $source_msg"
else
  echo "setup.sh: torch already installed ($have build), kept"
fi
[ "$build" = gpu ] && [ "$(torch_build)" = cpu ] && \
  echo "setup.sh: note: the installed torch is a CPU build; this platform's default index has no CUDA build" >&2

extras="offline,gui"
[ "$with_tests" = 1 ] && extras="$extras,dask,test"
[ "$build" = gpu ] && extras="$extras,gpu"
"${PIP[@]}" install -q -e ".[$extras]"
echo "setup.sh: ready (.venv, torch $(torch_build) build, extras $extras)"
