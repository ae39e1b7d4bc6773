"""Nulls and baselines fitted next to the intact model (``[controls]``).

A model's alignment means something only next to what chance and trivial features give:

* **nullShift** -- the model's own TR features circularly shifted in time within each run
  (:func:`circular_shift`, ``shifts`` amounts evenly spaced between 20 % and 80 % of the
  run, :func:`shift_amounts`): the same features and autocorrelation, the wrong timing. Its
  r map is the mean over the shifts. Cheap: the features are the model's.
* **nullShuffled** -- the word vectors given to other words of the same run
  (:func:`shuffled_words`, seeded): the same onsets and word rate, no content at the right
  time.
* **wordRate** -- the number of words per volume alone (:func:`word_rate`), one feature:
  what a model must beat.
* **aboveWordRate** -- the model fitted to the BOLD with the word rate regressed out as a
  nuisance regressor (:func:`word_rate_regressors`): at the same FIR delays as the features,
  made orthogonal to the run's cleaning regressors and projected out of each run like a
  confound (with a single run, also out of each outer fold's training rows, as the cleaning
  regressors are: :func:`.encoding.cross_validated_r`). Its r is what the model predicts
  that the word rate does not.

Each control has r maps per subject and language, and a group test per voxel (paired
one-sided t-test across subjects, FDR): ``intact > control`` for the nulls and the word
rate ("the model above this control"), ``r > 0`` for aboveWordRate. :data:`CONTROL_LABELS`
owns the labels (no lesion may take them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..lesions.vocabulary import CONTROL_LABELS
from ..features.extraction import fir_delays


@dataclass(frozen=True)
class ControlSpec:
    """One control of an analysis: its label, kind, group test and what it means."""

    label: str
    kind: str  # "shift" | "shuffled" | "wordrate" | "above"
    #: "model>control": paired t-test intact > control; "positive": one-sample r > 0
    test: str
    meaning: str
    n_shifts: int = 0

    def describe(self) -> dict:
        return {"label": self.label, "kind": self.kind, "test": self.test,
                "meaning": self.meaning, **({"shifts": self.n_shifts} if self.n_shifts else {})}


def control_specs(cfg) -> list[ControlSpec]:
    """The controls a ``[controls]`` table (:class:`~.config.ControlsConfig`) asks for, in
    the order they are fitted (aboveWordRate last: it changes the BOLD in place)."""
    if cfg is None or not cfg.enabled:
        return []
    out = []
    if cfg.shifts:
        out.append(ControlSpec(CONTROL_LABELS["shifts"], "shift", "model>control",
                               f"the model's features circularly shifted in time ({cfg.shifts} "
                               "shifts, mean r): a null", cfg.shifts))
    if cfg.shuffled_words:
        out.append(ControlSpec(CONTROL_LABELS["shuffled_words"], "shuffled", "model>control",
                               "the word vectors shuffled across the words of each run (same "
                               "onsets): a null"))
    if cfg.word_rate:
        out.append(ControlSpec(CONTROL_LABELS["word_rate"], "wordrate", "model>control",
                               "the number of words per volume alone: a baseline"))
    if cfg.above_word_rate:
        out.append(ControlSpec(CONTROL_LABELS["above_word_rate"], "above", "positive",
                               "the model fitted to the BOLD with the word rate regressed out: "
                               "what the model predicts beyond the word rate"))
    return out


def circular_shift(X: np.ndarray, shift: int, pad_before: int = 0) -> np.ndarray:
    """Rotate the run's rows (after the ``pad_before`` history rows) by ``shift`` volumes;
    the history rows become zeros (they would otherwise carry the true timing)."""
    out = np.array(X, copy=True)
    out[pad_before:] = np.roll(X[pad_before:], shift, axis=0)
    out[:pad_before] = 0.0
    return out


def shift_amounts(n_vols: int, n_shifts: int = 5, lo: float = 0.2, hi: float = 0.8) -> list[int]:
    """Evenly spaced shifts between ``lo`` and ``hi`` of the run length (far from 0)."""
    return [int(round(f * n_vols)) for f in np.linspace(lo, hi, n_shifts)]


def shuffled_words(word_vectors: np.ndarray, seed=0) -> np.ndarray:
    """The word vectors in a random order (each onset gets another word's vector)."""
    rng = np.random.default_rng(seed)
    return np.asarray(word_vectors)[rng.permutation(len(word_vectors))]


def word_rate(onsets: np.ndarray, n_vols: int, tr: float, start_s: float = 0.0,
              pad_before: int = 0) -> np.ndarray:
    """Words per volume, ``(pad_before + n_vols, 1)`` (floor(onset / TR) binning, the
    binning of :func:`~.features.words_to_trs` with ``downsample = "floor"``)."""
    onsets = np.asarray(onsets, dtype=float)
    idx = np.floor((onsets - start_s) / tr).astype(int) + pad_before
    ok = (idx >= 0) & (idx < n_vols + pad_before)
    counts = np.bincount(idx[ok], minlength=n_vols + pad_before).astype(np.float32)
    return counts[:, None]


def word_rate_regressors(rate: np.ndarray, delays, pad_before: int, cleaning: np.ndarray,
                         keep: np.ndarray | None = None) -> np.ndarray:
    """The word rate as nuisance regressors of one run: ``rate`` (:func:`word_rate`) at the
    FIR ``delays``, at the kept volumes, made orthogonal to the run's ``cleaning``
    regressors (:func:`~.bold.cleaning_regressors`, at the kept volumes) and orthonormal.

    Projecting a cleaned run off these columns gives the run cleaned of the drifts, the
    confounds *and* the word rate together (the cleaned run is already orthogonal to
    ``cleaning``). Columns without variance left are dropped.
    """
    W = fir_delays(np.asarray(rate, dtype=np.float64), list(delays), pad_before)
    if keep is not None:
        W = W[np.asarray(keep, dtype=bool)]
    D = np.column_stack([np.ones(len(W)), np.asarray(cleaning, dtype=np.float64)])
    W = W - D @ np.linalg.lstsq(D, W, rcond=None)[0]
    U, s, _ = np.linalg.svd(W, full_matrices=False)
    return U[:, s > 1e-8 * max(1.0, s.max(initial=0.0))]


def project_out(Y: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """``Y - Q (Q^T Y)`` for orthonormal columns ``Q`` (in ``Y``'s dtype)."""
    Q = Q.astype(Y.dtype, copy=False)
    return Y - Q @ (Q.T @ Y)


#: the word rate's features (the wordRate baseline's, and aboveWordRate's nuisance)
WORD_RATE = ControlSpec(CONTROL_LABELS["word_rate"], "wordrate", "model>control",
                        "the number of words per volume")
