"""Cross-validated ridge regression with one alpha per voxel (the encoding model).

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
matrix product per voxel batch; the scores (Pearson r or R^2 per alpha and voxel) are
computed from column sums of the batch's predictions right after that product, while they
are still in the CPU cache (the default batch is sized for that), so predictions never
leave the batch buffer. Predictions and BOLD are kept relative to ``ybar``, so that scores
and test r stay exact when a large alpha makes a prediction nearly constant. Folds are the
outer loop (one operator lives at a time) and voxels are processed in batches through
reused buffers, so that memory stays bounded whatever their number. The refit on all
training rows groups the voxels of a batch by their chosen alpha.

With ``fit_intercept=True`` (default) the result equals scikit-learn's
``Ridge(alpha, fit_intercept=True)`` fitted on the same rows, for every alpha.

Backends: ``"numpy"`` (OpenBLAS; fastest on CPU here) and ``"torch"`` (uses the GPU when
``device="cuda"``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..base.errors import Cancelled, LesionAlignError
from ..features.extraction import fir_delays

#: The paper's alpha grid.
DEFAULT_ALPHAS = np.logspace(0, 19, 20)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


# --------------------------------------------------------------------------- backends
class _NumpyBackend:
    name = "numpy"

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def asarray(self, x, dtype=None):
        return np.ascontiguousarray(x, dtype=dtype or self.dtype)

    def empty(self, shape):
        return np.empty(shape, dtype=self.dtype)

    def matmul(self, a, b, out=None):
        return np.matmul(a, b, out=out)

    def colsum_prod(self, a, b):
        """Column sums of ``a * b`` (no temporary of the full product)."""
        return np.einsum("ij,ij->j", a, b)

    def colsum_prod3(self, a, b):
        """``(k, m, n) x (k|1, m, n) -> (k, n)``: column sums of ``a[k] * b[k]`` per ``k``."""
        return np.einsum("aij,aij->aj", a, b) if b.ndim == 3 else np.einsum("aij,ij->aj", a, b)

    def to_numpy(self, x):
        return np.asarray(x, dtype=np.float64)

    def colstats64(self, x):
        """Column sums of ``x`` and ``x**2``, accumulated in float64."""
        return x.sum(0, dtype=np.float64), np.einsum("ij,ij->j", x, x, dtype=np.float64)

    def center(self, x, mean):
        """``x -= mean`` (per column, in place)."""
        np.subtract(x, mean.astype(x.dtype), out=x)

    def host(self, x):
        """A numpy array that shares memory with ``x`` (None when there is none)."""
        return x

    def copy_into(self, dst, src):
        dst[...] = src

    def index(self, idx):
        return np.asarray(idx)

    def take_cols(self, x, idx, out):
        return np.take(x, idx, axis=1, out=out)


class _TorchBackend:
    name = "torch"

    def __init__(self, dtype, device=None):
        import torch

        self.torch = torch
        self.dtype = {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}[
            np.dtype(dtype)
        ]
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)

    def asarray(self, x, dtype=None):
        t = self.torch
        if isinstance(x, t.Tensor):
            return x.to(device=self.device, dtype=self.dtype).contiguous()
        return t.as_tensor(np.ascontiguousarray(x), device=self.device).to(self.dtype).contiguous()

    def empty(self, shape):
        return self.torch.empty(shape, dtype=self.dtype, device=self.device)

    def matmul(self, a, b, out=None):
        return self.torch.matmul(a, b, out=out)

    def colsum_prod(self, a, b):
        return self.torch.einsum("ij,ij->j", a, b)

    def colsum_prod3(self, a, b):
        eq = "aij,aij->aj" if b.ndim == 3 else "aij,ij->aj"
        return self.torch.einsum(eq, a, b)

    def to_numpy(self, x):
        return x.detach().to("cpu", self.torch.float64).numpy()

    def colstats64(self, x):
        x64 = x.to(self.torch.float64)
        return x64.sum(0).cpu().numpy(), (x64 * x64).sum(0).cpu().numpy()

    def center(self, x, mean):
        x -= self.torch.as_tensor(mean, device=self.device).to(self.dtype)

    def host(self, x):
        return x.numpy() if x.device.type == "cpu" else None

    def copy_into(self, dst, src):
        if isinstance(src, np.ndarray):
            src = self.torch.from_numpy(np.ascontiguousarray(src))
        dst.copy_(src, non_blocking=False)

    def index(self, idx):
        return self.torch.as_tensor(np.asarray(idx), device=self.device)

    def take_cols(self, x, idx, out):
        return self.torch.index_select(x, 1, idx, out=out)


def get_backend(backend: str = "auto", dtype=np.float32, device=None):
    """Return a backend object.

    ``"auto"`` picks torch on a CUDA GPU when one is present and numpy otherwise (numpy's
    OpenBLAS runs float32 products about twice as fast as torch on these CPUs).
    """
    if backend == "auto":
        try:
            import torch

            backend = "torch" if torch.cuda.is_available() else "numpy"
        except ImportError:  # pragma: no cover - torch is a dependency
            backend = "numpy"
    if backend == "numpy":
        return _NumpyBackend(dtype)
    if backend == "torch":
        return _TorchBackend(dtype, device)
    raise LesionAlignError(f"unknown ridge backend {backend!r}; use 'auto', 'numpy' or 'torch'")


# --------------------------------------------------------------------------- folds
@dataclass(frozen=True)
class Fold:
    """Training and evaluation rows (integer indices into the sample axis)."""

    train: np.ndarray
    test: np.ndarray


def leave_one_group_out(groups: Sequence[int]) -> list[Fold]:
    """One fold per distinct group (run): train on the others, test on it."""
    groups = np.asarray(groups)
    uniq = list(dict.fromkeys(groups.tolist()))
    if len(uniq) < 2:
        raise LesionAlignError(
            "leave-one-run-out needs at least 2 runs; with a single run use contiguous blocks"
        )
    return [Fold(np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in uniq]


def contiguous_blocks(rows: np.ndarray, n_blocks: int, gap: int = 0) -> list[Fold]:
    """Split ``rows`` (sample indices in time order) into contiguous test blocks.

    The training rows of each fold exclude ``gap`` samples on each side of its test block,
    so that the BOLD autocorrelation and the FIR delays do not leak test data into
    training.
    """
    rows = np.asarray(rows)
    n = len(rows)
    if n_blocks < 2:
        raise LesionAlignError(f"n_blocks must be at least 2, got {n_blocks}")
    if n < n_blocks * (2 * gap + 2):
        raise LesionAlignError(
            f"{n} samples are too few for {n_blocks} blocks with a gap of {gap}; "
            "use fewer blocks or shorter delays"
        )
    edges = np.linspace(0, n, n_blocks + 1).round().astype(int)
    folds = []
    for b in range(n_blocks):
        lo, hi = edges[b], edges[b + 1]
        keep = np.ones(n, dtype=bool)
        keep[max(0, lo - gap) : min(n, hi + gap)] = False
        folds.append(Fold(rows[keep], rows[lo:hi]))
    return folds


# --------------------------------------------------------------------------- rows
def _row_runs(rows) -> list[tuple[int, int, int]]:
    """``(dst, src, length)`` of the runs of consecutive sample indices in ``rows``."""
    rows = np.asarray(rows, dtype=np.intp)
    if len(rows) == 0:
        return []
    brk = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.r_[0, brk]
    ends = np.r_[brk, len(rows)]
    return [(int(a), int(rows[a]), int(b - a)) for a, b in zip(starts, ends)]


def _gather_rows(dst: np.ndarray, Y: np.ndarray, rows, runs, v0: int, v1: int) -> None:
    """``dst[...] = Y[rows, v0:v1]`` without a temporary when the rows come in runs.

    (``np.take`` on the column slice would first copy every row of it.)
    """
    if len(runs) * 8 <= len(rows):  # runs of 8+ rows on average: one slice copy per run
        for d, s, n in runs:
            dst[d : d + n] = Y[s : s + n, v0:v1]
    else:
        dst[...] = Y[rows, v0:v1]


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


# --------------------------------------------------------------------------- solver
@dataclass
class RidgeResult:
    """Outcome of :func:`ridge_cv` for one train/test split."""

    test_r: np.ndarray  # (V,) Pearson r on the test rows
    best_alpha: np.ndarray  # (V,) alpha chosen per voxel
    cv_score: np.ndarray  # (V,) inner-CV score of the chosen alpha
    timings: dict = field(default_factory=dict)


class _Buffers:
    """Work buffers reused across batches and folds (fresh memory is slow on small VMs)."""

    def __init__(self, be, dtype):
        self.be = be
        self.dtype = np.dtype(dtype)
        self._bufs: dict = {}

    def get(self, name, rows, cols, host=False):
        """A ``(rows, cols)`` view of buffer ``name`` (grown when too small).

        ``host=True``: a numpy buffer in the compute dtype (staging for a GPU backend).
        """
        key = (name, host)
        buf = self._bufs.get(key)
        if buf is None or buf.shape[0] < rows or buf.shape[1] < cols:
            shape = (max(rows, 0 if buf is None else buf.shape[0]),
                     max(cols, 0 if buf is None else buf.shape[1]))
            self._bufs.pop(key, None)
            del buf
            if host:
                buf = np.empty(shape, dtype=self.dtype)
            else:
                buf = self.be.empty(shape)
            self._bufs[key] = buf
        return buf[:rows, :cols]

    def drop(self, *names):
        for key in [k for k in self._bufs if k[0] in names]:
            del self._bufs[key]


#: Target size of the batch's prediction block (all alphas): it stays in the L3 cache
#: between the product that writes it and the scoring passes that read it.
_PRED_BLOCK_BYTES = 24 * 2**20


def _default_batch(n_pred_rows: int, per_voxel_bytes: int, itemsize: int,
                   memory_budget_mb: int) -> int:
    b = _PRED_BLOCK_BYTES // max(1, n_pred_rows * itemsize)
    b = max(256, min(4096, b // 64 * 64))  # wide enough for the product to run at full speed
    return int(max(16, min(b, memory_budget_mb * 2**20 // max(1, per_voxel_bytes))))


def ridge_cv(
    X: np.ndarray,
    Y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    inner_folds: Sequence[Fold],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    score: str = "r2",
    fit_intercept: bool = True,
    dtype=np.float32,
    backend: str = "auto",
    device=None,
    voxel_batch: int | None = None,
    memory_budget_mb: int = 192,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> RidgeResult:
    """Choose one alpha per voxel by inner CV on ``train``; refit; Pearson r on ``test``.

    Parameters
    ----------
    X : (n_samples, n_features) array
        Design matrix (already delayed and standardised); rows index samples (TRs).
    Y : (n_samples, n_voxels) array
        BOLD; only the rows in ``train`` and ``test`` are read. Columns must be finite.
    train, test : integer arrays
        Rows of the outer split.
    inner_folds : sequence of Fold
        Folds over rows of ``X`` (subsets of ``train``) used to choose alpha.
    alphas : sequence of float
        Ridge penalties.
    score : {"r2", "r"}
        Inner-CV score (R^2 is himalaya's default and the paper's).
    fit_intercept : bool
        Centre features and BOLD on each fit's training rows (as scikit-learn's Ridge).
    dtype : float32 or float64
        Compute dtype of the large products (decompositions are always float64).
    backend : {"auto", "numpy", "torch"}
    voxel_batch : int, optional
        Voxels per batch; by default sized so that one batch's predictions (all alphas)
        stay in the CPU cache, and bounded by ``memory_budget_mb``.
    progress : callable(fraction, message), optional
    cancel : callable() -> bool, optional
        Checked between batches; raises :class:`Cancelled` when it returns True.

    Returns
    -------
    RidgeResult
    """
    t0 = time.perf_counter()
    be = get_backend(backend, dtype, device)
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or len(alphas) == 0 or np.any(~(alphas > 0)):
        raise LesionAlignError(f"alphas must be a non-empty list of positive numbers, got {alphas}")
    if score not in ("r", "r2"):
        raise LesionAlignError(f"unknown score {score!r}; use 'r2' or 'r'")
    n, V = Y.shape
    if X.shape[0] != n:
        raise LesionAlignError(f"X has {X.shape[0]} rows but Y has {n}")
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    train, test = np.asarray(train), np.asarray(test)
    p = X.shape[1]
    kernel = _kernel64(X) if p > min(len(f.train) for f in inner_folds) else None
    na = len(alphas)
    itemsize = np.dtype(dtype).itemsize
    max_ev = max(max(len(f.test) for f in inner_folds), len(test))
    max_tr = max(max(len(f.train) for f in inner_folds), len(train))
    per_voxel = (2 * max_tr + max_ev + na * max_ev + na) * itemsize
    b = voxel_batch or _default_batch(na * max_ev + na, per_voxel, itemsize, memory_budget_mb)
    b = max(1, min(b, V))
    batches = [(v0, min(V, v0 + b)) for v0 in range(0, V, b)]
    n_steps = (len(inner_folds) + 1) * len(batches)
    step = 0
    bufs = _Buffers(be, dtype)
    timings = {"decompose_s": 0.0, "inner_s": 0.0}

    def tick(msg):
        nonlocal step
        step += 1
        if progress is not None:
            progress(step / n_steps, msg)

    def check_cancel():
        if cancel is not None and cancel():
            raise Cancelled()

    def load_rows(name, rows, runs, v0, v1):
        """``Y[rows, v0:v1]`` in the compute dtype, in a reused buffer."""
        out = bufs.get(name, len(rows), v1 - v0)
        host = be.host(out)
        if host is None:  # device memory: fill a reused host buffer, then copy
            host = bufs.get(name, len(rows), v1 - v0, host=True)
            _gather_rows(host, Y, rows, runs, v0, v1)
            be.copy_into(out, host)
        else:
            _gather_rows(host, Y, rows, runs, v0, v1)
        return out

    # 1. inner CV: one decomposition per fold, all alphas scored per voxel batch
    scores = np.zeros((na, V))
    for k, f in enumerate(inner_folds):
        check_cancel()
        td = time.perf_counter()
        A, B, core = _decompose(X, f.train, f.test, fit_intercept, kernel)
        n_ev, r = A.shape
        n_left = na * n_ev + na
        k_left = r if _factored(na * n_ev, r, len(f.train)) else len(f.train)
        op = _build_operator(be, A, B, core, alphas, out=bufs.get("left", n_left, k_left))
        del A, B, core
        timings["decompose_s"] += time.perf_counter() - td
        runs_tr, runs_ev = _row_runs(f.train), _row_runs(f.test)
        tl = time.perf_counter()
        for v0, v1 in batches:
            check_cancel()
            Ytr = load_rows("tr", f.train, runs_tr, v0, v1)
            Yev = load_rows("ev", f.test, runs_ev, v0, v1)
            if fit_intercept:  # centre both on the training mean (the intercept)
                ybar = be.colstats64(Ytr)[0] / len(f.train)
                be.center(Ytr, ybar)
                be.center(Yev, ybar)
            out = bufs.get("pred", n_left, v1 - v0)
            zbuf = None if op.right is None else bufs.get("z", k_left, v1 - v0)
            scores[:, v0:v1] += _fold_scores(be, op, Ytr, Yev, out, score, zbuf)
            tick(f"ridge: inner fold {k + 1}/{len(inner_folds)}, voxels {v1}/{V}")
        timings["inner_s"] += time.perf_counter() - tl
        del op
    scores /= len(inner_folds)
    best = np.argmax(scores, axis=0)
    best_alpha = alphas[best]
    cv_best = scores[best, np.arange(V)]

    # 2. refit on all training rows with each voxel's alpha; Pearson r on the test rows.
    # Per batch, the voxels are sorted by alpha (one column gather) so that each alpha's
    # product runs on a contiguous block of columns.
    bufs.drop("left", "pred", "z")
    td = time.perf_counter()
    if kernel is not None and p > len(train):
        blocks = _kernel_blocks(kernel, train, test, fit_intercept)
        del kernel  # not needed any more: free it before the largest decomposition
        A_t, B_t, core_t = _decompose_kernel(*blocks)
        del blocks
    else:
        del kernel
        A_t, B_t, core_t = _decompose(X, train, test, fit_intercept)
    used = np.unique(best)
    refit_ops = dict(zip(used.tolist(), _refit_operators(be, A_t, B_t, core_t, alphas[used])))
    del A_t, B_t, core_t
    timings["decompose_s"] += time.perf_counter() - td
    tl = time.perf_counter()
    test_r = np.zeros(V)
    runs_tr, runs_te = _row_runs(train), _row_runs(test)
    for v0, v1 in batches:
        check_cancel()
        w = v1 - v0
        Ytr = load_rows("tr", train, runs_tr, v0, v1)
        yte = be.to_numpy(load_rows("ev", test, runs_te, v0, v1))
        if fit_intercept:  # predictions relative to the training mean (r ignores it)
            be.center(Ytr, be.colstats64(Ytr)[0] / len(train))
        bb = best[v0:v1]
        order = np.argsort(bb, kind="stable")
        Ys = be.take_cols(Ytr, be.index(order), out=bufs.get("sorted", len(train), w))
        sb = bb[order]
        edges = np.r_[0, np.flatnonzero(np.diff(sb)) + 1, w]
        pred = np.empty((len(test), w))
        for lo, hi in zip(edges[:-1], edges[1:]):
            left, right = refit_ops[int(sb[lo])]
            Ysub = Ys[:, lo:hi]
            Z = Ysub if right is None else be.matmul(right, Ysub)
            pred[:, order[lo:hi]] = be.to_numpy(be.matmul(left, Z))
        test_r[v0:v1] = pearson_r(pred, yte)
        tick(f"ridge: refit, voxels {v1}/{V}")
    timings.update(refit_s=time.perf_counter() - tl, total_s=time.perf_counter() - t0,
                   voxel_batch=b)
    return RidgeResult(test_r, best_alpha, cv_best, timings)


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


# --------------------------------------------------------------------------- one run
class _TrainingRowsProjected:
    """``Y`` whose rows ``train`` are projected off the span of ``D[train]``, read lazily.

    ``groups``: ``(c0, c1, D)`` per column range (``D``: ``(n_samples, k)`` regressors of
    those columns, e.g. one subject's confounds). Only ``Y[rows, v0:v1]`` reads are served
    (all that :func:`ridge_cv` does): the training rows come back as
    ``Y - Q (Q.T Y[train])`` (``Q`` an orthonormal basis of ``D[train]``), every other row as
    it is. Holds ``Q`` (zero outside ``train``) and ``Q.T Y[train]`` (``rank x V``, float64).
    """

    def __init__(self, Y, train: np.ndarray, groups, batch: int = 4096):
        self.Y = Y
        self.shape = Y.shape
        self.dtype = Y.dtype
        train = np.asarray(train)
        self.parts = []
        for c0, c1, D in groups:
            D = np.asarray(D, dtype=np.float64)[train]
            norm = np.sqrt((D * D).sum(0))
            D = D[:, norm > 0] / norm[norm > 0]  # columns of unit norm: a fair rank cut
            u, sv, _ = np.linalg.svd(D, full_matrices=False)
            Q = u[:, sv > sv[0] * max(D.shape) * np.finfo(float).eps] if sv.size else u[:, :0]
            Qf = np.zeros((Y.shape[0], Q.shape[1]))
            Qf[train] = Q
            B = np.empty((Q.shape[1], c1 - c0))
            for v0 in range(c0, c1, batch):
                v1 = min(c1, v0 + batch)
                B[:, v0 - c0 : v1 - c0] = Q.T @ np.asarray(Y[train, v0:v1], dtype=np.float64)
            self.parts.append((c0, c1, Qf, B))

    def __getitem__(self, key):
        rows, cols = key
        v0, v1 = cols.start or 0, self.shape[1] if cols.stop is None else cols.stop
        out = np.array(self.Y[rows, v0:v1], dtype=np.float64)
        for c0, c1, Qf, B in self.parts:
            a, b = max(v0, c0), min(v1, c1)
            if a < b:
                out[:, a - v0 : b - v0] -= Qf[rows] @ B[:, a - c0 : b - c0]
        return out


# --------------------------------------------------------------------------- runs
@dataclass
class EncodingResult:
    """Cross-validated alignment of one subject in one language."""

    r: np.ndarray  # (V,) Pearson r averaged over outer folds
    fold_r: np.ndarray  # (n_folds, V)
    best_alpha: np.ndarray  # (n_folds, V)
    folds: str  # description of the CV scheme
    timings: dict = field(default_factory=dict)


def _standardize_on(runs: Sequence[np.ndarray], pads: Sequence[int], train_rows_per_run):
    """z-score features with the mean/std of the training rows (pads excluded)."""
    blocks = [X[p:][rows] for X, p, rows in zip(runs, pads, train_rows_per_run) if len(rows)]
    allx = np.concatenate(blocks, axis=0).astype(np.float64)
    mu = allx.mean(0)
    sd = allx.std(0)
    sd[sd == 0] = 1.0
    return [((X - mu) / sd).astype(np.float32) for X in runs]


def cross_validated_r(
    X_runs: Sequence[np.ndarray],
    Y_runs: Sequence[np.ndarray],
    delays: Sequence[int] = (1, 2, 3, 4),
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    pad_before: int = 0,
    n_blocks: int = 5,
    score: str = "r2",
    dtype=np.float32,
    backend: str = "auto",
    run_lengths: Sequence[int] | None = None,
    keep: Sequence[np.ndarray] | None = None,
    nuisance=None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> EncodingResult:
    """Outer leave-one-run-out (or contiguous blocks for a single run) encoding model.

    Parameters
    ----------
    X_runs : per run, ``(pad_before + T_i, d)`` word features on the TR grid; the first
        ``pad_before`` rows precede the run (they feed the FIR delays).
    Y_runs : per run, ``(T_i, V)`` cleaned, z-scored BOLD with finite, non-constant columns;
        or, with ``run_lengths``, the runs one after another in one ``(sum T_i, V)`` array
        (any strides: a column slice of a larger buffer is used as it is, not copied).
    delays : FIR delays in volumes.
    keep : per run, a boolean mask of its volumes (``(T_i,)``): the censored volumes
        (False) are not in ``Y_runs`` / ``run_lengths`` (which count the kept volumes),
        while ``X_runs`` still has every volume; the features are delayed on the full time
        grid, then their censored rows are dropped too
        (:func:`~.bold.censored_volumes`).
    nuisance : with a single run, the regressors its BOLD was cleaned with, at the rows of
        ``Y`` (:func:`~.bold.cleaning_regressors`): a ``(n_rows, k)`` array for every
        column, or a list of ``(c0, c1, array)`` per column range (subjects with their own
        confounds). Ignored with several runs.

    Features are z-scored on the training rows of every outer fold, then delayed. Alpha is
    chosen per voxel by inner CV on the training runs (leave one training run out, or
    contiguous blocks with a gap of ``max(delays)`` volumes when there is one run).

    The held-out BOLD must not depend on the training BOLD. With several runs each run is
    cleaned on its own and held out whole, so it does not. A single run is cleaned as a
    whole (drifts and confounds fitted on every volume), which couples its blocks through
    the fitted coefficients: on pure noise the mean r is then off zero (by up to ~0.01,
    through the cosine high-pass). So with one run and ``nuisance``, each outer fold's
    training rows (those of its inner CV and of its refit) are projected off the span of
    ``nuisance`` at the training rows -- the training blocks cleaned by themselves, as a
    run with a hole -- while the test block keeps the whole-run cleaning. The training BOLD
    is then uncorrelated with the test block's (independent for Gaussian noise), and r
    centres on 0 as with several runs. The whole-run z-scoring scale is one factor per
    voxel over train and test, to which r and the choice of alpha are invariant.
    """
    if run_lengths is not None:
        lens = [int(n) for n in run_lengths]
        if Y_runs.shape[0] != sum(lens):
            raise LesionAlignError(f"{Y_runs.shape[0]} BOLD rows for runs of {lens} volumes")
    else:
        lens = [Y.shape[0] for Y in Y_runs]
    n_runs = len(lens)
    if len(X_runs) != n_runs:
        raise LesionAlignError(f"{len(X_runs)} feature runs for {n_runs} BOLD runs")
    full = lens
    if keep is not None:
        keep = [np.asarray(k, dtype=bool) for k in keep]
        if len(keep) != n_runs or any(int(k.sum()) != T for k, T in zip(keep, lens)):
            raise LesionAlignError(f"kept volumes {[int(k.sum()) for k in keep]} do not "
                                   f"match the BOLD runs of {lens} volumes")
        full = [len(k) for k in keep]
        kept_rows = [np.flatnonzero(k) for k in keep]
    for i, (X, T) in enumerate(zip(X_runs, full)):
        if X.shape[0] != T + pad_before:
            raise LesionAlignError(
                f"run {i + 1}: {X.shape[0] - pad_before} feature rows for {T} volumes"
            )
    starts = np.r_[0, np.cumsum(lens)[:-1]]
    groups = np.repeat(np.arange(n_runs), lens)
    if run_lengths is not None:
        Y = Y_runs
    else:
        Y = np.concatenate(Y_runs, axis=0) if n_runs > 1 else np.asarray(Y_runs[0])
    gap = max(delays) if len(delays) else 0
    rows = np.arange(len(groups))
    if n_runs >= 2:
        outer = leave_one_group_out(groups)
        scheme = f"leave-one-run-out over {n_runs} runs"
        nuisance = None
    else:
        outer = contiguous_blocks(rows, n_blocks, gap=gap)
        scheme = f"{n_blocks} contiguous blocks, gap {gap} volumes"
    if nuisance is not None:
        if not isinstance(nuisance, (list, tuple)):
            nuisance = [(0, Y.shape[1], nuisance)]
        for c0, c1, D in nuisance:
            if np.shape(D)[0] != Y.shape[0] or not 0 <= c0 <= c1 <= Y.shape[1]:
                raise LesionAlignError(f"nuisance regressors of shape {np.shape(D)} for "
                                       f"columns {c0}:{c1} of BOLD of shape {Y.shape}")
    fold_r, fold_alpha = [], []
    t0 = time.perf_counter()
    for k, fold in enumerate(outer):
        train_runs = sorted(set(groups[fold.train].tolist()))
        # z-score on the training rows of this fold, then delay per run
        per_run_rows = [fold.train[groups[fold.train] == i] - starts[i] for i in range(n_runs)]
        if keep is not None:  # rows of the kept volumes -> rows of the full runs
            per_run_rows = [kept_rows[i][r] for i, r in enumerate(per_run_rows)]
        Xz = _standardize_on(X_runs, [pad_before] * n_runs, per_run_rows)
        Xd = [fir_delays(x, delays, pad_before) for x in Xz]
        if keep is not None:
            Xd = [x[k] for x, k in zip(Xd, keep)]
        Xd = np.concatenate(Xd, axis=0)
        if len(train_runs) >= 2 and n_runs >= 2:
            inner = [Fold(fold.train[groups[fold.train] != g], fold.train[groups[fold.train] == g])
                     for g in train_runs]
        else:
            inner = contiguous_blocks(fold.train, max(2, n_blocks - 1), gap=gap)
            if n_runs == 1:
                # blocks must not straddle the outer test block's gap: keep rows as given
                pass

        def sub_progress(frac, msg, k=k):
            if progress is not None:
                progress((k + frac) / len(outer), f"fold {k + 1}/{len(outer)}: {msg}")

        Yk = Y if nuisance is None else _TrainingRowsProjected(Y, fold.train, nuisance)
        res = ridge_cv(Xd, Yk, fold.train, fold.test, inner, alphas, score=score, dtype=dtype,
                       backend=backend, progress=sub_progress, cancel=cancel)
        del Yk
        fold_r.append(res.test_r)
        fold_alpha.append(res.best_alpha)
    fold_r = np.stack(fold_r)
    return EncodingResult(fold_r.mean(0), fold_r, np.stack(fold_alpha), scheme,
                          {"seconds": time.perf_counter() - t0})
