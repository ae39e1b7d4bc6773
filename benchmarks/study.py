"""What the full plan costs per subject, and the whole Le Petit Prince study projected.

Run from the repository root (no network needed; about 10 minutes on 2 cores)::

    python benchmarks/study.py                  # LPP-sized subject + Alice-sized subject
    python benchmarks/study.py --skip-lpp       # the small (Alice-sized) problem only
    python benchmarks/study.py --threads 1 --json study.json

The plan: the default analysis of three languages (``[lesions] enabled = true`` with every
other key at its default: the shared lesion, one specific lesion per language, 5 random
draws each; the default ``[controls]``), counted from the package's own plan
(:class:`~napari_lesion_align.core.lesions.plan.LesionPlan`, ``control_specs``). Under
``[encoding] condition_alphas = "search"`` every one of its fits searches its alphas; under
``"intact"`` the fits whose kind is in
:data:`~napari_lesion_align.core.run.fits.REUSES_INTACT_ALPHAS` refit with the intact
model's alphas.

What it times, side by side in one process (one warm-up fit first, not reported), with the
package's encoding function (:func:`~napari_lesion_align.core.encoding.cross_validated_r`)
and the default alphas (20) and delays (1-4):

* **LPP-sized subject**: 9 runs x 300 volumes (2,700 TRs, about one Le Petit Prince
  listener), the package's 4 mm MNI mask (every in-mask voxel), 384-dimensional features
  (the built-in model's width: 1,536 regressors). Random features and BOLD: the cost of a
  fit does not depend on their values. One fit with the inner search, one refit with
  given alphas.
* **Alice-sized subject**: one run of 362 TRs and 6 regions (the Alice example's shape),
  the same features; outer and inner contiguous blocks.
* **Decompositions on one or all threads** (``--sizes``): the solver's tridiagonalisation
  of an n x n matrix with one BLAS thread and with every usable core, quiet and next to a
  busy process (another BLAS product on every core, ``--busy``): the measurement behind
  ``solver.SMALL_MATRIX`` (matrices up to that size run on one thread).

Then per subject x language the plan's fit time under both settings, and the whole study
(112 subjects x 3 languages) on this machine: fits only (feature extraction and importance
are measured by ``benchmarks/lesions.py`` and ``benchmarks/models.py``), in one process
with the ``--threads`` given. No GPU is measured here: ``benchmarks/gpu_check.sh`` on a
GPU machine gives the ridge numbers to project with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

LPP = {"subjects": 112, "languages": 3, "runs": 9, "volumes": 300}
ALICE = {"volumes": 362, "regions": 6, "subjects": 13}
WIDTH = 384  # the built-in model's hidden size


def plan_counts(languages=("EN", "FR", "ZH")) -> dict:
    """Fits per subject x language of the default plan: {"search": n, "reuse": n}, from the
    package's lesion plan and controls (the rule of which fits reuse: REUSES_INTACT_ALPHAS)."""
    from napari_lesion_align.core.analysis.controls import control_specs
    from napari_lesion_align.core.lesions.plan import LesionPlan
    from napari_lesion_align.core.run.config import ControlsConfig, LesionConfig
    from napari_lesion_align.core.run.fits import REUSES_INTACT_ALPHAS

    specs = LesionPlan.from_config(LesionConfig(enabled=True), list(languages), 0).specs(12)
    kinds = [s.kind for s in specs] + [k for c in control_specs(ControlsConfig())
                                       for k in [c.kind] * max(1, c.n_shifts)]
    reuse = sum(k in REUSES_INTACT_ALPHAS for k in kinds)
    return {"search": len(kinds) - reuse, "reuse": reuse, "total": len(kinds)}


def n_mask_voxels() -> int:
    import nibabel as nib

    mask = REPO / "src" / "napari_lesion_align" / "data" / "demo" / "mask_mni152_4mm.nii.gz"
    return int((np.asarray(nib.load(mask).dataobj) > 0).sum())


def problem(n_runs: int, n_vols: int, n_vox: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = [rng.standard_normal((4 + n_vols, WIDTH), dtype=np.float32) for _ in range(n_runs)]
    Y = rng.standard_normal((n_runs * n_vols, n_vox), dtype=np.float32)
    return X, Y, [n_vols] * n_runs


def time_fits(X, Y, lengths, repeats: int = 1) -> dict:
    """Seconds of one fit with the search, and one refit with the alphas it chose."""
    from napari_lesion_align.core.encoding import cross_validated_r

    kw = dict(run_lengths=lengths, delays=(1, 2, 3, 4), pad_before=4)
    out = {"search": [], "reuse": []}
    for _ in range(repeats):
        t = time.perf_counter()
        res = cross_validated_r(X, Y, **kw)
        out["search"].append(time.perf_counter() - t)
        t = time.perf_counter()
        cross_validated_r(X, Y, fold_alphas=res.best_alpha, **kw)
        out["reuse"].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in out.items()}


def _busy_loop(stop):  # another process' BLAS work on every core
    a = np.random.default_rng(0).standard_normal((800, 800))
    while not stop.is_set():
        a @ a


def decomposition_threads(sizes, cores: int, busy: bool) -> dict:
    """Seconds of ``solver._tridiagonalize_blocked`` (no thread rule) per n: one thread vs
    ``cores`` threads; with ``busy``, next to another process' BLAS products."""
    import multiprocessing as mp

    from threadpoolctl import threadpool_limits

    from napari_lesion_align.core.encoding import solver

    stop, proc = None, None
    if busy:
        stop = mp.Event()
        proc = mp.Process(target=_busy_loop, args=(stop,), daemon=True)
        proc.start()
        time.sleep(1.0)
    out = {}
    try:
        rng = np.random.default_rng(0)
        for n in sizes:
            M = rng.standard_normal((n, n))
            S = M @ M.T
            row = {}
            for t in (1, cores):
                with threadpool_limits(t):
                    solver._tridiagonalize_blocked(S.copy(), 128, 512)  # warm-up
                    times = []
                    for _ in range(3):
                        t0 = time.perf_counter()
                        solver._tridiagonalize_blocked(S.copy(), 128, 512)
                        times.append(time.perf_counter() - t0)
                row[t] = float(np.median(times))
            out[n] = row
    finally:
        if proc is not None:
            stop.set()
            proc.join(5)
    return out


def per_subject(t: dict, counts: dict) -> dict:
    return {"search": counts["total"] * t["search"],
            "intact": counts["search"] * t["search"] + counts["reuse"] * t["reuse"]}


def hours(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0,
                    help="BLAS threads (0: the usable cores, as a run in one process)")
    ap.add_argument("--skip-lpp", action="store_true", help="the small problem only")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="*", default=[128, 290, 512, 1024, 1536],
                    help="matrix sides of the thread comparison (none: skip it)")
    ap.add_argument("--busy", action="store_true",
                    help="also compare the threads next to a busy process")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from napari_lesion_align.core.run.executor import blas_threads, usable_cores

    threads = args.threads or usable_cores()
    counts = plan_counts()
    print(f"the default plan, per subject x language: {counts['total']} fits "
          f"({counts['reuse']} may reuse the intact model's alphas, {counts['search']} "
          f"always search); {threads} BLAS thread(s); load {os.getloadavg()[0]:.2f}",
          flush=True)
    rows, dec = {}, {}
    if args.sizes and threads > 1:
        for label, busy in (("quiet", False),) + ((("busy", True),) if args.busy else ()):
            dec[label] = decomposition_threads(args.sizes, threads, busy)
            print(f"\ntridiagonalisation, {label} ({threads} threads / 1 thread: "
                  "above 1 = one thread is faster)")
            for n, r in dec[label].items():
                print(f"  n = {n:5d}: 1 thread {r[1] * 1e3:8.1f} ms, {threads} threads "
                      f"{r[threads] * 1e3:8.1f} ms, ratio {r[threads] / r[1]:.2f}", flush=True)
    with blas_threads(threads):
        X, Y, L = problem(1, ALICE["volumes"], ALICE["regions"])
        time_fits(X, Y, L)  # warm-up
        rows["alice"] = time_fits(X, Y, L, max(3, args.repeats))
        if not args.skip_lpp:
            V = n_mask_voxels()
            X, Y, L = problem(LPP["runs"], LPP["volumes"], V, seed=1)
            rows["lpp"] = time_fits(X, Y, L, args.repeats)
            rows["lpp"]["voxels"] = V
    print("\nper fit (s)        search   reused alphas   ratio")
    for name, t in rows.items():
        print(f"  {name:16s} {t['search']:7.2f}   {t['reuse']:13.2f}   "
              f"{t['reuse'] / t['search']:.2f}")
    a = per_subject(rows["alice"], counts)
    print(f"\nAlice-sized study ({ALICE['subjects']} subjects fitted one at a time, 1 "
          "language, the plan's fits; a run stacks subjects with the same runs into one "
          "unit and pays less): "
          f"search {hours(a['search'] * ALICE['subjects'])}, intact alphas "
          f"{hours(a['intact'] * ALICE['subjects'])}")
    if "lpp" in rows:
        p = per_subject(rows["lpp"], counts)
        n = LPP["subjects"] * LPP["languages"]
        print(f"LPP-sized subject x language, the plan's fits: search {hours(p['search'])}, "
              f"intact alphas {hours(p['intact'])} ({p['intact'] / p['search']:.2f}x)")
        print(f"the whole LPP study ({LPP['subjects']} x {LPP['languages']} = {n} subject x "
              f"language) on this machine, fits only: search {hours(n * p['search'])}, "
              f"intact alphas {hours(n * p['intact'])}")
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "threads": threads,
                                         "per_fit_s": rows, "decompositions": dec},
                                        indent=1))


if __name__ == "__main__":
    main()
