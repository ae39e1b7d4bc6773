"""A single run: the outer folds are contiguous blocks of one run cleaned as a whole.

Ground truth: on pure (white, Gaussian) noise the held-out r of every voxel has mean 0 when
the test block's BOLD is independent of the training BOLD. Whole-run cleaning (linear trend,
cosine high-pass, confounds fitted on every volume, :func:`clean_run`) couples the blocks
through the fitted coefficients; ``cross_validated_r(..., nuisance=cleaning_regressors(...))``
projects each fold's training rows off those regressors (the training blocks cleaned by
themselves), which makes them independent of the test block's BOLD.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_lesion_align.core.encoding import cross_validation as enc
from napari_lesion_align.core.data.bold import CleaningOptions, clean_run, cleaning_regressors
from napari_lesion_align.core.encoding import contiguous_blocks, cross_validated_r
from napari_lesion_align.core.features.extraction import fir_delays

TR = 2.0
DELAYS = (1, 2, 3, 4)
N_BLOCKS = 5


@pytest.fixture(autouse=True)
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def planted_single_run(seed, T=450, d=16, n_noise=3000, n_signal=30):
    """One run: temporally smooth features (AR(1), rho 0.9, as word-embedding features on
    the TR grid), ``n_noise`` voxels of white Gaussian noise, then ``n_signal`` voxels with
    a planted FIR response plus the same noise."""
    rng = np.random.default_rng(seed)
    pad = max(DELAYS)
    e = rng.standard_normal((pad + T, d))
    X = np.empty_like(e)
    X[0] = e[0]
    for t in range(1, len(e)):
        X[t] = 0.9 * X[t - 1] + np.sqrt(1 - 0.9**2) * e[t]
    X = X.astype(np.float32)
    W = rng.standard_normal((d * len(DELAYS), n_signal)) / np.sqrt(d * len(DELAYS))
    Y = rng.standard_normal((T, n_noise + n_signal))
    Y[:, n_noise:] += 0.5 * fir_delays(X, DELAYS, pad) @ W
    return X, Y, n_noise


def test_single_run_noise_r_centres_on_zero():
    """Pure-noise voxels of one run (default cleaning): mean r within 4 SE of 0; the
    planted signal is still found.

    Seeds 0 and 1 pooled (6000 noise voxels; SE of the mean r over voxels 0.00066):
    before (whole-run cleaning, folds on it as it is): mean r = -0.0073, 11 SE off 0;
    now (training rows projected off the cleaning regressors): -0.0003; tolerance
    4 SE = 0.0026. Three runs of the same length in all, each cleaned whole: +0.0003.
    Planted signal voxels: mean r 0.162 now (95 % above 0.05), 0.152 before.
    """
    noise_new, noise_old, signal = [], [], []
    for seed in (0, 1):
        X, Y, nn = planted_single_run(seed)
        Yc = clean_run(Y, TR)
        D = cleaning_regressors(len(Y), TR)
        kw = dict(pad_before=max(DELAYS), n_blocks=N_BLOCKS, backend="numpy")
        r_new = cross_validated_r([X], [Yc], DELAYS, nuisance=D, **kw).r
        r_old = cross_validated_r([X], [Yc], DELAYS, **kw).r
        noise_new.append(r_new[:nn])
        noise_old.append(r_old[:nn])
        signal.append(r_new[nn:])
    noise_new, noise_old = np.concatenate(noise_new), np.concatenate(noise_old)
    tol = 4 * noise_new.std() / np.sqrt(noise_new.size)
    assert 0.002 < tol < 0.003
    assert abs(noise_new.mean()) < tol, (noise_new.mean(), tol)
    assert noise_old.mean() < -2 * tol  # negative control: whole-run cleaning couples folds
    signal = np.concatenate(signal)
    assert signal.mean() > 0.14 and np.mean(signal > 0.05) > 0.85


@pytest.mark.parametrize("censor", [False, True])
def test_cleaning_regressors_span_what_clean_run_removes(censor):
    rng = np.random.default_rng(2)
    T = 200
    Y = rng.standard_normal((T, 6)).cumsum(0) + 40
    conf = rng.standard_normal((T, 3)).cumsum(0)
    keep = np.ones(T, dtype=bool)
    if censor:
        keep[[0, 57, 120]] = False
    D = cleaning_regressors(T, TR, CleaningOptions(), conf, keep=keep)
    assert D.shape == (keep.sum(), 2 + 6 + 3)  # constant, trend, 6 cosines, confounds
    Yc = clean_run(Y, TR, CleaningOptions(), conf, keep=keep).astype(np.float64)
    Q, _ = np.linalg.qr(D / np.linalg.norm(D, axis=0))
    assert np.abs(Q.T @ Yc).max() < 1e-4 * np.sqrt(T)  # cleaned run orthogonal to them
    # and they are all it removes: projecting the raw run off them gives the cleaned run
    Yk = Y[keep] - Q @ (Q.T @ Y[keep])
    np.testing.assert_allclose(Yk / Yk.std(0, ddof=1), Yc, atol=2e-4)


def test_training_rows_are_the_training_blocks_cleaned_by_themselves(monkeypatch):
    """What ridge_cv reads: the test block as cleaned with the whole run, the training rows
    as if only they had been cleaned (projected off the regressors' training rows), per
    column range with its own regressors."""
    rng = np.random.default_rng(1)
    T, pad = 120, 2
    X = rng.standard_normal((pad + T, 3)).astype(np.float32)
    E = rng.standard_normal((T, 10))
    conf = rng.standard_normal((T, 2)).cumsum(0)
    opts = CleaningOptions(standardize=False)
    D1 = cleaning_regressors(T, TR, opts)
    D2 = cleaning_regressors(T, TR, opts, conf)
    Yc = np.concatenate([clean_run(E[:, :6], TR, opts), clean_run(E[:, 6:], TR, opts, conf)],
                        axis=1)
    seen = []
    real = enc.ridge_cv

    def spy(Xd, Y, train, test, *a, **k):
        seen.append((np.array(Y[np.arange(T), 0:10]), train, test))
        return real(Xd, Y, train, test, *a, **k)

    monkeypatch.setattr(enc, "ridge_cv", spy)
    cross_validated_r([X], [Yc], (1, 2), pad_before=pad, n_blocks=4, backend="numpy",
                      nuisance=[(0, 6, D1), (6, 10, D2)])
    assert len(seen) == 4
    for Yk, train, test in seen:
        np.testing.assert_allclose(Yk[test], Yc[test], atol=1e-6)
        for cols, D in ((slice(0, 6), D1), (slice(6, 10), D2)):
            beta, *_ = np.linalg.lstsq(D[train], E[train, cols], rcond=None)
            np.testing.assert_allclose(Yk[train, cols], E[train, cols] - D[train] @ beta,
                                       atol=1e-5)
    assert len(contiguous_blocks(np.arange(T), 4, gap=2)) == 4


def test_nuisance_is_ignored_with_several_runs():
    rng = np.random.default_rng(0)
    X_runs = [rng.standard_normal((62, 4)).astype(np.float32) for _ in range(2)]
    Y_runs = [rng.standard_normal((60, 5)).astype(np.float32) for _ in range(2)]
    kw = dict(pad_before=2, backend="numpy")
    a = cross_validated_r(X_runs, Y_runs, (1, 2), **kw)
    b = cross_validated_r(X_runs, Y_runs, (1, 2), nuisance=np.ones((120, 1)), **kw)
    np.testing.assert_array_equal(a.fold_r, b.fold_r)


def test_single_run_pipeline_passes_the_cleaning_regressors(tmp_path, monkeypatch):
    """The fit stage hands a single run's cleaning regressors (kept volumes) to the fit."""
    from napari_lesion_align.core.run.config import load_config
    from napari_lesion_align.core.run.pipeline import run_analysis
    from napari_lesion_align.core.data import demo
    from tiny_models import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny-xlmr", "xlm-roberta", max_positions=130)
    root = tmp_path / "rois"
    root.mkdir()
    shutil.copy(demo.DEMO_DIR / "EN_run-1.TextGrid", root / "words.TextGrid")
    rng = np.random.default_rng(5)
    Y = rng.normal(0, 1, (150, 2)) + 50
    Y[60] = np.nan  # one censored volume
    np.savetxt(root / "s1.txt", Y)
    (root / "c.toml").write_text(f"""
[data]
kind = "regions"
tr = 2.0
roi_names = ["A", "B"]
[languages.EN]
annotations = ["words.TextGrid"]
bold = {{ s1 = ["s1.txt"] }}
[model]
name = "{model}"
[encoding]
n_blocks = 4
alphas = [1.0, 100.0]
""")
    calls = []
    real = enc.cross_validated_r

    def spy(*a, nuisance=None, **k):
        calls.append(nuisance)
        return real(*a, nuisance=nuisance, **k)

    monkeypatch.setattr(enc, "cross_validated_r", spy)
    res = run_analysis(load_config(root / "c.toml"), tmp_path / "out")
    # the intact model, then the controls: 2 shifts, shuffled words, word rate, above word rate
    assert len(calls) == 6 and all(len(c) == 1 for c in calls)
    assert all(np.array_equal(c[0][2], calls[0][0][2]) for c in calls[:5])
    c0, c1, D = calls[0][0]
    keep = np.ones(150, dtype=bool)
    keep[60] = False
    assert (c0, c1) == (0, 2)
    np.testing.assert_array_equal(D, cleaning_regressors(150, 2.0, keep=keep))
    # aboveWordRate: the word rate joins the cleaning regressors, orthogonal to them
    D_above = calls[-1][0][2]
    k = D.shape[1]
    assert D_above.shape[0] == D.shape[0] and D_above.shape[1] > k
    np.testing.assert_array_equal(D_above[:, :k], D)
    np.testing.assert_allclose(D.T @ D_above[:, k:], 0.0, atol=1e-6)
    assert "4 contiguous blocks" in res.provenance["fits"]["s1/EN"]["cv"]
