"""Splits of the samples (TRs) for the ridge's cross-validation: outer and inner folds
(:class:`Fold`), leave one run out, contiguous blocks with a gap for a single run, and the
run-wise row reads (runs of consecutive rows copied slice by slice).

The FIR delays of the features live with the features (:func:`..features.extraction.fir_delays`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..base.errors import LesionAlignError


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
