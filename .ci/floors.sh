#!/usr/bin/env bash
# The declared minimum versions: a fresh virtual environment with every dependency of
# pyproject.toml at its floor (a pip constraint file made from the floors by
# .ci/floors_constraints.py), the package installed from the repository, and the core
# (non-GUI) tests run there. torch stays at setup.sh's version: its floor (2.2) has no
# CPU-only wheel on PyPI, and a CUDA build is a multi-GB download (see the constraint
# file's comment).
#   .ci/floors.sh                 (KEEP=1 keeps the temporary folder)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
TORCH_VERSION=$(sed -n 's/^TORCH_VERSION=//p' "$repo/setup.sh")
CPU_INDEX=https://download.pytorch.org/whl/cpu
# the core tests: no napari window, no Dask cluster, no long end-to-end runs
CORE_TESTS=(test_config.py test_stimuli.py test_languages.py test_bold.py test_encoding.py
            test_analysis.py test_lesions.py test_importance.py test_models.py
            test_e5_offline.py test_pipeline.py test_packaging.py)
work=$(mktemp -d "${TMPDIR:-/tmp}/nla-floors.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

"$PY" "$repo/.ci/floors_constraints.py" "$repo/pyproject.toml" "$TORCH_VERSION" \
  > "$work/floors.txt"
echo "floors: constraints"; sed 's/^/  /' "$work/floors.txt"
"$PY" -m venv "$work/env"
PIP=("$work/env/bin/python" -m pip)
"${PIP[@]}" install -q "torch==$TORCH_VERSION" --index-url "$CPU_INDEX" --timeout 5 \
  --retries 0 2>/dev/null || "${PIP[@]}" install -q "torch==$TORCH_VERSION"
# the package (not editable: as installed) and what the tests need, all at the floors
"${PIP[@]}" install -q --constraint "$work/floors.txt" "$repo" pytest "scikit-learn"
"$work/env/bin/python" "$repo/.ci/floors_constraints.py" --check "$work/floors.txt"
cd "$repo/tests"
# -o addopts: no pytest-xvfb here; -p no:napari: napari's own pytest plugin imports its
# Qt layer, and this environment has no Qt binding (no GUI test runs)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$work/env/bin/python" -m pytest -q -o addopts=-ra \
  -p no:cacheprovider -p no:napari -m "not slow and not gpu" "${CORE_TESTS[@]}"
