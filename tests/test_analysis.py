"""Statistics and categories of lesion effects, on planted ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ttest_rel

from napari_lesion_align.core.analysis import statistics as an
from napari_lesion_align.core.base.errors import LesionAlignError

LANGS = ["EN", "FR", "ZH"]


def test_delta_and_relative_drop():
    d, rel = an.delta(np.array([0.4, 0.2, 0.0, -0.1]), np.array([0.1, 0.2, 0.1, -0.1]))
    np.testing.assert_allclose(d, [0.3, 0.0, -0.1, 0.0], atol=1e-7)
    np.testing.assert_allclose(rel[:2], [0.75, 0.0], atol=1e-7)
    assert np.isnan(rel[2]) and np.isnan(rel[3])


def test_paired_t_matches_scipy_and_handles_bad_voxels():
    rng = np.random.default_rng(0)
    A = rng.normal(0.3, 0.05, (8, 50))
    B = A - rng.normal(0.0, 0.05, (8, 50))
    B[:, :10] -= 0.2  # a real drop in 10 voxels
    A[3, 20] = np.nan  # NaN voxel
    B[:, 21] = A[:, 21] - 0.1  # constant difference: no variance
    res = an.paired_t(A, B)
    ref = ttest_rel(A[:, 30:], B[:, 30:], axis=0, alternative="greater")
    np.testing.assert_allclose(res.t[30:], ref.statistic, rtol=1e-5)
    np.testing.assert_allclose(res.p[30:], ref.pvalue, rtol=1e-5)
    assert res.p[20] == 1 and res.t[20] == 0 and res.p[21] == 1
    sig = an.significant(res, 0.05)
    assert sig[:10].all() and sig[10:].sum() <= 2
    assert np.all(res.q >= res.p - 1e-7)
    with pytest.raises(LesionAlignError, match="at least 2 subjects"):
        an.paired_t(A[:1], B[:1])


def _planted_tests(n_sub=10, V=400, seed=0):
    """r maps with known effects: voxels 0-99 drop under the shared lesion in every
    language, 100-149 drop for EN under the EN lesion only, 150-199 for FR, 200-249 ZH."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(V, dtype=int)
    truth[:100] = 1
    for i, L in enumerate(LANGS):
        truth[100 + 50 * i: 150 + 50 * i] = 2 + i
    intact = {L: rng.normal(0.3, 0.03, (n_sub, V)) for L in LANGS}

    def lesioned(L, drop_mask):
        return intact[L] - rng.normal(0, 0.03, (n_sub, V)) - 0.15 * drop_mask[None, :]

    shared = {L: an.paired_t(intact[L], lesioned(L, truth == 1)) for L in LANGS}
    specific = {}
    for i, L in enumerate(LANGS):
        specific[L] = {L2: an.paired_t(intact[L2], lesioned(L2, (truth == 2 + i) & (L2 == L)))
                       for L2 in LANGS}
    return truth, shared, specific


def test_categories_recover_planted_regions():
    truth, shared, specific = _planted_tests()
    labels, legend = an.categories(shared, specific, LANGS)
    assert legend[1]["name"] == "shared" and legend[2]["name"] == "specific:EN"
    assert legend[3]["colour"] == an.language_colour("FR", LANGS)
    for lab in (1, 2, 3, 4):
        assert an.dice(labels == lab, truth == lab) > 0.9, lab
    assert (labels[truth == 0] != 0).mean() < 0.05


def test_random_control_gives_near_empty_categories():
    rng = np.random.default_rng(5)
    intact = {L: rng.normal(0.3, 0.03, (10, 300)) for L in LANGS}
    null = {L: an.paired_t(intact[L], intact[L] - rng.normal(0, 0.03, (10, 300))) for L in LANGS}
    spec = {L: {L2: an.paired_t(intact[L2], intact[L2] - rng.normal(0, 0.03, (10, 300)))
                for L2 in LANGS} for L in LANGS}
    labels, _ = an.categories(null, spec, LANGS)
    assert (labels != 0).mean() < 0.02


def test_paired_t_reports_the_group_relative_drop():
    A = np.array([[0.4, 0.2, -0.1], [0.6, 0.2, -0.1]])
    B = np.array([[0.2, 0.1, -0.2], [0.4, 0.2, -0.1]])
    rel = an.paired_t(A, B).rel_drop
    np.testing.assert_allclose(rel[:2], [0.4, 0.25], atol=1e-6)  # mean drop / mean intact
    assert np.isnan(rel[2])  # no positive intact alignment: no relative drop


def test_min_relative_drop_keeps_large_drops_and_drops_tiny_consistent_ones():
    """A control that lowers r by a tiny but perfectly consistent amount is significant by
    the t-test alone; with a minimum relative drop only the planted large drops count."""
    rng = np.random.default_rng(3)
    n, V = 6, 300
    intact = {L: rng.normal(0.4, 0.05, (n, V)) for L in LANGS}
    big = np.zeros(V, bool)
    big[:50] = True  # 50 % drop for EN in voxels 0-49
    tiny = np.zeros(V, bool)
    tiny[100:200] = True  # 3 % drop, nearly no variance across subjects

    def lesioned(L):
        out = intact[L] - rng.normal(0, 0.002, (n, V))
        if L == "EN":
            out = out - 0.2 * big - 0.012 * tiny
        return out

    spec = {"EN": {L: an.paired_t(intact[L], lesioned(L)) for L in LANGS}}
    plain, _ = an.categories({}, spec, LANGS)
    assert (plain[tiny] == 2).mean() > 0.9  # the tiny drop is "significant"
    labels, _ = an.categories({}, spec, LANGS, min_relative_drop=0.1)
    assert (labels[big] == 2).all() and not (labels[~big] != 0).any()
    with pytest.raises(LesionAlignError, match="relative drops"):
        t = spec["EN"]["EN"]
        an.significant(an.PairedTest(t.t, t.p, t.q, n), 0.05, "fdr", 0.1)


def test_lpi_sign_and_threshold():
    truth, _, specific = _planted_tests()
    v = an.lpi(specific["FR"], "FR")
    fr = truth == 3
    assert np.nanmean(v[fr]) > 0.5
    assert np.isnan(v[truth == 0]).mean() > 0.9
    assert an.dice(np.isfinite(v), fr) > 0.85


def test_dice():
    assert an.dice(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0])) == pytest.approx(2 / 3)
    assert an.dice(np.zeros(3), np.zeros(3)) == 1.0


def test_tests_restricted_to_aligned_voxels_gain_power():
    rng = np.random.default_rng(2)
    n, V = 5, 3000
    intact = rng.normal(0.0, 0.05, (n, V))
    intact[:, :100] += 0.4  # the model aligns in 100 voxels only
    lesioned = intact - rng.normal(0, 0.03, (n, V))
    lesioned[:, :50] -= 0.1  # and the lesion lowers half of them
    aligned = an.responsive(an.alignment_test(intact))
    assert aligned[:100].all() and aligned[100:].mean() < 0.01
    everywhere = an.paired_t(intact, lesioned)
    restricted = an.paired_t(intact, lesioned, within=aligned)
    np.testing.assert_allclose(restricted.t, everywhere.t)
    assert an.significant(restricted)[:50].sum() > an.significant(everywhere)[:50].sum()
    assert not an.significant(restricted)[100:].any()  # never outside the aligned voxels


def test_colour_of_an_unlisted_language_is_the_same_in_every_process():
    import subprocess
    import sys

    code = ("from napari_lesion_align.core.analysis.statistics import language_colour; "
            "print(language_colour('DE'))")
    got = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONHASHSEED": seed},
                          check=True).stdout.strip() for seed in ("1", "2", "3")}
    assert got == {an.language_colour("DE")} and got <= set(an.LANGUAGE_COLOURS)
