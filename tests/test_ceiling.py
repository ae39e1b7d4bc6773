"""Noise ceilings against a planted truth: subjects share a signal of known reliability."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesion_align.core.analysis.ceiling import (IscAccumulator, loo_expected, noise_ceiling,
                                              normalised, standardize)
from napari_lesion_align.core.base.errors import LesionAlignError


def _study(n_subjects=6, n_times=400, seed=0):
    """Voxels 0-39 pure noise; 40-199 a shared signal of amplitude 0.2-2 (noise sd 1)."""
    rng = np.random.default_rng(seed)
    amp = np.r_[np.zeros(40), np.linspace(0.2, 2.0, 160)]
    signal = rng.standard_normal(n_times)
    bold = [amp * signal[:, None] + rng.standard_normal((n_times, amp.size)) * 1.0
            for _ in range(n_subjects)]
    rho = amp ** 2 / (amp ** 2 + 1.0)
    return bold, rho, signal


def _loaders(bold):
    return [lambda y=y: y for y in bold]


def test_the_ceiling_tracks_the_planted_reliability_and_is_zero_in_noise():
    bold, rho, _ = _study()
    nc = noise_ceiling(_loaders(bold), *bold[0].shape)
    truth = np.sqrt(rho)
    sig = rho > 0
    assert np.corrcoef(nc.ceiling[sig], truth[sig])[0, 1] > 0.97
    assert np.abs(nc.ceiling[sig] - truth[sig]).mean() < 0.05
    assert np.abs(nc.rho[~sig]).mean() < 0.03
    # noise voxels are (nearly) never called reliable, clear signal voxels always are
    assert nc.reliable[~sig].mean() <= 0.1
    assert nc.reliable[rho > 0.2].all()
    # the leave-one-out ISC sits where the few-subjects formula puts it, below the ceiling
    expected = loo_expected(rho, len(bold))
    assert np.abs(nc.isc[sig] - expected[sig]).mean() < 0.05
    assert (nc.isc[rho > 0.2] < nc.ceiling[rho > 0.2]).mean() > 0.9


def test_leave_one_out_is_the_correlation_with_the_mean_of_the_others():
    """(of the others' standardised series: the cleaned BOLD the stages give is standardised)"""
    bold, _, _ = _study(n_subjects=4, n_times=120, seed=3)
    bold = [standardize(y * (i + 1.0) + i) for i, y in enumerate(bold)]
    acc = IscAccumulator(*bold[0].shape)
    for y in bold:
        acc.add(y)
    for i, y in enumerate(bold):
        others = np.mean([b for j, b in enumerate(bold) if j != i], axis=0)
        brute = [np.corrcoef(y[:, v], others[:, v])[0, 1] for v in (0, 50, 199)]
        np.testing.assert_allclose(acc.leave_one_out(y)[[0, 50, 199]], brute, atol=1e-10)
    pairs = [np.corrcoef(bold[a][:, 77], bold[b][:, 77])[0, 1]
             for a in range(4) for b in range(4) if a < b]
    np.testing.assert_allclose(acc.pairwise()[77], np.mean(pairs), atol=1e-10)


def test_a_perfect_model_scores_one_where_the_ceiling_is_reliable_and_nan_elsewhere():
    bold, rho, signal = _study()
    nc = noise_ceiling(_loaders(bold), *bold[0].shape)
    # the best possible model predicts the shared signal: its r with each subject
    r = np.array([[np.corrcoef(signal, y[:, v])[0, 1] for v in range(y.shape[1])]
                  for y in bold])
    norm = normalised(r.mean(0), nc)
    assert np.isnan(norm[~nc.reliable]).all()
    strong = nc.reliable & (rho > 0.3)
    assert abs(np.nanmedian(norm[strong]) - 1.0) < 0.05


def test_runs_that_differ_between_subjects_or_one_subject_are_refused_clearly():
    bold, _, _ = _study(n_subjects=3, n_times=50)
    short = bold[2][:40]
    with pytest.raises(LesionAlignError, match=r"subject 3: BOLD of shape \(40, 200\).*same runs"):
        noise_ceiling(_loaders(bold[:2] + [short]), 50, 200)
    with pytest.raises(LesionAlignError, match="at least 2 subjects"):
        noise_ceiling(_loaders(bold[:1]), 50, 200)
