"""Cost of a permutation group step next to the parametric one.

Run from the repository root::

    python benchmarks/inference.py                      # the defaults below
    python benchmarks/inference.py --subjects 15 --side 24 --n-perm 5000 --methods max-t tfce

What it times, on synthetic subject maps (no model, no fit): ``S`` subjects' r maps over a
cubic mask of ``side^3`` voxels (a smooth planted effect in one corner plus noise), the
group step of one condition as the stages make it:

* ``parametric``: :func:`napari_lesion_align.core.analysis.statistics.paired_t` (t, p, FDR
  q over the voxels), as with ``[statistics] inference = "parametric"``;
* ``permutation <method>``: :func:`napari_lesion_align.core.analysis.inference.sign_flip_test`
  (nilearn's ``permuted_ols``, one job) with ``n_perm`` sign flips, as with
  ``inference = "permutation"``.

One group step is one map; a run makes one per condition and language (intact, each
control, each lesion, each lesion against its draws), so multiply by their number.
Prints seconds per step and the ratio to the parametric step; the voxels found (FDR q or
FWE p < 0.05) show what the time buys.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from napari_lesion_align.core.analysis import inference, statistics  # noqa: E402


def maps(n_subjects: int, side: int, seed: int = 0):
    """``(differences (subjects x voxels), mask image)``: a planted effect (d = 0.8) in
    the first eighth of the cube, noise elsewhere."""
    rng = np.random.default_rng(seed)
    mask = np.ones((side, side, side), dtype=np.uint8)
    effect = np.zeros((side, side, side))
    h = side // 2
    effect[:h, :h, :h] = 0.8
    d = rng.normal(size=(n_subjects, side ** 3)) + effect.ravel()[None, :]
    return d, nib.Nifti1Image(mask, np.diag([3.0, 3.0, 3.0, 1.0]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=15)
    ap.add_argument("--side", type=int, default=20, help="the mask is side^3 voxels")
    ap.add_argument("--n-perm", type=int, default=5000)
    ap.add_argument("--methods", nargs="+", default=["max-t", "tfce"],
                    choices=inference.PERMUTATION_METHODS)
    args = ap.parse_args(argv)
    d, mask = maps(args.subjects, args.side)
    # warm-up: scipy's and nilearn's imports are not the step's cost
    statistics.paired_t(d[:, :10], np.zeros_like(d[:, :10]))
    inference.sign_flip_test(d[:, :10], method="max-t", n_perm=10)
    print(f"{args.subjects} subjects, {d.shape[1]} voxels, {args.n_perm} sign flips, "
          f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    t0 = time.perf_counter()
    res = statistics.paired_t(d, np.zeros_like(d))
    base = time.perf_counter() - t0
    print(f"{'parametric t + FDR':<24} {base:9.3f} s   1.0x   "
          f"{int((res.q < 0.05).sum())} voxels q < 0.05")
    for method in args.methods:
        t0 = time.perf_counter()
        perm = inference.sign_flip_test(d, method=method, n_perm=args.n_perm, seed=0,
                                        mask_img=mask)
        s = time.perf_counter() - t0
        print(f"{'permutation ' + method:<24} {s:9.3f} s {s / base:6.0f}x   "
              f"{int((perm.p_fwe < 0.05).sum())} voxels p FWE < 0.05")
    return 0


if __name__ == "__main__":
    sys.exit(main())
