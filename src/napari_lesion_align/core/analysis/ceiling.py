"""Noise ceilings: how much of a voxel's response to the story can any model explain?

Many people hear the same story; what their BOLD shares is driven by the story, what it does
not share is noise (for this purpose). Under the usual model (every subject's cleaned BOLD is
the same stimulus-driven signal plus independent noise of the same variance), the correlation
between two subjects' time series is the voxel's reliability ``rho`` (the share of variance
that is signal), and the best correlation any model of the stimulus can reach with one
subject's BOLD is ``sqrt(rho)``: the noise ceiling. This module estimates both from the
subjects' cleaned BOLD on the runs they all heard (Nastase et al. 2019, "Measuring shared
responses across subjects using intersubject correlation"; Schrimpf et al. 2021 normalise
alignment by such a ceiling):

* ``rho``: the mean correlation over all pairs of subjects, from a running sum over subjects
  (one subject in memory at a time: ``sum_{s != s'} <z_s, z_s'> = |sum z|^2 - sum |z_s|^2``);
* ``isc``: the leave-one-subject-out inter-subject correlation of each subject (its BOLD
  against the mean of the others), the common published map; it underestimates
  ``sqrt(rho)`` with few subjects (the mean of ``k`` others is itself noisy: its expected value
  is ``sqrt(rho) * sqrt(k rho / (1 + (k - 1) rho))``);
* ``reliable``: where the leave-one-out ISC is above zero across subjects (one-sided t-test
  of their Fisher z, FDR): normalised alignment is reported there only, never divided by a
  ceiling that is noise.

Pure numpy / scipy; the stages feed it one subject at a time (:class:`IscAccumulator`) and
split the voxels when one subject's series of all voxels would not fit the memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base.errors import LesionAlignError


def standardize(y: np.ndarray) -> np.ndarray:
    """Each column to zero mean and unit variance over time (population sd, float64);
    constant columns become 0."""
    y = np.asarray(y, dtype=np.float64)
    z = y - y.mean(0)
    sd = np.sqrt((z * z).mean(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, z / np.where(sd > 0, sd, 1.0), 0.0)


@dataclass
class NoiseCeiling:
    """The ceiling of one language, per voxel (or region)."""

    #: mean correlation between two subjects' BOLD (the reliability; may be < 0 by chance)
    rho: np.ndarray
    #: the ceiling of a model's r: ``sqrt(rho)`` where ``rho > 0``, else 0
    ceiling: np.ndarray
    #: mean leave-one-subject-out ISC
    isc: np.ndarray
    #: one-sided t and FDR q of the subjects' leave-one-out ISC (Fisher z) above 0
    t: np.ndarray
    q: np.ndarray
    #: where the ceiling is reliably above zero (``q < alpha`` and ``rho > 0``)
    reliable: np.ndarray
    n_subjects: int
    n_times: int


class IscAccumulator:
    """Running sums of standardised BOLD over subjects, one subject at a time.

    Every subject's array is ``(times, voxels)`` over the same time points (the runs all of
    them heard, in the same order). Two passes: :meth:`add` every subject, then
    :meth:`leave_one_out` every subject again (its ISC against the sum of the others).
    Memory: one ``(times, voxels)`` float64 sum.
    """

    def __init__(self, n_times: int, n_voxels: int):
        self.n_times, self.n_voxels = int(n_times), int(n_voxels)
        self.sum = np.zeros((self.n_times, self.n_voxels))
        self.sumsq = np.zeros(self.n_voxels)
        self.n = 0
        self._ss = None  # |sum|^2 per voxel, once all subjects are added

    def _sum_sq(self) -> np.ndarray:
        if self._ss is None:
            self._ss = np.einsum("tv,tv->v", self.sum, self.sum)
        return self._ss

    def _check(self, y, who) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (self.n_times, self.n_voxels):
            raise LesionAlignError(
                f"{who}: BOLD of shape {y.shape}, the other subjects' is "
                f"{(self.n_times, self.n_voxels)}; the noise ceiling needs the same runs "
                "(same length) and voxels for every subject")
        return standardize(y)

    def add(self, y: np.ndarray, who: str = "a subject") -> None:
        z = self._check(y, who)
        self.sum += z
        self.sumsq += np.einsum("tv,tv->v", z, z)
        self.n += 1
        self._ss = None

    def pairwise(self) -> np.ndarray:
        """Mean correlation over all pairs of the added subjects, per voxel."""
        if self.n < 2:
            raise LesionAlignError("a noise ceiling needs at least 2 subjects")
        cross = self._sum_sq() - self.sumsq
        return cross / (self.n_times * self.n * (self.n - 1))

    def leave_one_out(self, y: np.ndarray, who: str = "a subject") -> np.ndarray:
        """Correlation of one (already added) subject with the mean of the others'
        standardised series."""
        z = self._check(y, who)
        zs = np.einsum("tv,tv->v", z, self.sum)
        zz = np.einsum("tv,tv->v", z, z)
        other_sq = self._sum_sq() - 2.0 * zs + zz  # |sum - z|^2 (both zero-mean: n_times * its variance)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (zs - zz) / np.sqrt(np.maximum(zz, 0.0) * np.maximum(other_sq, 0.0))
        return np.where(np.isfinite(r), r, 0.0)


def noise_ceiling(subjects, n_times: int, n_voxels: int, alpha: float = 0.05) -> NoiseCeiling:
    """The noise ceiling from ``subjects``: a sequence of callables, each returning one
    subject's cleaned BOLD ``(n_times, n_voxels)`` (called twice: the running sum, then the
    leave-one-out pass), so that one subject is in memory at a time."""
    subjects = list(subjects)
    if len(subjects) < 2:
        raise LesionAlignError(
            f"a noise ceiling needs at least 2 subjects who heard the same runs, got "
            f"{len(subjects)}")
    acc = IscAccumulator(n_times, n_voxels)
    for i, load in enumerate(subjects):
        acc.add(load(), who=f"subject {i + 1}")
    rho = acc.pairwise()
    loo = np.empty((len(subjects), n_voxels))
    for i, load in enumerate(subjects):
        loo[i] = acc.leave_one_out(load(), who=f"subject {i + 1}")
    return ceiling_from(rho, loo, n_times, alpha)


def ceiling_from(rho: np.ndarray, loo: np.ndarray, n_times: int,
                 alpha: float = 0.05) -> NoiseCeiling:
    """The ceiling from the pairwise reliability ``rho`` (voxels) and the subjects'
    leave-one-out ISC ``loo`` (subjects x voxels), e.g. gathered over voxel chunks: the
    t-test and the FDR run once over every voxel."""
    from scipy.stats import false_discovery_control, ttest_1samp

    rho = np.asarray(rho, dtype=np.float64)
    loo = np.asarray(loo, dtype=np.float64)
    n_voxels = rho.size
    zf = np.arctanh(np.clip(loo, -0.999999, 0.999999))
    t = np.zeros(n_voxels)
    p = np.ones(n_voxels)
    ok = zf.std(0) > 0
    if ok.any():
        res = ttest_1samp(zf[:, ok], 0.0, axis=0, alternative="greater")
        t[ok], p[ok] = res.statistic, res.pvalue
    q = np.ones(n_voxels)
    if ok.any():
        q[ok] = false_discovery_control(p[ok])
    ceiling = np.sqrt(np.maximum(rho, 0.0)).astype(np.float32)
    return NoiseCeiling(rho=rho.astype(np.float32), ceiling=ceiling,
                        isc=loo.mean(0).astype(np.float32), t=t.astype(np.float32),
                        q=q.astype(np.float32), reliable=reliable_of(ceiling, q, alpha),
                        n_subjects=int(loo.shape[0]), n_times=int(n_times))


def reliable_of(ceiling: np.ndarray, q: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """The one rule for where a ceiling is reliably above zero: its FDR ``q`` below
    ``alpha`` and a positive ceiling (NaN: not reliable)."""
    c = np.asarray(ceiling, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (np.asarray(q, dtype=np.float64) < alpha) & (c > 0)


def normalised(r: np.ndarray, ceiling: NoiseCeiling | np.ndarray,
               reliable: np.ndarray | None = None) -> np.ndarray:
    """Alignment as a share of the ceiling: ``r / ceiling`` where the ceiling is reliable,
    NaN elsewhere (a model's r divided by a ceiling that is noise means nothing).
    ``r``: one map ``(voxels,)`` or subjects' maps ``(subjects, voxels)``; ``ceiling``: a
    :class:`NoiseCeiling`, or the ceiling map with its ``reliable`` map."""
    r = np.asarray(r, dtype=np.float64)
    if isinstance(ceiling, NoiseCeiling):
        ceiling, reliable = ceiling.ceiling, ceiling.reliable
    c = np.asarray(ceiling, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(reliable, r / np.where(c > 0, c, np.nan), np.nan)
    return out.astype(np.float32)


def loo_expected(rho: np.ndarray, n_subjects: int) -> np.ndarray:
    """Expected leave-one-out ISC for a reliability ``rho`` and ``n_subjects`` (the mean of
    the ``n_subjects - 1`` others is itself noisy): how far the published LOO map sits below
    the ceiling ``sqrt(rho)`` with few subjects."""
    rho = np.clip(np.asarray(rho, dtype=np.float64), 0.0, 1.0)
    k = n_subjects - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        rel_mean = np.where(rho > 0, k * rho / (1.0 + (k - 1) * rho), 0.0)
    return np.sqrt(rho) * np.sqrt(rel_mean)
