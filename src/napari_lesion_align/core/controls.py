"""Baseline feature sets that tell whether a model's alignment is more than chance.

* :func:`circular_shift` -- the model's own TR features rotated in time: same features,
  same autocorrelation, wrong alignment with the BOLD (a null distribution).
* :func:`shuffled_words` -- the word vectors given to other words' onsets: same word rate
  and feature distribution, no content at the right time.
* :func:`word_rate` -- the number of words per volume alone (what a model must beat).
"""

from __future__ import annotations

import numpy as np

from .features import words_to_trs


def circular_shift(X: np.ndarray, shift: int, pad_before: int = 0) -> np.ndarray:
    """Rotate the run's rows (after the ``pad_before`` history rows) by ``shift`` volumes."""
    out = np.array(X, copy=True)
    out[pad_before:] = np.roll(X[pad_before:], shift, axis=0)
    out[:pad_before] = 0.0
    return out


def shift_amounts(n_vols: int, n_shifts: int = 5, lo: float = 0.2, hi: float = 0.8) -> list[int]:
    """Evenly spaced shifts between ``lo`` and ``hi`` of the run length (far from 0)."""
    return [int(round(f * n_vols)) for f in np.linspace(lo, hi, n_shifts)]


def shuffled_words(word_vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """The word vectors in a random order (each onset gets another word's vector)."""
    rng = np.random.default_rng(seed)
    return np.asarray(word_vectors)[rng.permutation(len(word_vectors))]


def word_rate(onsets: np.ndarray, n_vols: int, tr: float, start_s: float = 0.0,
              pad_before: int = 0) -> np.ndarray:
    """Words per volume, ``(pad_before + n_vols, 1)`` (floor(onset / TR) binning)."""
    onsets = np.asarray(onsets, dtype=float)
    idx = np.floor((onsets - start_s) / tr).astype(int) + pad_before
    ok = (idx >= 0) & (idx < n_vols + pad_before)
    counts = np.bincount(idx[ok], minlength=n_vols + pad_before).astype(np.float32)
    return counts[:, None]


__all__ = ["circular_shift", "shift_amounts", "shuffled_words", "word_rate", "words_to_trs"]
