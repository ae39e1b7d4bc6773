"""Where importance scores live between their computation and the selections.

Importance scores have one float32 value per lesionable weight and language: 26 GB per
language for a 7B model. Held whole (``{language: {key: tensor}}``), three languages
would need 78 GB of host memory before the first selection is made. A selection only ever
needs one tensor of every language at a time (the top k % is taken per tensor), so the
scores of large models are written to disk one tensor at a time as they are computed
(:class:`ScoreStore` with a folder) and read back one tensor at a time when a selection
asks for it: the host memory of the scores is then a small multiple of the largest
tensor, whatever the model and the number of languages. Small models keep their scores
in memory (a store without a folder), as before.

The values are the same float32 numbers either way (``.npy`` files, read back exactly), so
a selection is the same lesion from a store on disk or in memory.

:func:`store_for` decides: on disk when the scores of all languages would take more than
:data:`SCORES_IN_MEMORY_BYTES`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..base.errors import LesionAlignError

#: the scores of all languages above which they are kept on disk, one file per tensor
#: (the percentile ranks a selection caches have the same bound, importance.RANK_CACHE_BYTES)
SCORES_IN_MEMORY_BYTES = 2 * 2**30

#: free disk space asked for beyond the scores themselves (other programs need some)
DISK_MARGIN_BYTES = 512 * 2**20


class _Language(Mapping):
    """The scores of one language: ``{key: tensor}``, each tensor read when asked for."""

    def __init__(self, store: "ScoreStore", language: str):
        self._store = store
        self._language = language

    def __getitem__(self, key: str):
        return self._store.get(self._language, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._store._keys[self._language])

    def __len__(self) -> int:
        return len(self._store._keys[self._language])


class ScoreStore(Mapping):
    """``{language: {key: tensor}}`` of importance scores, in memory or in a folder.

    ``folder=None``: in memory (the tensors handed to :meth:`put` are kept). With a
    folder: each tensor is written to ``<folder>/<language>/<key>.npy`` when it is put and
    read back (a fresh float32 tensor) each time it is asked for; nothing is kept in
    memory. A temporary folder (:meth:`temporary`) is removed by :meth:`close`, when the
    store is garbage collected, or at exit.
    """

    def __init__(self, folder: Path | None = None, remove: bool = False):
        self.folder = Path(folder) if folder is not None else None
        self._keys: dict[str, list[str]] = {}
        self._memory: dict[str, dict] = {}
        self._finalizer = None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            if remove:
                self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.folder),
                                                   True)

    @classmethod
    def temporary(cls, need_bytes: int = 0, parent: str | None = None) -> "ScoreStore":
        """A store in a new temporary folder (under ``parent``, default the system's
        temporary folder: ``TMPDIR``), removed when the store is closed; refused with the
        fix when that disk lacks ``need_bytes`` (plus a margin)."""
        base = Path(parent or tempfile.gettempdir())
        free = shutil.disk_usage(base).free
        if need_bytes and free < need_bytes + DISK_MARGIN_BYTES:
            raise LesionAlignError(
                f"{base}: the importance scores of this model need {need_bytes / 2**30:.1f} "
                f"GiB of disk while they are used, and {free / 2**30:.1f} GiB are free; set "
                "TMPDIR to a folder on a disk with more free space")
        return cls(Path(tempfile.mkdtemp(prefix="nla-scores-", dir=base)), remove=True)

    def beside(self, name: str) -> "ScoreStore":
        """Another store in a subfolder of this one's (removed with it), e.g. the
        percentile ranks of these scores."""
        if self.folder is None:
            return ScoreStore()
        return ScoreStore(self.folder / f"_{_safe(name)}")

    # ------------------------------------------------------------------ writing
    def put(self, language: str, key: str, tensor) -> None:
        """Keep ``tensor`` (the scores of ``key`` in ``language``); on disk, it is written
        now and not kept."""
        keys = self._keys.setdefault(language, [])
        if key not in keys:
            keys.append(key)
        if self.folder is None:
            self._memory.setdefault(language, {})[key] = tensor
            return
        arr = tensor.detach().cpu().numpy()
        path = self._path(language, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ reading
    def get(self, language: str, key: str):
        if language not in self._keys or key not in self._keys[language]:
            raise KeyError((language, key))
        if self.folder is None:
            return self._memory[language][key]
        import torch  # reason: torch is heavy; the core imports it where it computes

        return torch.from_numpy(np.load(self._path(language, key), allow_pickle=False))

    def __getitem__(self, language: str) -> Mapping:
        if language not in self._keys:
            raise KeyError(language)
        if self.folder is None:
            return self._memory[language]
        return _Language(self, language)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def _path(self, language: str, key: str) -> Path:
        return self.folder / _safe(language) / f"{_safe(key)}.npy"

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Remove a temporary folder now (the store is empty afterwards)."""
        if self._finalizer is not None:
            self._finalizer()
        self._keys.clear()
        self._memory.clear()

    @property
    def on_disk(self) -> bool:
        return self.folder is not None


def _safe(name: str) -> str:
    """A file name for a language code or a ``<block>.<role>`` key."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(name))


def scores_bytes(n_weights: int, n_languages: int) -> int:
    """The bytes of float32 scores of ``n_weights`` lesionable weights in ``n_languages``."""
    return 4 * int(n_weights) * int(n_languages)


def store_for(n_weights: int, n_languages: int) -> ScoreStore:
    """The store for weight scores of this size: in memory up to
    :data:`SCORES_IN_MEMORY_BYTES`, else a temporary folder on disk with room for the
    scores and their percentile ranks (float32 each, :meth:`ScoreStore.beside`)."""
    need = scores_bytes(n_weights, n_languages)
    if need <= SCORES_IN_MEMORY_BYTES:
        return ScoreStore()
    return ScoreStore.temporary(2 * need)
