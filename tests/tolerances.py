"""How far two runs of one analysis may differ when only their thread or process layout
differs (one process x 2 BLAS threads against 2 Dask workers x 1 thread, 1 BLAS thread against
2, ...). Stated once here; every test comparing such runs uses :func:`assert_maps_close`.

Only the layout differs, so the difference is float32 rounding: BLAS splits the fits' sums
into other partial sums, which round differently. Runs with the *same* layout (a resumed run,
a rerun in the same process, a Dask run whose workers have the process' thread count) are
compared bit for bit instead (``np.testing.assert_array_equal``), never with these.

The tolerances follow the rounding from r to the group statistics:

* **r, Δr** (absolute; |r| <= 1): a float32 sum of n terms summed in another order differs
  by about sqrt(n) ulp of its scale (rounding errors add like a random walk). The longest
  sums of the tests' fits run over the time points, at most :data:`SUM_LENGTH`; a fit chains
  a few of them (Gram matrix, solve, prediction, correlation): 3 x sqrt(n) ulp of 1.
* **t** (relative, and absolute near t = 0): t = sqrt(n) mean(d) / sd(d) over the subjects'
  d (r, or a difference of two r: 2 x the r tolerance each). Both the mean and the spread
  move by at most that much, so t moves relatively by 2 R_ATOL / sd(d), and by
  sqrt(n) 2 R_ATOL / sd(d) absolutely near t = 0. The tests' studies have an across-subject
  spread of r of at least :data:`SPREAD_FLOOR` (noise r over a few hundred volumes alone
  spreads by about 1/sqrt(T) = 0.05). Tiny lesion effects (Δr of 1e-4) are far below it: their
  t maps are not compared across layouts.
* **p, q** (relative): a one-sided t-test's p falls like t^-(n-1) in its tail, so its relative
  change is at most (n - 1) times t's; near t = 0 (p about 0.5) at most twice t's absolute
  change. Benjamini-Hochberg q multiplies p by a rank ratio and takes running minima: the
  same relative bound.

Maps that threshold these (``beyondrandom``, categories, LPI) can flip a voxel whose p sits at
the threshold: they have no tolerance here and are not compared across layouts.
"""

from __future__ import annotations

import re

import numpy as np

#: one ulp of 1.0 in float32
EPS32 = float(np.finfo(np.float32).eps)
#: the longest sum of the tests' fits: 3 runs x 150 volumes (the demo annotations' runs)
SUM_LENGTH = 450
#: r and Δr, absolute (about 7.6e-6)
R_ATOL = 3 * np.sqrt(SUM_LENGTH) * EPS32
#: the smallest across-subject spread of r (or Δr) at a compared voxel in the tests' studies
SPREAD_FLOOR = 0.01
#: t, relative (about 1.5e-3)
T_RTOL = 2 * R_ATOL / SPREAD_FLOOR

_R_STATS = {"r", "deltar"}
_T_STATS = {"t", "tvsrandom"}
_P_STATS = {"p", "q", "pvsrandom", "qvsrandom"}
#: the noise ceiling's maps: no fit, float64 sums over the cleaned BOLD (rounding far below
#: the r tolerance) and the FDR q of its test (a p-like map)
_CEILING_STATS = {"ceiling", "isc"}
#: the smallest noise ceiling where r / ceiling is written (reliably above 0) in the tests'
#: studies: r / ceiling moves by at most R_ATOL / this
CEILING_FLOOR = 0.05


def tolerance(stat: str, n_subjects: int) -> dict:
    """``{"rtol", "atol"}`` for ``np.testing.assert_allclose`` of one statistic's maps made
    with two thread / process layouts of a study of ``n_subjects`` subjects."""
    if stat in _R_STATS:
        return {"rtol": 0.0, "atol": R_ATOL}
    if stat in _T_STATS:
        return {"rtol": T_RTOL, "atol": np.sqrt(n_subjects) * T_RTOL}
    if stat in _P_STATS:
        return {"rtol": max(n_subjects - 1, 2) * T_RTOL, "atol": 0.0}
    if stat in _CEILING_STATS:
        return {"rtol": 0.0, "atol": R_ATOL}
    if stat == "qceiling":
        return {"rtol": max(n_subjects - 1, 2) * T_RTOL, "atol": 0.0}
    if stat == "normr":
        return {"rtol": 0.0, "atol": R_ATOL / CEILING_FLOOR}
    raise KeyError(f"no cross-layout tolerance for {stat!r} maps (thresholded or unstated): "
                   "compare them only between runs of the same layout")


def stat_of(name: str) -> str:
    """The statistic of a map file name (``..._stat-<stat>_statmap.nii.gz``)."""
    m = re.search(r"_stat-([A-Za-z0-9]+)_statmap", name)
    if m is None:
        raise ValueError(f"not a map file name: {name}")
    return m.group(1)


def assert_maps_close(a: dict, b: dict, n_subjects: int) -> None:
    """Two runs' map files (name -> values), made with different layouts: the same files,
    NaN at the same voxels, values within :func:`tolerance` of their statistic."""
    assert a.keys() == b.keys() and a, (sorted(a), sorted(b))
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
        np.testing.assert_allclose(x, y, equal_nan=True, err_msg=name,
                                   **tolerance(stat_of(name), n_subjects))
