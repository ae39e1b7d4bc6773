"""Tests of the cross-validated ridge solver (core/encoding/).

The solver is checked against a plain scikit-learn reference (one ``Ridge`` per alpha and
inner fold), against itself across backends and batch sizes, and on planted data through
``cross_validated_r``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from napari_lesion_align.core.encoding import backends, solver
from napari_lesion_align.core.encoding import cross_validation as enc
from napari_lesion_align.core.encoding import (DEFAULT_ALPHAS, EncodingResult, Fold, RidgeResult,
                                               contiguous_blocks, cross_validated_r, get_backend,
                                               leave_one_group_out, pearson_r, ridge_cv)
from napari_lesion_align.core.base.errors import Cancelled, LesionAlignError
from napari_lesion_align.core.features.extraction import fir_delays

ALPHAS = np.logspace(-1, 4, 9)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Small problems: one BLAS thread is faster and immune to a busy machine's contention."""
    from threadpoolctl import threadpool_limits

    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    n = torch.get_num_threads() if torch is not None else 0
    if torch is not None:
        torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(n)


# --------------------------------------------------------------------------- helpers
def make_data(n, p, V, n_signal, seed=0, y_offset=0.0):
    """Random design; the first ``n_signal`` voxels carry ``X W`` of varying strength."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) + 0.3 * rng.standard_normal(p)  # non-zero column means
    Y = rng.standard_normal((n, V)) + y_offset * rng.standard_normal(V)
    if n_signal:
        W = rng.standard_normal((p, n_signal)) / np.sqrt(p)
        # a spread of SNRs (and of sparsity) so that the best alpha varies across voxels
        W *= np.logspace(-1.5, 0.7, n_signal)
        W[rng.random(W.shape) < 0.5] *= 0.05
        Y[:, :n_signal] += X @ W
    return X, Y


def _pearson_cols(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0))


def sklearn_reference(X, Y, train, test, folds, alphas, score, fit_intercept, all_r=False):
    """(test_r, best_index, cv_scores (n_alpha, V)) from scikit-learn Ridge, float64.

    ``all_r=True``: a fourth item, the test r of every alpha (n_alpha, V).
    """
    V = Y.shape[1]
    scores = np.zeros((len(alphas), V))
    for f in folds:
        for i, a in enumerate(alphas):
            m = Ridge(alpha=a, fit_intercept=fit_intercept).fit(X[f.train], Y[f.train])
            pred = m.predict(X[f.test])
            if score == "r2":
                scores[i] += r2_score(Y[f.test], pred, multioutput="raw_values")
            else:
                scores[i] += _pearson_cols(pred, Y[f.test])
    scores /= len(folds)
    best = np.argmax(scores, axis=0)
    pred = np.empty((len(test), V))
    for i in np.unique(best):
        cols = np.flatnonzero(best == i)
        m = Ridge(alpha=alphas[i], fit_intercept=fit_intercept).fit(X[train], Y[train][:, cols])
        pred[:, cols] = m.predict(X[test]).reshape(len(test), len(cols))
    out = (_pearson_cols(pred, Y[test]), best, scores)
    if all_r:
        r_all = np.array([
            _pearson_cols(Ridge(alpha=a, fit_intercept=fit_intercept).fit(X[train], Y[train])
                          .predict(X[test]), Y[test])
            for a in alphas])
        out += (r_all,)
    return out


def split(n, n_test, n_inner):
    train, test = np.arange(n - n_test), np.arange(n - n_test, n)
    return train, test, contiguous_blocks(train, n_inner)


# (n, p): primal everywhere; kernel everywhere; kernel in inner folds and primal at refit
SHAPES = [(120, 15), (120, 160), (120, 90)]


# --------------------------------------------------------------------------- vs sklearn
@pytest.mark.parametrize("n,p", SHAPES)
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("score", ["r2", "r"])
def test_matches_sklearn_float64(n, p, fit_intercept, score):
    X, Y = make_data(n, p, V=40, n_signal=25, seed=n + p, y_offset=2.0)
    train, test, folds = split(n, 20, 4)
    assert min(len(f.train) for f in folds) == 75
    ref_r, ref_best, ref_scores = sklearn_reference(X, Y, train, test, folds, ALPHAS, score,
                                                    fit_intercept)
    assert len(np.unique(ref_best)) >= 3, "test data should make the alphas vary"
    res = ridge_cv(X, Y, train, test, folds, ALPHAS, score=score, fit_intercept=fit_intercept,
                   dtype=np.float64, backend="numpy")
    assert isinstance(res, RidgeResult)
    # no near-ties in the reference, so the chosen alphas must be identical
    srt = np.sort(ref_scores, axis=0)
    assert np.all(srt[-1] - srt[-2] > 1e-9)
    np.testing.assert_array_equal(res.best_alpha, ALPHAS[ref_best])
    np.testing.assert_allclose(res.cv_score, ref_scores[ref_best, np.arange(Y.shape[1])],
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.test_r, ref_r, rtol=0, atol=1e-8)


@pytest.mark.parametrize("p", [1, 2])
def test_matches_sklearn_few_features(p):
    """1 x 1 and 2 x 2 covariances (the smallest decompositions)."""
    X, Y = make_data(60, p, V=12, n_signal=8, seed=p)
    train, test, folds = split(60, 12, 3)
    ref_r, ref_best, ref_scores = sklearn_reference(X, Y, train, test, folds, ALPHAS, "r2",
                                                    True)
    res = ridge_cv(X, Y, train, test, folds, ALPHAS, dtype=np.float64, backend="numpy")
    ok = np.diff(np.sort(ref_scores, axis=0)[-2:], axis=0)[0] > 1e-9
    assert ok.sum() >= 8
    np.testing.assert_array_equal(res.best_alpha[ok], ALPHAS[ref_best][ok])
    np.testing.assert_allclose(res.test_r[ok], ref_r[ok], rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.cv_score, ref_scores.max(0), rtol=0, atol=1e-9)


def _check_float32(res, ref_best, ref_scores, ref_r_all, alphas):
    V = ref_scores.shape[1]
    idx = np.searchsorted(alphas, res.best_alpha)
    np.testing.assert_array_equal(alphas[idx], res.best_alpha)
    ref_best_score = ref_scores[ref_best, np.arange(V)]
    ours_in_ref = ref_scores[idx, np.arange(V)]
    # a different alpha than the reference's is allowed only for a near-tie of CV scores
    flipped = idx != ref_best
    assert np.all(ref_best_score[flipped] - ours_in_ref[flipped] <= 1e-7)
    assert flipped.mean() <= 0.05
    # the reported CV score is the reference score of the chosen alpha
    np.testing.assert_allclose(res.cv_score, ours_in_ref, rtol=0, atol=1e-5)
    # test r against the reference refit with the same alpha (all voxels)
    dr = np.abs(res.test_r - ref_r_all[idx, np.arange(V)])
    assert np.percentile(dr, 99.9) <= 1e-4


@pytest.mark.parametrize("n,p", SHAPES)
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("score", ["r2", "r"])
def test_matches_sklearn_float32(n, p, fit_intercept, score):
    X, Y = make_data(n, p, V=40, n_signal=25, seed=n + p + 1, y_offset=2.0)
    X, Y = X.astype(np.float32), Y.astype(np.float32)  # the reference gets the same values
    train, test, folds = split(n, 20, 4)
    _, ref_best, ref_scores, ref_r_all = sklearn_reference(
        X.astype(np.float64), Y.astype(np.float64), train, test, folds, ALPHAS, score,
        fit_intercept, all_r=True)
    res = ridge_cv(X, Y, train, test, folds, ALPHAS, score=score, fit_intercept=fit_intercept,
                   dtype=np.float32, backend="numpy")
    _check_float32(res, ref_best, ref_scores, ref_r_all, ALPHAS)


def test_matches_sklearn_with_gap_folds_and_default_alphas():
    """Inner folds with a gap (training rows not contiguous) and the paper's alpha grid."""
    X, Y = make_data(150, 200, V=30, n_signal=20, seed=7)
    train, test = np.arange(120), np.arange(120, 150)
    folds = contiguous_blocks(train, 3, gap=4)
    ref_r, ref_best, ref_scores = sklearn_reference(X, Y, train, test, folds, DEFAULT_ALPHAS,
                                                    "r2", True)
    res = ridge_cv(X, Y, train, test, folds, score="r2", dtype=np.float64, backend="numpy")
    # noise voxels prefer the huge alphas of the grid, whose predictions (the training mean)
    # tie: there only the reference score of the chosen alpha has to be the best one
    V = Y.shape[1]
    idx = np.searchsorted(DEFAULT_ALPHAS, res.best_alpha)
    ref_best_score = ref_scores[ref_best, np.arange(V)]
    assert np.all(ref_scores[idx, np.arange(V)] >= ref_best_score - 1e-9)
    srt = np.sort(ref_scores, axis=0)
    ok = srt[-1] - srt[-2] > 1e-9
    assert ok[14:20].all() and len(np.unique(ref_best[ok])) >= 3  # the strongest signals
    np.testing.assert_array_equal(res.best_alpha[ok], DEFAULT_ALPHAS[ref_best][ok])
    np.testing.assert_allclose(res.test_r[ok], ref_r[ok], rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.cv_score, ref_best_score, rtol=0, atol=1e-9)


def test_matches_sklearn_with_scattered_fold_rows():
    """Folds whose rows are not contiguous (shuffled K-fold) and X/Y of different dtypes."""
    X, Y = make_data(110, 140, V=25, n_signal=18, seed=21, y_offset=1.0)
    rng = np.random.default_rng(0)
    train = np.sort(rng.permutation(110)[:90])
    test = np.setdiff1d(np.arange(110), train)
    perm = rng.permutation(train)
    folds = [Fold(np.sort(np.setdiff1d(train, perm[i::3])), np.sort(perm[i::3])) for i in range(3)]
    ref_r, ref_best, ref_scores = sklearn_reference(X, Y, train, test, folds, ALPHAS, "r2", True)
    srt = np.sort(ref_scores, axis=0)
    assert np.all(srt[-1] - srt[-2] > 1e-9)
    # float32 Y with float64 compute: the rows are converted while they are gathered
    Y32 = Y.astype(np.float32)
    res = ridge_cv(X, Y32, train, test, folds, ALPHAS, dtype=np.float64, backend="numpy")
    res64 = ridge_cv(X, Y32.astype(np.float64), train, test, folds, ALPHAS, dtype=np.float64,
                     backend="numpy")
    np.testing.assert_array_equal(res.test_r, res64.test_r)
    ref_r, ref_best, _ = sklearn_reference(X, Y32.astype(np.float64), train, test, folds,
                                           ALPHAS, "r2", True)
    np.testing.assert_array_equal(res.best_alpha, ALPHAS[ref_best])
    np.testing.assert_allclose(res.test_r, ref_r, rtol=0, atol=1e-8)


@pytest.mark.parametrize("n,p", SHAPES)
@pytest.mark.parametrize("score", ["r2", "r"])
def test_huge_alphas_are_not_rounding_noise(n, p, score):
    """With a huge alpha the prediction is nearly constant (the training mean) but its small
    variation still has a well-defined correlation, the limit of large alphas: scores and test
    r at alpha 1e18 (the paper's grid goes to 1e19) equal those at 1e10, not rounding noise.
    """
    X, Y = make_data(n, p, V=30, n_signal=20, seed=3, y_offset=1.0)
    train, test, folds = split(n, 20, 4)
    for dtype, tol in ((np.float64, 1e-7), (np.float32, 1e-5)):
        a = ridge_cv(X, Y, train, test, folds, [1e10], score=score, dtype=dtype, backend="numpy")
        b = ridge_cv(X, Y, train, test, folds, [1e18], score=score, dtype=dtype, backend="numpy")
        np.testing.assert_allclose(b.test_r, a.test_r, rtol=0, atol=tol)
        np.testing.assert_allclose(b.cv_score, a.cv_score, rtol=0, atol=tol)
    assert np.abs(a.test_r).max() > 0.3  # the limit direction predicts the planted signal


# --------------------------------------------------------------------------- backends/batches
@pytest.mark.parametrize("n,p", SHAPES)
def test_torch_backend_matches_numpy(n, p):
    pytest.importorskip("torch")
    X, Y = make_data(n, p, V=30, n_signal=20, seed=3)
    train, test, folds = split(n, 20, 4)
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        a = ridge_cv(X, Y, train, test, folds, ALPHAS, dtype=dtype, backend="numpy")
        b = ridge_cv(X, Y, train, test, folds, ALPHAS, dtype=dtype, backend="torch",
                     device="cpu")
        if dtype == np.float64:
            np.testing.assert_array_equal(a.best_alpha, b.best_alpha)
        same = a.best_alpha == b.best_alpha
        assert same.mean() >= 0.95
        np.testing.assert_allclose(a.test_r[same], b.test_r[same], rtol=0, atol=tol)
        np.testing.assert_allclose(a.cv_score, b.cv_score, rtol=0, atol=tol)


def test_torch_host_staging_path(monkeypatch):
    """The GPU path (rows gathered into a host buffer, then copied) gives the same result;
    emulated on the CPU by a backend without host views of its buffers."""
    pytest.importorskip("torch")
    monkeypatch.setattr(backends._TorchBackend, "host", lambda self, x: None)
    X, Y = make_data(120, 160, V=30, n_signal=20, seed=3)
    train, test, folds = split(120, 20, 4)
    a = ridge_cv(X, Y, train, test, folds, ALPHAS, dtype=np.float64, backend="numpy")
    b = ridge_cv(X, Y, train, test, folds, ALPHAS, dtype=np.float64, backend="torch",
                 device="cpu", voxel_batch=7)
    np.testing.assert_array_equal(a.best_alpha, b.best_alpha)
    np.testing.assert_allclose(a.test_r, b.test_r, rtol=0, atol=1e-10)


def test_get_backend():
    assert get_backend("numpy").name == "numpy"
    assert get_backend("auto").name in ("numpy", "torch")
    with pytest.raises(LesionAlignError):
        get_backend("jax")


@pytest.mark.parametrize("n,p", SHAPES)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_small_voxel_batches_match_one_batch(n, p, backend):
    if backend == "torch":
        pytest.importorskip("torch")
    X, Y = make_data(n, p, V=45, n_signal=30, seed=11)  # 45 = 6 * 7 + 3: partial last batch
    train, test, folds = split(n, 20, 4)
    steps = []
    kw = dict(dtype=np.float64, backend=backend)
    one = ridge_cv(X, Y, train, test, folds, ALPHAS, **kw)
    small = ridge_cv(X, Y, train, test, folds, ALPHAS, voxel_batch=7,
                     progress=lambda f, m: steps.append(f), **kw)
    assert one.timings["voxel_batch"] == 45 and small.timings["voxel_batch"] == 7
    np.testing.assert_array_equal(small.best_alpha, one.best_alpha)
    np.testing.assert_allclose(small.cv_score, one.cv_score, rtol=0, atol=1e-12)
    np.testing.assert_allclose(small.test_r, one.test_r, rtol=0, atol=1e-12)
    assert len(steps) == (len(folds) + 1) * 7  # 7 batches per inner fold and at refit


def test_float32_batches_match():
    X, Y = make_data(120, 160, V=45, n_signal=30, seed=12)
    train, test, folds = split(120, 20, 4)
    one = ridge_cv(X, Y, train, test, folds, ALPHAS, dtype=np.float32, backend="numpy")
    small = ridge_cv(X, Y, train, test, folds, ALPHAS, dtype=np.float32, backend="numpy",
                     voxel_batch=7)
    same = one.best_alpha == small.best_alpha
    assert same.mean() >= 0.95
    np.testing.assert_allclose(small.test_r[same], one.test_r[same], rtol=0, atol=1e-5)


def test_voxel_order_does_not_matter():
    """Voxels are independent: permuting the columns permutes the results."""
    X, Y = make_data(120, 160, V=45, n_signal=30, seed=13)
    train, test, folds = split(120, 20, 4)
    perm = np.random.default_rng(0).permutation(45)
    a = ridge_cv(X, Y, train, test, folds, ALPHAS, dtype=np.float64, backend="numpy",
                 voxel_batch=8)
    b = ridge_cv(X, Y[:, perm], train, test, folds, ALPHAS, dtype=np.float64, backend="numpy",
                 voxel_batch=8)
    np.testing.assert_array_equal(b.best_alpha, a.best_alpha[perm])
    np.testing.assert_allclose(b.test_r, a.test_r[perm], rtol=0, atol=1e-12)


def test_rows_outside_train_and_test_are_not_read():
    X, Y = make_data(130, 40, V=12, n_signal=8, seed=5)
    train, test, folds = split(120, 20, 4)
    Y2 = Y.copy()
    Y2[120:] = np.nan  # rows in neither split
    a = ridge_cv(X, Y, train, test, folds, ALPHAS, dtype=np.float64, backend="numpy")
    b = ridge_cv(X, Y2, train, test, folds, ALPHAS, dtype=np.float64, backend="numpy")
    np.testing.assert_array_equal(a.test_r, b.test_r)


# --------------------------------------------------------------------------- decomposition
@pytest.mark.parametrize("n,nb", [(1, 128), (2, 128), (5, 2), (130, 128), (300, 7), (257, 64)])
def test_tridiagonalize_reconstructs(n, nb):
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, n + 3))
    S = X @ X.T
    Q, d, e = solver._tridiagonalize(S.copy(), nb=nb, chunk=50)
    T = np.diag(d) + np.diag(e, 1) + np.diag(e, -1)
    scale = np.abs(S).max()
    np.testing.assert_allclose(Q @ T @ Q.T, S, rtol=0, atol=1e-13 * scale * n)
    np.testing.assert_allclose(Q.T @ Q, np.eye(n), rtol=0, atol=1e-13 * n)


def test_core_falls_back_to_clipped_eigenvalues():
    """A tridiagonal T with a (rounding-size) negative eigenvalue: T + alpha I is not
    positive definite for a tiny alpha, and the operator uses the clipped spectrum."""
    rng = np.random.default_rng(0)
    n = 12
    W = np.linalg.qr(rng.standard_normal((n, n)))[0]
    s = np.r_[-1e-9, np.linspace(1, 10, n - 1)]
    S = (W * s) @ W.T
    Q, d, e = solver._tridiagonalize(S.copy())
    core = solver._Core(d, e)
    A = rng.standard_normal((4, n)) @ Q  # A = E Q, B = Q (kernel form)
    alphas = np.array([1e-12, 1.0])
    assert not core.positive(1e-12) and core.positive(1.0)
    A2, B2, core2 = solver._usable(A, Q, core, alphas)
    assert core2.e is None and core2.d.min() == 0.0
    for a in alphas:
        M = core2.solve(a, A2.T).T @ B2.T
        s_clip = np.clip(s, 0, None)
        ref = (A @ Q.T) @ (W / (s_clip + a)) @ W.T
        np.testing.assert_allclose(M, ref, rtol=1e-6, atol=0)
    with pytest.raises(np.linalg.LinAlgError):
        core.solve(1e-12, A.T)


# --------------------------------------------------------------------------- folds
def test_leave_one_group_out():
    groups = np.array([3, 3, 1, 1, 1, 7, 7])
    folds = leave_one_group_out(groups)
    assert len(folds) == 3
    np.testing.assert_array_equal(folds[0].test, [0, 1])  # order of first appearance
    np.testing.assert_array_equal(folds[1].test, [2, 3, 4])
    np.testing.assert_array_equal(folds[2].test, [5, 6])
    for f in folds:
        assert isinstance(f, Fold)
        assert len(np.unique(groups[f.test])) == 1
        assert groups[f.test][0] not in groups[f.train]
        np.testing.assert_array_equal(np.sort(np.r_[f.train, f.test]), np.arange(7))
    with pytest.raises(LesionAlignError):
        leave_one_group_out([2, 2, 2])


@pytest.mark.parametrize("gap", [0, 1, 3])
def test_contiguous_blocks(gap):
    rows = np.arange(10, 110)  # arbitrary sample indices, in time order
    folds = contiguous_blocks(rows, 5, gap=gap)
    assert len(folds) == 5
    tests = np.concatenate([f.test for f in folds])
    np.testing.assert_array_equal(tests, rows)  # the test blocks partition the rows, in order
    for f in folds:
        assert np.all(np.diff(f.test) == 1)  # contiguous
        lo, hi = f.test[0], f.test[-1]
        # the gap excludes `gap` rows on both sides of the test block, nothing else
        excluded = (rows >= lo - gap) & (rows <= hi + gap)
        np.testing.assert_array_equal(f.train, rows[~excluded])
        assert len(np.intersect1d(f.train, f.test)) == 0
        if lo - gap > rows[0]:
            assert lo - gap - 1 in f.train
        if hi + gap < rows[-1]:
            assert hi + gap + 1 in f.train


def test_contiguous_blocks_errors():
    with pytest.raises(LesionAlignError):
        contiguous_blocks(np.arange(19), 5, gap=1)  # needs 5 * (2 * 1 + 2) = 20
    contiguous_blocks(np.arange(20), 5, gap=1)
    with pytest.raises(LesionAlignError):
        contiguous_blocks(np.arange(100), 1)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("alphas", [[], [0.0, 1.0], [-1.0], [np.nan, 1.0], [[1.0, 2.0]]])
def test_bad_alphas_raise(alphas):
    X, Y = make_data(60, 5, V=3, n_signal=0)
    train, test, folds = split(60, 10, 2)
    with pytest.raises(LesionAlignError):
        ridge_cv(X, Y, train, test, folds, alphas)


def test_unknown_score_and_shape_mismatch_raise():
    X, Y = make_data(60, 5, V=3, n_signal=0)
    train, test, folds = split(60, 10, 2)
    with pytest.raises(LesionAlignError):
        ridge_cv(X, Y, train, test, folds, ALPHAS, score="mse")
    with pytest.raises(LesionAlignError):
        ridge_cv(X[:-1], Y, train[:-1], test[:-1], folds, ALPHAS)
    with pytest.raises(LesionAlignError):
        cross_validated_r([X[:30], X[30:]], [Y[:30], Y[30:]], delays=(0,), score="mse")


def test_pearson_r():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    b[:, 3] = 1.0  # constant column -> 0
    r = pearson_r(a, b)
    for j in range(3):
        assert r[j] == pytest.approx(np.corrcoef(a[:, j], b[:, j])[0, 1], abs=1e-12)
    assert r[3] == 0.0


# --------------------------------------------------------------------------- cancel/progress
def test_cancel_raises_promptly():
    X, Y = make_data(120, 160, V=60, n_signal=10, seed=2)
    train, test, folds = split(120, 20, 4)
    calls = []

    def cancel():
        calls.append(len(progress))
        return len(progress) >= 3  # cancel after three batches

    progress = []
    with pytest.raises(Cancelled):
        ridge_cv(X, Y, train, test, folds, ALPHAS, voxel_batch=5, cancel=cancel,
                 progress=lambda f, m: progress.append(f))
    # it stopped at the first check that returned True: no batch ran after that
    assert len(progress) == 3
    assert calls[-1] == 3 and sum(c >= 3 for c in calls) == 1

    # also during the refit (after all inner folds)
    n_inner_steps = len(folds) * 12
    progress.clear()
    calls.clear()
    with pytest.raises(Cancelled):
        ridge_cv(X, Y, train, test, folds, ALPHAS, voxel_batch=5,
                 cancel=lambda: len(progress) >= n_inner_steps + 2,
                 progress=lambda f, m: progress.append(f))
    assert len(progress) == n_inner_steps + 2


def test_cancel_immediately_in_cross_validated_r():
    X_runs, Y_runs, _ = planted_runs(n_runs=3)
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        cross_validated_r(X_runs, Y_runs, delays=(1, 2), pad_before=2, cancel=lambda: True)
    assert time.perf_counter() - t0 < 5.0


def test_progress_fractions_increase_to_one():
    X, Y = make_data(120, 160, V=30, n_signal=10, seed=2)
    train, test, folds = split(120, 20, 4)
    seen = []
    ridge_cv(X, Y, train, test, folds, ALPHAS, voxel_batch=8,
             progress=lambda f, m: seen.append((f, m)))
    fr = np.array([f for f, _ in seen])
    assert len(fr) == (len(folds) + 1) * 4
    assert np.all(np.diff(fr) > 0) and np.all(fr > 0)
    assert fr[-1] == pytest.approx(1.0)
    assert all(isinstance(m, str) and m for _, m in seen)

    X_runs, Y_runs, _ = planted_runs(n_runs=3)
    seen.clear()
    cross_validated_r(X_runs, Y_runs, delays=(1, 2), pad_before=2,
                      progress=lambda f, m: seen.append(f))
    fr = np.array(seen)
    assert np.all(np.diff(fr) > 0) and fr[-1] == pytest.approx(1.0)


# --------------------------------------------------------------------------- cross_validated_r
def planted_runs(n_runs=3, T=90, d=6, V=40, n_signal=10, delays=(1, 2), pad=2, seed=0):
    """Feature runs (with ``pad`` leading rows) and BOLD with planted delayed signal."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d * len(delays), n_signal))
    X_runs, Y_runs = [], []
    for _ in range(n_runs):
        Xr = rng.standard_normal((pad + T, d)).astype(np.float32)
        Xd = fir_delays(Xr, delays, pad)
        Y = rng.standard_normal((T, V)).astype(np.float32)
        Y[:, :n_signal] += Xd @ W  # SNR ~ sqrt(d * len(delays))
        X_runs.append(Xr)
        Y_runs.append(Y)
    return X_runs, Y_runs, n_signal


def test_cross_validated_r_recovers_signal_leave_one_run_out():
    X_runs, Y_runs, ns = planted_runs(n_runs=4)
    res = cross_validated_r(X_runs, Y_runs, delays=(1, 2), pad_before=2, backend="numpy")
    assert isinstance(res, EncodingResult)
    assert res.fold_r.shape == (4, 40) and res.best_alpha.shape == (4, 40)
    assert "leave-one-run-out" in res.folds
    np.testing.assert_allclose(res.r, res.fold_r.mean(0))
    assert res.r[:ns].min() > 0.8
    assert np.abs(res.r[ns:]).mean() < 0.08
    assert np.abs(res.r[ns:]).max() < 0.3


def test_cross_validated_r_single_run_blocks():
    X_runs, Y_runs, ns = planted_runs(n_runs=1, T=300)
    res = cross_validated_r(X_runs, Y_runs, delays=(1, 2), pad_before=2, n_blocks=5,
                            score="r", backend="numpy")
    assert res.fold_r.shape == (5, 40)
    assert "contiguous blocks" in res.folds
    assert res.r[:ns].min() > 0.8
    assert np.abs(res.r[ns:]).mean() < 0.08


def _leaky_standardize(runs, pads, train_rows_per_run):
    """What the scaler must NOT do: statistics over all rows (test rows included)."""
    allx = np.concatenate([X[p:] for X, p in zip(runs, pads)], axis=0).astype(np.float64)
    mu, sd = allx.mean(0), allx.std(0)
    return [((X - mu) / sd).astype(np.float32) for X in runs]


def test_features_are_standardised_on_training_rows_only(monkeypatch):
    """With train-only z-scoring the design's training rows have mean 0, std 1 per column."""
    X_runs, Y_runs, _ = planted_runs(n_runs=3, d=4)
    X_runs[1] = X_runs[1] * 5.0 + 40.0  # a run with very different feature statistics
    seen = []
    real = enc.ridge_cv

    def spy(X, Y, train, test, *a, **k):
        seen.append((np.array(X), np.array(train), np.array(test)))
        return real(X, Y, train, test, *a, **k)

    monkeypatch.setattr(enc, "ridge_cv", spy)
    cross_validated_r(X_runs, Y_runs, delays=(0,), pad_before=2, backend="numpy")
    assert len(seen) == 3
    for Xd, train, test in seen:
        np.testing.assert_allclose(Xd[train].mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(Xd[train].std(0), 1.0, atol=1e-4)
        # the test rows are transformed with the training statistics, not re-centred
        assert np.abs(Xd[test].mean(0)).max() > 0.5


def test_test_run_feature_statistics_do_not_leak(monkeypatch):
    """An affine change of the held-out run's features leaves that fold's r unchanged.

    With training-only statistics the model of the fold is the same and its predictions on
    the held-out run change by a positive scale and an offset (Pearson r is invariant).
    Statistics that included the test rows would change the training design and the fit.
    """
    X_runs, Y_runs, _ = planted_runs(n_runs=3, d=30, T=60, n_signal=20, seed=4)
    kw = dict(delays=(1, 2), pad_before=2, dtype=np.float64, backend="numpy")
    shifted = list(X_runs)
    rng = np.random.default_rng(1)
    shifted[2] = X_runs[2] * 3.0 + rng.uniform(5, 50, X_runs[2].shape[1]).astype(np.float32)
    base = cross_validated_r(X_runs, Y_runs, **kw)
    moved = cross_validated_r(shifted, Y_runs, **kw)
    np.testing.assert_allclose(moved.fold_r[2], base.fold_r[2], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(moved.best_alpha[2], base.best_alpha[2])
    # negative control: a scaler that used the test rows fails this check
    monkeypatch.setattr(enc, "_standardize_on", _leaky_standardize)
    leaky_base = cross_validated_r(X_runs, Y_runs, **kw)
    leaky_moved = cross_validated_r(shifted, Y_runs, **kw)
    assert np.abs(leaky_moved.fold_r[2] - leaky_base.fold_r[2]).max() > 1e-2


def test_cross_validated_r_row_count_mismatch_raises():
    X_runs, Y_runs, _ = planted_runs(n_runs=2)
    with pytest.raises(LesionAlignError):
        cross_validated_r([X_runs[0], X_runs[1][:-1]], Y_runs, delays=(1, 2), pad_before=2)
    with pytest.raises(LesionAlignError):
        cross_validated_r(X_runs, Y_runs, delays=(1, 2), pad_before=3)
    with pytest.raises(LesionAlignError):
        cross_validated_r(X_runs[:1], Y_runs, delays=(1, 2), pad_before=2)


# --------------------------------------------------------------------------- given alphas
@pytest.mark.parametrize("n,p", SHAPES)
def test_given_alphas_refit_as_sklearn_with_those_alphas(n, p):
    """``alpha``: no inner search; each voxel refit with its alpha (scikit-learn's Ridge)."""
    X, Y = make_data(n, p, V=30, n_signal=20, seed=3 * n + p, y_offset=1.0)
    train, test, folds = split(n, 20, 4)
    chosen = np.random.default_rng(p).choice(ALPHAS, size=Y.shape[1])
    res = ridge_cv(X, Y, train, test, folds, ALPHAS, dtype=np.float64, backend="numpy",
                   alpha=chosen)
    pred = np.column_stack([Ridge(alpha=a).fit(X[train], Y[train, v]).predict(X[test])
                            for v, a in enumerate(chosen)])
    np.testing.assert_allclose(res.test_r, _pearson_cols(pred, Y[test]), rtol=0, atol=1e-8)
    np.testing.assert_array_equal(res.best_alpha, chosen)
    assert np.isnan(res.cv_score).all()


def test_given_alphas_are_checked():
    X, Y = make_data(60, 5, V=4, n_signal=2)
    train, test, folds = split(60, 10, 3)
    with pytest.raises(LesionAlignError, match="not among the alphas searched"):
        ridge_cv(X, Y, train, test, folds, ALPHAS, alpha=np.full(4, 7.0))
    with pytest.raises(LesionAlignError, match="one per voxel"):
        ridge_cv(X, Y, train, test, folds, ALPHAS, alpha=np.full(3, ALPHAS[0]))


@pytest.mark.parametrize("n_runs", [1, 3])
def test_a_fit_with_its_own_alphas_given_is_the_same_fit(n_runs):
    """Reusing the alphas a search chose (``fold_alphas``) gives that search's maps exactly;
    other features refit with them differ from their own search only by the alphas."""
    X_runs, Y_runs, ns = planted_runs(n_runs=n_runs, T=300 if n_runs == 1 else 120)
    kw = dict(delays=(1, 2), pad_before=2, n_blocks=5, backend="numpy")
    own = cross_validated_r(X_runs, Y_runs, **kw)
    again = cross_validated_r(X_runs, Y_runs, fold_alphas=own.best_alpha, **kw)
    np.testing.assert_array_equal(again.r, own.r)
    np.testing.assert_array_equal(again.best_alpha, own.best_alpha)
    noisy = [x + np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)
             for x in X_runs]
    searched = cross_validated_r(noisy, Y_runs, **kw)
    reused = cross_validated_r(noisy, Y_runs, fold_alphas=own.best_alpha, **kw)
    np.testing.assert_array_equal(reused.best_alpha, own.best_alpha)
    assert reused.r[:ns].min() > 0.3  # still the signal
    # the search picks each voxel's best of the alphas on training rows, not on test rows:
    # reused alphas may score a little higher or lower, never by much
    assert np.abs(reused.r - searched.r)[:ns].max() < 0.1
    with pytest.raises(LesionAlignError, match="outer folds"):
        cross_validated_r(X_runs, Y_runs, fold_alphas=own.best_alpha[:, :3], **kw)


def test_small_matrices_run_on_one_blas_thread(monkeypatch):
    """Decompositions and operators of small matrices run on one BLAS thread (their blocks
    are too small to share; oversubscribed they run many times slower), others as set."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen = []
    real = solver._tridiagonalize_blocked

    def spy(S, nb, chunk):
        seen.append((S.shape[0], blas()))
        return real(S, nb, chunk)

    monkeypatch.setattr(solver, "_tridiagonalize_blocked", spy)
    rng = np.random.default_rng(0)
    with threadpool_limits(2):
        for n in (40, solver.SMALL_MATRIX + 8):
            M = rng.standard_normal((n, n))
            S = M @ M.T
            Q, d, e = solver._tridiagonalize(S.copy())
            T = np.diag(d) + np.diag(e, 1) + np.diag(e, -1)
            np.testing.assert_allclose(Q @ T @ Q.T, S, atol=1e-8 * np.abs(S).max())
        assert blas() == {2}  # given back
    assert seen == [(40, {1}), (solver.SMALL_MATRIX + 8, {2})]
