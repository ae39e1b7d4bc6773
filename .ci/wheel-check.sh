#!/usr/bin/env bash
# What a napari hub user gets: build the sdist and the wheel, check them (twine), install
# the wheel with a plain `pip install` (no extras, no setup.sh, no checkout) into a fresh
# virtual environment in an empty folder outside the repository, and there run:
#   napari-lesion-align --version, the quick demo (headless: no Qt binding installed yet),
#   the plugin's reader on its output, npe2 validate, then (with a Qt binding added, as
#   napari's own environment has one) a napari smoke test under Xvfb that opens every
#   widget, the shipped sample and the demo output (.ci/hub_smoke.py).
# HOME and the package's cache point into the temporary folder and Hugging Face is offline:
# nothing of this machine's caches is reused and nothing is downloaded at run time.
#   .ci/wheel-check.sh            (KEEP=1 keeps the temporary folder, for a look)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
# torch's version has one owner: setup.sh
TORCH_VERSION=$(sed -n 's/^TORCH_VERSION=//p' "$repo/setup.sh")
CPU_INDEX=https://download.pytorch.org/whl/cpu
work=$(mktemp -d "${TMPDIR:-/tmp}/nla-wheel-check.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
say() { echo "wheel-check: $*"; }

# 1. build and check the sdist and the wheel (build tools in a venv of their own)
"$PY" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install -q build twine
"$work/tools/bin/python" -m build -q --outdir "$work/dist" "$repo" >/dev/null
"$work/tools/bin/python" -m twine check --strict "$work/dist"/*
wheel=$(ls "$work/dist"/*.whl)
"$work/tools/bin/python" "$repo/.ci/check_dist.py" "$work/dist"
say "built and checked $(cd "$work/dist" && ls | tr '\n' ' ')"

# 2. a fresh environment in an empty folder, as a user's
mkdir "$work/user" "$work/home"
cd "$work/user"
export HOME="$work/home" NAPARI_LESION_ALIGN_CACHE="$work/home/cache" HF_HUB_OFFLINE=1 \
       TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
"$PY" -m venv env
# torch first, pinned: a bare `torch` (the wheel's requirement) would pull a multi-GB CUDA
# build from PyPI. PyTorch's CPU index where it can be reached; on the CI machine pip takes
# torch from a local file (its find-links). A napari user's environment has its torch.
env/bin/python -m pip install -q "torch==$TORCH_VERSION" --index-url "$CPU_INDEX" \
  --timeout 5 --retries 0 2>/dev/null || env/bin/python -m pip install -q "torch==$TORCH_VERSION"
env/bin/python -m pip install -q "$wheel"
env/bin/python -m pip check
if env/bin/python -c "import qtpy" 2>/dev/null && env/bin/python -c "import qtpy.QtCore" 2>/dev/null; then
  say "note: a Qt binding came with the plain install"
fi

# 3. the command line, headless
version=$(env/bin/napari-lesion-align --version)
expected="napari-lesion-align $(env/bin/python -c 'import importlib.metadata as m; print(m.version("napari-lesion-align"))')"
[ "$version" = "$expected" ] || { say "--version says '$version', expected '$expected'"; exit 1; }
t0=$(date +%s)
env/bin/napari-lesion-align demo --quick --out hub-demo
say "demo --quick: $(( $(date +%s) - t0 )) s"
env/bin/python "$repo/.ci/hub_smoke.py" reader hub-demo
env/bin/npe2 validate napari-lesion-align

# 4. napari, with the Qt binding napari's environment has, under Xvfb
env/bin/python -m pip install -q "PyQt6"
xvfb-run -a -s "-screen 0 1366x768x24" env/bin/python "$repo/.ci/hub_smoke.py" napari hub-demo
say "ok"
