"""The ridge solver of one fold: decompositions and the per-alpha solve.

The solver works on one decomposition of a symmetric matrix per fold. For a fold with
training rows ``tr`` and evaluation rows ``ev``, the ridge predictions of every alpha are
linear in the training BOLD::

    P_a = ybar + M_a @ (Y[tr] - ybar)     with  M_a = A (T + a I)^-1 B.T

where ``ybar`` is the training mean of each voxel (the intercept) and ``Q T Q.T`` is the
tridiagonal decomposition (float64: LAPACK ``dsytrd`` and the accumulated ``Q``) of the
centred training kernel ``Kc = Xc Xc.T`` (kernel form, when there are fewer training rows
than features: ``A = Kc[ev, tr] Q``, ``B = Q``) or of the centred covariance ``Xc.T Xc``
(primal form: ``A = Xc[ev] Q``, ``B = Xc[tr] Q``). This is the eigendecomposition
formula ``V diag(1 / (s + a)) V.T`` without the eigenvectors of ``T``: a tridiagonal solve
per alpha replaces them, for about two thirds of the time of a full ``eigh``.

Stacking ``M_a`` over all alphas (in the compute dtype) turns the whole alpha grid into one
matrix product per voxel batch (:func:`_build_operator`); the scores (Pearson r or R^2 per
alpha and voxel) come from column sums of the batch's predictions (:func:`_fold_scores`).
Predictions and BOLD are kept relative to ``ybar``, so that scores and test r stay exact
when a large alpha makes a prediction nearly constant. :func:`_refit_operators` gives the
test-prediction operators of the refit on all training rows.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from ..base.errors import LesionAlignError

#: decompositions and operators of matrices up to this size run on one BLAS thread: their
#: blocks are too small to share. Measured (benchmarks/study.py, 2 cores): one thread is
#: 1.3-2.3x faster up to n = 1,024 on a quiet machine and 1.5-4.4x next to a busy process;
#: at 1,536 two threads are 16 % faster when quiet (docs/benchmarks.md, "Small problems")
SMALL_MATRIX = 1024
_controller = None


def small_matrix_threads(n: int):
    """One BLAS thread inside the block when ``n`` (a matrix side) is at most
    :data:`SMALL_MATRIX`; the threads as they are otherwise."""
    global _controller
    if n > SMALL_MATRIX:
        return nullcontext()
    if _controller is None:
        # scipy's LAPACK loaded first, so that the controller limits its BLAS too
        from scipy.linalg import blas, lapack  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


# --------------------------------------------------------------------------- operator
@dataclass
class _FoldOperator:
    """Prediction operator of one fold for every alpha (see module docstring).

    ``left @ (right @ Yc)`` (or ``left @ Yc`` when ``right`` is None), with ``Yc`` the
    training BOLD centred on its training mean, gives in one product the predictions of all
    alphas minus that mean (rows ``a * n_ev : (a + 1) * n_ev`` for alpha ``a``), followed
    by ``n_alpha`` rows with their column sums.
    """

    left: object  # (n_alpha * n_ev + n_alpha, k) in compute dtype
    right: object | None  # (k, n_tr) or None (then k == n_tr)
    n_alpha: int
    n_ev: int


class _Core:
    """The fold's symmetric matrix ``S = Q T Q.T`` (kernel or covariance), float64.

    ``T`` is tridiagonal (diagonal ``d``, off-diagonal ``e``) or, when ``e`` is None,
    diagonal (``d`` holds eigenvalues). ``solve(alpha, R)`` returns ``(T + alpha I)^-1 R``.
    """

    def __init__(self, d: np.ndarray, e: np.ndarray | None):
        if e is not None and e.size == 0:  # 1 x 1: diagonal (LAPACK wrappers need n > 1)
            d, e = np.clip(d, 0.0, None), None
        self.d, self.e = d, e

    def positive(self, alpha: float) -> bool:
        """Whether ``T + alpha I`` is numerically positive definite."""
        if self.e is None:
            return True
        from scipy.linalg.lapack import dpttrf

        return dpttrf(self.d + alpha, self.e)[2] == 0

    def solve(self, alpha: float, R: np.ndarray) -> np.ndarray:
        if self.e is None:
            return R / (self.d + alpha)[:, None]
        from scipy.linalg.lapack import dpttrf, dpttrs

        df, ef, info = dpttrf(self.d + alpha, self.e)
        if info != 0:
            raise np.linalg.LinAlgError("T + alpha I is not positive definite")
        x, info = dpttrs(df, ef, R)
        return x


def _tridiagonalize(S: np.ndarray, nb: int = 128, chunk: int = 512):
    """``S = Q T Q.T`` (``S`` symmetric float64, overwritten): ``Q`` (C order), ``d``, ``e``.

    LAPACK ``dsytrd`` (about a third of the cost of a full eigendecomposition), then ``Q``
    from its Householder reflectors, accumulated backwards in blocks of ``nb`` (compact WY
    form, as LAPACK ``dorgtr``, which scipy does not expose) with matrix products.
    """
    with small_matrix_threads(S.shape[0]):
        return _tridiagonalize_blocked(S, nb, chunk)


def _tridiagonalize_blocked(S: np.ndarray, nb: int, chunk: int):
    from scipy.linalg.lapack import dsytrd, dsytrd_lwork

    n = S.shape[0]
    lwork = int(dsytrd_lwork(n, lower=1)[0])
    c, d, e, tau, info = dsytrd(S.T, lower=1, lwork=max(lwork, 1), overwrite_a=1)
    if info != 0:  # pragma: no cover - only for invalid arguments
        raise np.linalg.LinAlgError(f"dsytrd failed (info={info})")
    # reflector i (0-based): H_i = I - tau_i v v.T, v[:i+1] = 0, v[i+1] = 1, v[i+2:] = c[i+2:, i]
    Q = np.zeros((n, n))
    Q[np.diag_indices(n)] = 1.0
    m = n - 1
    tmp = np.empty((m, min(m, chunk)))
    for i0 in reversed(range(0, m, nb)):
        i1 = min(m, i0 + nb)
        k = i1 - i0
        V = np.tril(c[i0 + 1 :, i0:i1], -1)
        V[np.arange(k), np.arange(k)] = 1.0
        t = tau[i0:i1]
        VtV = V.T @ V
        Tw = np.zeros((k, k))  # H_i0 ... H_i1-1 = I - V Tw V.T
        for j in range(k):
            Tw[j, j] = t[j]
            if j:
                Tw[:j, j] = -t[j] * (Tw[:j, :j] @ VtV[:j, j])
        Qs = Q[i0 + 1 :, i0 + 1 :]
        W = Tw @ (V.T @ Qs)
        for c0 in range(0, W.shape[1], tmp.shape[1]):
            c1 = min(W.shape[1], c0 + tmp.shape[1])
            P = np.matmul(V, W[:, c0:c1], out=tmp[: V.shape[0], : c1 - c0])
            Qs[:, c0:c1] -= P
    return Q, d, e


def _eigh_core(A: np.ndarray, B: np.ndarray, core: _Core):
    """The same fold in the eigenbasis of ``T`` (when ``T + alpha I`` is not positive
    definite for some alpha: eigenvalues below zero, from rounding, are then clipped)."""
    from scipy.linalg import eigh_tridiagonal

    s, W = eigh_tridiagonal(core.d, core.e)
    return A @ W, B @ W, _Core(np.clip(s, 0.0, None), None)


def _kernel64(X: np.ndarray, block: int = 512) -> np.ndarray:
    """``X @ X.T`` in float64 without a float64 copy of ``X``.

    Accumulated with ``dsyrk`` (one triangle: half the flops of a general product) over
    blocks of features cast to float64, then mirrored.
    """
    from scipy.linalg.blas import dsyrk

    n, p = X.shape
    K = np.zeros((n, n), order="F")
    for c0 in range(0, p, block):
        Xb = np.asarray(X[:, c0 : c0 + block], dtype=np.float64)  # (n, block), C order
        # K += Xb @ Xb.T, upper triangle (K[i, j], i <= j); Xb.T is Fortran-ordered
        K = dsyrk(1.0, Xb.T, beta=1.0, c=K, trans=1, overwrite_c=1)
    for b0 in range(0, n, 256):  # lower triangle from the upper one, block by block
        b1 = min(n, b0 + 256)
        K[b0:b1, :b0] = K[:b0, b0:b1].T
        blk = K[b0:b1, b0:b1]
        iu = np.triu_indices(b1 - b0, 1)
        blk.T[iu] = blk[iu]
    return K


def _kernel_blocks(kernel: np.ndarray, tr: np.ndarray, ev: np.ndarray, fit_intercept: bool):
    """Training and evaluation blocks of the kernel, centred on the training mean."""
    if kernel.flags.f_contiguous:  # symmetric: gather rows from the C-ordered view
        kernel = kernel.T
    Ktt = kernel[np.ix_(tr, tr)]
    Ket = kernel[np.ix_(ev, tr)]
    if fit_intercept:  # centre on the training mean (double centring)
        m_t = Ktt.mean(1)
        m_e = Ket.mean(1)
        mm = m_t.mean()
        Ktt -= m_t[:, None]
        Ktt -= m_t[None, :] - mm
        Ket -= m_e[:, None]
        Ket -= m_t[None, :] - mm
    return Ktt, Ket


def _decompose_kernel(Ktt: np.ndarray, Ket: np.ndarray):
    """``A, B, core`` of the kernel form (``Ktt`` is overwritten)."""
    Q, d, e = _tridiagonalize(Ktt)
    return Ket @ Q, Q, _Core(d, e)


def _decompose(X: np.ndarray, tr: np.ndarray, ev: np.ndarray, fit_intercept: bool,
               kernel: np.ndarray | None = None):
    """Float64 pieces of ``M_a = A (T + a I)^-1 B.T`` for one fold.

    Returns ``A`` (n_ev, r), ``B`` (n_tr, r) and the :class:`_Core` ``T``, from the
    tridiagonal decomposition ``S = Q T Q.T`` of the centred covariance (primal form,
    ``p <= n_tr``: ``A = Xc[ev] Q``, ``B = Xc[tr] Q``) or of the centred kernel (``A =
    Kc[ev, tr] Q``, ``B = Q``; ``kernel``: ``X @ X.T`` in float64, computed when not given).
    """
    n_tr, p = len(tr), X.shape[1]
    if p <= n_tr:  # primal form: decomposition of the p x p covariance
        Xtr = np.asarray(X[tr], dtype=np.float64)
        mu = Xtr.mean(0) if fit_intercept else np.zeros(p)
        Xtr -= mu
        Q, d, e = _tridiagonalize(Xtr.T @ Xtr)
        A = (np.asarray(X[ev], dtype=np.float64) - mu) @ Q
        return A, Xtr @ Q, _Core(d, e)
    if kernel is None:  # kernel form: decomposition of the n_tr x n_tr kernel
        kernel = _kernel64(X)
    return _decompose_kernel(*_kernel_blocks(kernel, tr, ev, fit_intercept))


def _factored(n_out: int, r: int, n_tr: int) -> bool:
    """Whether ``L @ (R @ Y)`` (r < n_tr) costs less than the direct ``(L R) @ Y``."""
    return r * n_tr + n_out * r < n_out * n_tr


def _usable(A, B, core: _Core, alphas):
    """``A, B, core`` with ``T + alpha I`` positive definite for every alpha."""
    if core.positive(float(np.min(alphas))):
        return A, B, core
    return _eigh_core(A, B, core)


def _build_operator(be, A, B, core: _Core, alphas, out=None) -> _FoldOperator:
    """Stack the operators of all alphas; ``out`` (optional) is a reused buffer for ``left``.

    ``M_a = AD_a @ B.T`` with ``AD_a = A (T + a I)^-1`` (float64, one tridiagonal solve);
    the big product runs in the compute dtype, one alpha at a time, into its rows of
    ``left`` (no float64 or stacked temporary of the full operator).
    """
    with small_matrix_threads(max(A.shape[1], B.shape[0])):
        return _build_operator_in(be, A, B, core, alphas, out)


def _build_operator_in(be, A, B, core: _Core, alphas, out) -> _FoldOperator:
    A, B, core = _usable(A, B, core, alphas)
    n_ev, r = A.shape
    n_tr = B.shape[0]
    na = len(alphas)
    m = na * n_ev
    # per alpha: 1^T A (T + a I)^-1 (column sums of the predictions)
    a1 = A.sum(0)[:, None]
    sums = np.concatenate([core.solve(a, a1).T for a in alphas], axis=0)  # (na, r)
    factored = _factored(m, r, n_tr)
    k = r if factored else n_tr
    left = out if out is not None else be.empty((m + na, k))
    if be.name == "numpy":
        AD = np.empty((n_ev, r), dtype=be.dtype)
        Bt = None if factored else np.ascontiguousarray(B.T, dtype=be.dtype)
        for i, a in enumerate(alphas):
            rows = left[i * n_ev : (i + 1) * n_ev]
            ADa = core.solve(a, A.T).T  # (n_ev, r) float64
            if factored:
                rows[...] = ADa
            else:
                AD[...] = ADa
                np.matmul(AD, Bt, out=rows)
        left[m:] = sums if factored else sums @ B.T
    else:
        Bt = None if factored else be.asarray(B.T)
        for i, a in enumerate(alphas):
            AD = be.asarray(core.solve(a, A.T).T)
            rows = left[i * n_ev : (i + 1) * n_ev]
            be.copy_into(rows, AD if factored else be.matmul(AD, Bt))
        be.copy_into(left[m:], be.asarray(sums if factored else sums @ B.T))
    right = be.asarray(B.T) if factored else None
    return _FoldOperator(left, right, na, n_ev)


def _refit_operators(be, A, B, core: _Core, alphas) -> list[tuple]:
    """Test-prediction operators ``(left, right)`` of each alpha, in the compute dtype:
    ``pred - mean(Y) = left @ (right @ Yc)`` (``left @ Yc`` when ``right`` is None)."""
    A, B, core = _usable(A, B, core, alphas)
    n_te, r = A.shape
    factored = _factored(n_te, r, B.shape[0])
    Bt = be.asarray(B.T)
    ops = []
    for alpha in alphas:
        AD = be.asarray(core.solve(alpha, A.T).T)
        ops.append((AD, Bt) if factored else (be.matmul(AD, Bt), None))
    return ops


# --------------------------------------------------------------------------- scoring
def _fold_scores(be, op: _FoldOperator, Ytr, Yev, out, score, zbuf=None):
    """Score every alpha on one voxel batch of one fold: (n_alpha, b) float64.

    ``Ytr`` and ``Yev`` are centred on the training mean (nothing to centre without an
    intercept), so that the predictions ``q`` carry no constant part: the statistics stay
    exact when a large alpha makes a prediction nearly constant.
    """
    na, ne = op.n_alpha, op.n_ev
    m = na * ne
    Z = Ytr if op.right is None else be.matmul(op.right, Ytr, out=zbuf)
    P = be.matmul(op.left, Z, out=out)  # all alphas' predictions, then their column sums
    w = P.shape[1]
    P3 = P[:m].reshape(na, ne, w)
    s2 = be.to_numpy(be.colsum_prod3(P3, P3))
    s3 = be.to_numpy(be.colsum_prod3(P3, Yev))
    s1 = be.to_numpy(P[m:])
    y_sum, y_sq = be.colstats64(Yev)
    return _scores_from_stats(s1, s2, s3, y_sum, y_sq, ne, score)


def _scores_from_stats(s1, s2, s3, y_sum, y_sq, n, score):
    """Scores from the sufficient statistics of predictions ``q`` of ``y`` (n rows).

    ``s1 = 1^T q``, ``s2 = sum q^2``, ``s3 = sum q y`` (each (na, b)); ``y_sum``, ``y_sq``:
    column sums of ``y`` and ``y^2`` (b,). Predictions and ``y`` are both relative to the
    training mean (the intercept), which leaves R^2 and r unchanged.
    """
    ss_y = y_sq - y_sum**2 / n  # sum of squares of y around its mean
    with np.errstate(invalid="ignore", divide="ignore"):
        if score == "r":
            cov = s3 - s1 * y_sum / n
            var_p = s2 - s1**2 / n
            out = cov / np.sqrt(np.clip(var_p, 0, None) * ss_y)
            return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        if score == "r2":
            out = 1.0 - (y_sq - 2.0 * s3 + s2) / ss_y  # sum (y - q)^2 / ss_y
            return np.nan_to_num(out, nan=-np.inf)
    raise LesionAlignError(f"unknown score {score!r}; use 'r2' or 'r'")


def pearson_r(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Column-wise Pearson correlation; 0 where either column is constant."""
    pred = np.asarray(pred, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    pc = pred - pred.mean(0)
    yc = y - y.mean(0)
    num = (pc * yc).sum(0)
    den = np.sqrt((pc**2).sum(0) * (yc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    return np.where(den > 0, r, 0.0)
