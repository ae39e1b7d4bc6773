"""Cross-validated ridge regression with one alpha per voxel (the encoding model).

The solver works on one eigendecomposition per fold. For a fold with training rows
``tr`` and evaluation rows ``ev``, the ridge predictions of every alpha are linear in
the training BOLD::

    P_a = M_a @ Y[tr] + c_a * mean(Y[tr])     with  M_a = A diag(1 / (s + a)) B.T

where ``A``, ``B`` and ``s`` come from the eigendecomposition of the centred training
kernel ``Xc Xc.T`` (kernel form, when there are fewer training rows than features) or
of the centred covariance ``Xc.T Xc`` (primal form). Stacking ``M_a`` over all alphas
turns the whole alpha grid into one matrix product per voxel batch; the scores
(Pearson r or R^2 per alpha and voxel) are computed in the same pass from column sums,
so predictions never leave the batch buffer. Voxels are processed in batches so that
memory stays bounded whatever their number.

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

from .errors import Cancelled, LesionAlignError

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

    def to_numpy(self, x):
        return np.asarray(x, dtype=np.float64)

    def copy_into(self, dst, src):
        dst[...] = src

    def index(self, idx):
        return np.asarray(idx)

    def take_rows(self, x, idx, out):
        return np.take(x, idx, axis=0, out=out)


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

    def to_numpy(self, x):
        return x.detach().to("cpu", self.torch.float64).numpy()

    def copy_into(self, dst, src):
        if isinstance(src, np.ndarray):
            src = self.torch.from_numpy(np.ascontiguousarray(src))
        dst.copy_(src, non_blocking=False)

    def index(self, idx):
        return self.torch.as_tensor(np.asarray(idx), device=self.device)

    def take_rows(self, x, idx, out):
        return self.torch.index_select(x, 0, idx, out=out)


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


# --------------------------------------------------------------------------- operator
@dataclass
class _FoldOperator:
    """Prediction operator of one fold for every alpha (see module docstring).

    ``P0 = left @ (right @ Y[train])`` stacks the predictions of all alphas (without the
    intercept term); ``sums @ (right @ Y[train])`` gives, per alpha, the column sums
    ``1^T P0_a`` and ``c_a^T P0_a`` used for the intercept and the scores.
    """

    left: object  # (n_alpha * n_ev, k) in compute dtype
    right: object | None  # (k, n_tr) or None (then k == n_tr)
    sums: object  # (2 * n_alpha, k) in compute dtype
    c: np.ndarray  # (n_alpha, n_ev) float64: intercept weights c_a = 1 - M_a 1
    n_alpha: int
    n_ev: int


def _decompose(Xf: np.ndarray, tr: np.ndarray, ev: np.ndarray, fit_intercept: bool,
               kernel: np.ndarray | None = None):
    """Float64 pieces of ``M_a = A diag(1/(s+a)) B.T`` for one fold.

    Returns ``A`` (n_ev, r), ``B`` (n_tr, r) and ``s`` (r,), from the eigendecomposition
    of the centred covariance (primal form, ``p <= n_tr``) or of the centred kernel.
    """
    n_tr, p = len(tr), Xf.shape[1]
    if p <= n_tr:  # primal form: eigendecomposition of the p x p covariance
        Xtr = Xf[tr]
        mu = Xtr.mean(0) if fit_intercept else np.zeros(p)
        Xtr -= mu
        s, V = np.linalg.eigh(Xtr.T @ Xtr)
        A = (Xf[ev] - mu) @ V
        B = Xtr @ V
    else:  # kernel form: eigendecomposition of the n_tr x n_tr kernel
        if kernel is None:
            kernel = Xf @ Xf.T
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
        s, B = np.linalg.eigh(Ktt)
        A = Ket @ B
    return A, B, np.clip(s, 0.0, None)


def _factored(n_out: int, r: int, n_tr: int) -> bool:
    """Whether ``L @ (R @ Y)`` (r < n_tr) costs less than the direct ``(L R) @ Y``."""
    return r * n_tr + n_out * r < n_out * n_tr


def _build_operator(be, A, B, s, alphas, fit_intercept) -> _FoldOperator:
    n_ev, r = A.shape
    n_tr = B.shape[0]
    na = len(alphas)
    D = 1.0 / (s[None, :] + alphas[:, None])  # (na, r)
    bt1 = B.sum(0)  # B.T 1
    c = 1.0 - (A @ (D * bt1).T).T if fit_intercept else np.zeros((na, n_ev))
    AD = np.empty((na, n_ev, r), dtype=be.dtype if be.name == "numpy" else np.float64)
    for a in range(na):
        np.multiply(A, D[a], out=AD[a], casting="unsafe")
    AD = AD.reshape(na * n_ev, r)
    # per alpha: 1^T A_a D_a and c_a^T A_a D_a (rows of the "sums" operator)
    sums = np.concatenate([A.sum(0)[None, :] * D, (c @ A) * D], axis=0)
    if _factored(na * n_ev, r, n_tr):
        left, right = be.asarray(AD), be.asarray(B.T)
        sums = be.asarray(sums)
    else:
        Bt = be.asarray(B.T)
        left = be.matmul(be.asarray(AD), Bt)  # (na * n_ev, n_tr) in compute dtype
        sums = be.asarray(sums @ B.T)
        right = None
    return _FoldOperator(left, right, sums, c, na, n_ev)


def _refit_operator(be, A, B, s, alpha):
    """Test-prediction operator of one alpha: ``pred = left @ (right @ Y) + c * mean(Y)``."""
    n_te, r = A.shape
    AD = A / (s + alpha)
    c = 1.0 - AD @ B.sum(0)
    if _factored(n_te, r, B.shape[0]):
        return be.asarray(AD), be.asarray(B.T), c
    return be.asarray(AD @ B.T), None, c


# --------------------------------------------------------------------------- scoring
def _fold_scores(be, op: _FoldOperator, Ytr, Yev, out, score, fit_intercept):
    """Score every alpha on one voxel batch of one fold: (n_alpha, b) float64."""
    na, ne = op.n_alpha, op.n_ev
    Z = Ytr if op.right is None else be.matmul(op.right, Ytr)
    P = be.matmul(op.left, Z, out=out)  # (na * ne, b): all alphas' predictions
    w = P.shape[1]
    s2 = np.empty((na, w))
    s3 = np.empty((na, w))
    for a in range(na):
        Pa = P[a * ne : (a + 1) * ne]
        s2[a] = be.to_numpy(be.colsum_prod(Pa, Pa))
        s3[a] = be.to_numpy(be.colsum_prod(Pa, Yev))
    tail = be.to_numpy(be.matmul(op.sums, Z))
    s1, s4 = tail[:na], tail[na:]
    y = be.to_numpy(Yev)
    ybar_tr = be.to_numpy(Ytr.sum(0)) / Ytr.shape[0] if fit_intercept else np.zeros(w)
    return _scores_from_stats(op.c, s1, s2, s3, s4, ybar_tr, y, score)


def _scores_from_stats(c, s1, s2, s3, s4, ybar_tr, y, score):
    """Scores from the sufficient statistics of the predictions ``p = P0 + c ybar_tr``.

    ``s1 = 1^T P0``, ``s2 = sum P0^2``, ``s3 = sum P0 y``, ``s4 = c^T P0`` (each (na, b)).
    """
    n = y.shape[0]
    y_sum = y.sum(0)
    y_sq = (y**2).sum(0)
    sp = s1 + c.sum(1)[:, None] * ybar_tr
    spp = s2 + 2.0 * ybar_tr * s4 + (c**2).sum(1)[:, None] * ybar_tr**2
    spy = s3 + ybar_tr * (c @ y)
    ss_y = y_sq - y_sum**2 / n  # sum of squares of y around its mean
    with np.errstate(invalid="ignore", divide="ignore"):
        if score == "r":
            cov = spy - sp * y_sum / n
            var_p = spp - sp**2 / n
            out = cov / np.sqrt(np.clip(var_p, 0, None) * ss_y)
            return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        if score == "r2":
            out = 1.0 - (y_sq - 2.0 * spy + spp) / ss_y
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

    def __init__(self, be):
        self.be = be
        self._bufs: dict = {}

    def get(self, name, rows, cols):
        key = name
        buf = self._bufs.get(key)
        if buf is None or buf.shape[0] < rows or buf.shape[1] < cols:
            buf = self.be.empty((rows, cols))
            self._bufs[key] = buf
        return buf[:rows, :cols]


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
        Voxels per batch; by default chosen from ``memory_budget_mb``.
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
    Xf = np.asarray(X, dtype=np.float64)
    train, test = np.asarray(train), np.asarray(test)
    p = Xf.shape[1]
    kernel = Xf @ Xf.T if p > min(len(f.train) for f in inner_folds) else None
    na = len(alphas)
    itemsize = np.dtype(dtype).itemsize
    max_ev = max(max(len(f.test) for f in inner_folds), len(test))
    max_tr = max(max(len(f.train) for f in inner_folds), len(train))
    per_voxel = (max_tr + max_ev + na * max_ev) * itemsize
    b = voxel_batch or int(np.clip(memory_budget_mb * 2**20 // per_voxel, 64, 16384))
    b = min(b, V)
    batches = [(v0, min(V, v0 + b)) for v0 in range(0, V, b)]
    n_steps = (len(inner_folds) + 1) * len(batches)
    step = 0
    bufs = _Buffers(be)
    timings = {"decompose_s": 0.0}

    def tick(msg):
        nonlocal step
        step += 1
        if progress is not None:
            progress(step / n_steps, msg)

    def check_cancel():
        if cancel is not None and cancel():
            raise Cancelled()

    def load_rows(name, rows, v0, v1):
        out = bufs.get(name, len(rows), v1 - v0)
        if be.name == "numpy":
            return np.take(Y[:, v0:v1], rows, axis=0, out=out, mode="clip")
        be.copy_into(out, np.take(Y[:, v0:v1], rows, axis=0))
        return out

    # 1. inner CV: one decomposition per fold, all alphas scored per voxel batch
    scores = np.zeros((na, V))
    for k, f in enumerate(inner_folds):
        check_cancel()
        td = time.perf_counter()
        op = _build_operator(be, *_decompose(Xf, f.train, f.test, fit_intercept, kernel), alphas,
                             fit_intercept)
        timings["decompose_s"] += time.perf_counter() - td
        for v0, v1 in batches:
            check_cancel()
            Ytr = load_rows("tr", f.train, v0, v1)
            Yev = load_rows("ev", f.test, v0, v1)
            out = bufs.get("pred", na * op.n_ev, v1 - v0)
            scores[:, v0:v1] += _fold_scores(be, op, Ytr, Yev, out, score, fit_intercept)
            tick(f"ridge: inner fold {k + 1}/{len(inner_folds)}, voxels {v1}/{V}")
        del op
    scores /= len(inner_folds)
    best = np.argmax(scores, axis=0)
    best_alpha = alphas[best]
    cv_best = scores[best, np.arange(V)]

    # 2. refit on all training rows with each voxel's alpha; Pearson r on the test rows
    td = time.perf_counter()
    A_t, B_t, s_t = _decompose(Xf, train, test, fit_intercept, kernel)
    timings["decompose_s"] += time.perf_counter() - td
    refit_ops: dict[int, tuple] = {}
    test_r = np.zeros(V)
    for v0, v1 in batches:
        check_cancel()
        Ytr = load_rows("tr", train, v0, v1)
        yte = be.to_numpy(load_rows("ev", test, v0, v1))
        ybar = be.to_numpy(Ytr.sum(0)) / len(train) if fit_intercept else np.zeros(v1 - v0)
        bb = best[v0:v1]
        pred = np.empty((len(test), v1 - v0))
        for a in np.unique(bb):
            if a not in refit_ops:
                refit_ops[a] = _refit_operator(be, A_t, B_t, s_t, alphas[a])
            left, right, c_t = refit_ops[a]
            cols = np.flatnonzero(bb == a)
            Ysub = Ytr[:, be.index(cols)]
            Z = Ysub if right is None else be.matmul(right, Ysub)
            P0 = be.to_numpy(be.matmul(left, Z))
            if fit_intercept:
                P0 += c_t[:, None] * ybar[cols]
            pred[:, cols] = P0
        test_r[v0:v1] = pearson_r(pred, yte)
        tick(f"ridge: refit, voxels {v1}/{V}")
    timings.update(total_s=time.perf_counter() - t0, voxel_batch=b)
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
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> EncodingResult:
    """Outer leave-one-run-out (or contiguous blocks for a single run) encoding model.

    Parameters
    ----------
    X_runs : per run, ``(pad_before + T_i, d)`` word features on the TR grid; the first
        ``pad_before`` rows precede the run (they feed the FIR delays).
    Y_runs : per run, ``(T_i, V)`` cleaned, z-scored BOLD with finite, non-constant columns.
    delays : FIR delays in volumes.

    Features are z-scored on the training rows of every outer fold, then delayed. Alpha is
    chosen per voxel by inner CV on the training runs (leave one training run out, or
    contiguous blocks with a gap of ``max(delays)`` volumes when there is one run).
    """
    from .features import fir_delays

    n_runs = len(Y_runs)
    if len(X_runs) != n_runs:
        raise LesionAlignError(f"{len(X_runs)} feature runs for {n_runs} BOLD runs")
    lens = [Y.shape[0] for Y in Y_runs]
    for i, (X, T) in enumerate(zip(X_runs, lens)):
        if X.shape[0] != T + pad_before:
            raise LesionAlignError(
                f"run {i + 1}: {X.shape[0] - pad_before} feature rows for {T} volumes"
            )
    starts = np.r_[0, np.cumsum(lens)[:-1]]
    groups = np.repeat(np.arange(n_runs), lens)
    Y = np.concatenate(Y_runs, axis=0) if n_runs > 1 else np.asarray(Y_runs[0])
    gap = max(delays) if len(delays) else 0
    rows = np.arange(len(groups))
    if n_runs >= 2:
        outer = leave_one_group_out(groups)
        scheme = f"leave-one-run-out over {n_runs} runs"
    else:
        outer = contiguous_blocks(rows, n_blocks, gap=gap)
        scheme = f"{n_blocks} contiguous blocks, gap {gap} volumes"
    fold_r, fold_alpha = [], []
    t0 = time.perf_counter()
    for k, fold in enumerate(outer):
        train_runs = sorted(set(groups[fold.train].tolist()))
        # z-score on the training rows of this fold, then delay per run
        per_run_rows = [fold.train[groups[fold.train] == i] - starts[i] for i in range(n_runs)]
        Xz = _standardize_on(X_runs, [pad_before] * n_runs, per_run_rows)
        Xd = np.concatenate([fir_delays(x, delays, pad_before) for x in Xz], axis=0)
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

        res = ridge_cv(Xd, Y, fold.train, fold.test, inner, alphas, score=score, dtype=dtype,
                       backend=backend, progress=sub_progress, cancel=cancel)
        fold_r.append(res.test_r)
        fold_alpha.append(res.best_alpha)
    fold_r = np.stack(fold_r)
    return EncodingResult(fold_r.mean(0), fold_r, np.stack(fold_alpha), scheme,
                          {"seconds": time.perf_counter() - t0})
