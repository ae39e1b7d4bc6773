#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA GPU (run from anywhere):
#   1. the tests marked `gpu` (tests/test_large_models.py: bfloat16 features, lesion restore
#      and streamed gradient x weight on the GPU);
#   2. benchmarks/models.py --gpu (every size, 0.5B .. 7B, bfloat16);
#   3. benchmarks/ridge.py at 100,000 voxels with the torch backend when the script has a
#      --backend option (else its own solver, `--solvers ours`, which it times on numpy).
# On a machine without a CUDA GPU it says so and exits 0 without running anything.
#   benchmarks/gpu_check.sh [--json-dir DIR]   (default DIR: gpu-check-<date>)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
out=gpu-check-$(date +%Y%m%d-%H%M%S)
if [ "${1:-}" = "--json-dir" ] && [ -n "${2:-}" ]; then out=$2; fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check.sh: no GPU: skipped (torch sees no CUDA device; nothing was run)"
  exit 0
fi
mkdir -p "$out"
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu_check.sh: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__} (CUDA {torch.version.cuda})')"
status=0

echo "== 1/3 tests marked gpu"
"$PY" -m pytest -m gpu -q -p no:xvfb -p no:pytestqt -o addopts="" tests/test_large_models.py \
  2>&1 | tee "$out/pytest-gpu.txt" || status=1

echo "== 2/3 benchmarks/models.py --gpu"
"$PY" benchmarks/models.py --gpu --json "$out/models.json" 2>&1 | tee "$out/models.txt" || status=1

echo "== 3/3 benchmarks/ridge.py, 100,000 voxels"
if "$PY" benchmarks/ridge.py --help 2>/dev/null | grep -q -- "--backend"; then
  ridge=(--backend torch --voxels 100000)
else
  echo "(benchmarks/ridge.py has no --backend option: timing its solver 'ours' as it is)"
  ridge=(--voxels 100000 --solvers ours)
fi
"$PY" benchmarks/ridge.py "${ridge[@]}" --json "$out/ridge.json" 2>&1 | tee "$out/ridge.txt" \
  || status=1

echo "gpu_check.sh: results in $out/ (exit $status)"
exit $status
