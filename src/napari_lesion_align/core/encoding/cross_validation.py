"""Cross-validation of the ridge: one alpha per voxel chosen by inner CV
(:func:`ridge_cv`), and the outer loop over runs or blocks of one subject's data
(:func:`cross_validated_r`).

Folds are the outer loop of :func:`ridge_cv` (one operator of :mod:`.solver` lives at a
time) and voxels are processed in batches through reused buffers, so that memory stays
bounded whatever their number; the default batch keeps one batch's predictions (all
alphas) in the CPU cache between the product that writes them and the scoring passes that
read them, so predictions never leave the batch buffer. The refit on all training rows
groups the voxels of a batch by their chosen alpha.

With ``fit_intercept=True`` (default) the result equals scikit-learn's
``Ridge(alpha, fit_intercept=True)`` fitted on the same rows, for every alpha.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..base.errors import Cancelled, LesionAlignError
from ..features.extraction import fir_delays
from .backends import get_backend
from .solver import (_build_operator, _decompose, _decompose_kernel, _factored, _fold_scores,
                     _kernel64, _kernel_blocks, _refit_operators, pearson_r)
from .splits import Fold, _gather_rows, _row_runs, contiguous_blocks, leave_one_group_out

#: The paper's alpha grid.
DEFAULT_ALPHAS = np.logspace(0, 19, 20)

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


# --------------------------------------------------------------------------- one split
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


def _alpha_indices(alphas: np.ndarray, alpha, V: int) -> np.ndarray:
    """Per voxel, the index in ``alphas`` of the given alpha (each must be one of them)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.shape != (V,):
        raise LesionAlignError(f"{alpha.shape} given alphas for {V} voxels: give one per voxel")
    idx = np.argmin(np.abs(np.log(alphas)[:, None] - np.log(np.maximum(alpha, 1e-300))),
                    axis=0)
    if not np.allclose(alphas[idx], alpha, rtol=1e-9, atol=0):
        bad = alpha[~np.isclose(alphas[idx], alpha, rtol=1e-9, atol=0)][:3]
        raise LesionAlignError(f"given alphas {bad.tolist()} are not among the alphas searched "
                               f"({alphas.tolist()}): give alphas chosen from the same list")
    return idx


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
    alpha: np.ndarray | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> RidgeResult:
    """Choose one alpha per voxel by inner CV on ``train``; refit; Pearson r on ``test``.

    With ``alpha`` (one value of ``alphas`` per voxel, e.g. chosen for another feature set
    of the same BOLD) the inner search is skipped: one refit per voxel with that alpha
    (``cv_best`` is then NaN).

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
    if alpha is not None:
        best = _alpha_indices(alphas, alpha, V)
        inner_folds = ()
    min_train = min([len(f.train) for f in inner_folds] + [len(train)])
    kernel = _kernel64(X) if p > min_train else None
    na = len(alphas)
    itemsize = np.dtype(dtype).itemsize
    max_ev = max([len(f.test) for f in inner_folds] + [len(test)])
    max_tr = max([len(f.train) for f in inner_folds] + [len(train)])
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
    scores = np.zeros((na, V)) if alpha is None else None
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
    if alpha is None:
        scores /= len(inner_folds)
        best = np.argmax(scores, axis=0)
        cv_best = scores[best, np.arange(V)]
    else:
        cv_best = np.full(V, np.nan)
    best_alpha = alphas[best]

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
    fold_alphas: np.ndarray | None = None,
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
    fold_alphas : ``(n_outer_folds, n_voxels)`` alphas (values of ``alphas``), e.g. the
        ``best_alpha`` of another feature set's fit of the same BOLD and folds: each outer
        fold refits with them and skips its inner search (:func:`ridge_cv`'s ``alpha``).

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
    if fold_alphas is not None and np.shape(fold_alphas) != (len(outer), Y.shape[1]):
        raise LesionAlignError(f"alphas of shape {np.shape(fold_alphas)} given for "
                               f"{len(outer)} outer folds x {Y.shape[1]} voxels")
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
                       backend=backend, progress=sub_progress, cancel=cancel,
                       alpha=None if fold_alphas is None else fold_alphas[k])
        del Yk
        fold_r.append(res.test_r)
        fold_alpha.append(res.best_alpha)
    fold_r = np.stack(fold_r)
    return EncodingResult(fold_r.mean(0), fold_r, np.stack(fold_alpha), scheme,
                          {"seconds": time.perf_counter() - t0})
