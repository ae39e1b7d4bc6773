"""What the analysis keeps on disk: the feature store and the output folder's units.

:class:`FeatureStore` -- word features, content-addressed: the file name is a hash of
everything the features depend on (model weights and tokenizer, the lesion's masks, the
layer, the feature options, how the words are joined, and the words with their onsets and
sentence numbers). A second analysis that needs the same features reads them instead of
running the model again. It lives outside the output folder (the user cache by default,
``[compute] feature_store``), so several analyses share it.

:class:`OutputFolder` -- one output folder holds one analysis. ``units/analysis.json``
(written first) says which; every finished unit leaves a record in ``units/`` written after
its files, so a rerun of the same config skips it, and a different analysis is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..base.errors import LesionAlignError, WriteFailed
from ..base.io import atomic_write_bytes, atomic_write_text, cache_dir, json_default
from ..results.names import OWN_FILE_PATTERNS, OWN_FOLDERS
from ... import __version__
from ..features import extraction as _extraction
from .config import GROUP_KEYS, GROUP_TABLES

#: bump when feature extraction changes its output for the same inputs
FEATURES_VERSION = 1
#: the output folder's layout version
FOLDER_FORMAT = "napari-lesion-align analysis 1"
UNITS = "units"



def _digest(*parts) -> str:
    h = hashlib.blake2b(digest_size=20)
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def model_identity(weights_hash: str, tokenizer_hash: str) -> str:
    """What identifies a model's features: its weights and its tokenizer."""
    return f"{weights_hash}:{tokenizer_hash}"


def words_digest(words) -> str:
    """Identity of a run's words: the strings, onsets and sentence numbers."""
    parts = ["\x1f".join(words.words).encode(), np.asarray(words.onsets).tobytes()]
    if words.sentence_ids is not None:
        parts.append(np.asarray(words.sentence_ids).tobytes())
    return _digest(*parts)


class FeatureStore:
    """Word features on disk, one ``.npy`` file per (model, lesion, layer, options, words).

    ``root``: the folder (default ``$NAPARI_LESION_ALIGN_FEATURES``, else
    ``cache_dir() / "features"``).
    """

    def __init__(self, root: str | Path | None = None):
        root = root or os.environ.get("NAPARI_LESION_ALIGN_FEATURES")
        self.root = Path(root).expanduser() if root else cache_dir() / "features"

    @staticmethod
    def key(model_identity: str, condition_key: str, layer: int, opts, spaceless: bool,
            words) -> str:
        return _digest("features", FEATURES_VERSION, model_identity, condition_key, int(layer),
                       json.dumps(opts.model_dump(), sort_keys=True), bool(spaceless),
                       words_digest(words))

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> np.ndarray:
        p = self.path(key)
        try:
            return np.load(p, allow_pickle=False)
        except FileNotFoundError:
            raise LesionAlignError(f"{p}: features missing from the feature store") from None
        except (ValueError, OSError) as err:
            raise LesionAlignError(f"{p}: unreadable feature file ({err}); delete it and "
                                   "run again") from err

    def intact_features(self, lm, words, layer: int, opts, spaceless: bool) -> np.ndarray:
        """The intact model's word features of one run: read from the store, else
        extracted (and stored)."""
        key = self.key(model_identity(lm.weights_hash, lm.tokenizer_hash), "intact", layer,
                       opts, spaceless, words)
        if self.has(key):
            return self.load(key)
        wf = next(iter(_extraction.extract_word_features(lm.model, lm.tokenizer, list(words.words),
                                             [layer], opts, spaceless=spaceless,
                                             sentence_ids=words.sentence_ids).values()))
        self.save(key, wf)
        return wf

    def save(self, key: str, features: np.ndarray) -> Path:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(features, dtype=np.float32), allow_pickle=False)
        p = self.path(key)
        try:
            atomic_write_bytes(p, buf.getvalue())
        except OSError as err:
            raise LesionAlignError(f"{self.root}: cannot write to the feature store ({err}); "
                                   "set [compute] feature_store to a writable folder") from err
        return p


# --------------------------------------------------------------------------- output folder
def identity(config) -> dict:
    """What makes two runs the same analysis (``units/analysis.json``).

    ``fits``: a hash of everything that changes a unit's result (the config without its
    name, source, ``[compute]``, the tables' memory-only keys (a table's ``MEMORY_KEYS``:
    how many tokens a pass holds, not what comes out) and the group-level statistics keys,
    plus the package version); ``group``: a hash of the group-level keys (changing them
    only recomputes the group statistics).
    """

    d = config.to_dict()
    for k in ("name", "source", "compute"):
        d.pop(k, None)
    for name, f in type(config).model_fields.items():
        for k in getattr(f.annotation, "MEMORY_KEYS", ()):
            d.get(name, {}).pop(k, None)
    les = d.get("lesions", {})
    group = {k: les.pop(k, None) for k in GROUP_KEYS}
    group.update({t: d.pop(t, None) for t in GROUP_TABLES})
    return {"format": FOLDER_FORMAT, "version": __version__,
            "fits": _digest(json.dumps(d, sort_keys=True), __version__),
            "group": _digest(json.dumps(group, sort_keys=True)),
            "config": config.to_dict()}


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested dicts (for the refusal message)."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


class OutputFolder:
    """One analysis' output folder; its ``units/`` records make reruns resume.

    :meth:`open` claims it for one run: a lock (``units/.lock``) refuses a second run into
    the same folder while the first is running (released by :meth:`close`, or when the
    process ends, however it ends).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.units = self.root / UNITS
        self._lock = None

    def _take_lock(self) -> None:
        """Hold ``units/.lock`` (nothing written to it: :meth:`_sign_lock` does that once
        the run is accepted); refused while another run holds it."""
        try:
            import fcntl
        except ImportError:  # not on POSIX: no lock
            return
        path = self.units / ".lock"
        fh = open(path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            who = fh.read().strip()
            fh.close()
            raise LesionAlignError(
                f"{self.root}: another run is writing into this folder"
                + (f" (process {who})" if who else "")
                + "; wait for it to finish, or choose another output folder") from None
        self._lock = fh

    def _sign_lock(self) -> None:
        """Write this process' id into the held lock (named when a second run is refused)."""
        if self._lock is not None:
            self._lock.seek(0)
            self._lock.truncate()
            self._lock.write(str(os.getpid()))
            self._lock.flush()

    def close(self) -> None:
        """Release the folder (its lock)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @classmethod
    def open(cls, root, ident: dict, force: bool = False) -> "OutputFolder":
        """Open ``root`` for the analysis ``ident`` (:func:`identity`).

        A new or empty folder is claimed; a folder of the same analysis is resumed; a folder
        of another analysis is refused (``force``: its analysis files are deleted first);
        a non-empty folder that holds no analysis is refused (nothing of the user's is
        overwritten).
        """
        folder = cls(root)
        root = folder.root
        if root.exists() and not root.is_dir():
            raise LesionAlignError(f"{root}: exists and is not a folder; choose another --out")
        try:
            folder._claim(ident, force)
        except WriteFailed:
            folder.close()
            raise
        except OSError as err:
            folder.close()
            raise LesionAlignError(f"{root}: cannot write the output folder ({err}); choose a "
                                   "folder you can write to") from err
        except BaseException:
            folder.close()
            raise
        return folder

    def _claim(self, ident: dict, force: bool) -> None:
        """Claim the folder, or refuse it leaving it byte-identical (``units/`` and its lock
        included): the checks run before anything is written, and again once the lock is
        held (a run that claimed the folder in between); a refusal then takes back what
        this run made (the lock file, ``units/``, the folder)."""
        root, lock = self.root, self.units / ".lock"
        self._check(ident, force)  # read only
        made = [d for d in (root, self.units) if not d.exists()]
        self.units.mkdir(parents=True, exist_ok=True)
        new_lock = not lock.exists()
        try:
            self._take_lock()  # from here on, no other run changes the folder
        except BaseException:
            self._take_back(made, None)
            raise
        try:
            action = self._check(ident, force)
        except BaseException:
            self._take_back(made, lock if new_lock else None)
            raise
        self._sign_lock()
        if action == "clear":
            self.clear()
        elif action == "group":
            (root / "result.json").unlink(missing_ok=True)  # the group stage reruns
        self.remove_stale_writes()
        atomic_write_text(self.units / "analysis.json", json.dumps(ident, indent=2))

    def _check(self, ident: dict, force: bool) -> str | None:
        """Refuse another analysis' folder or a folder of the user's (nothing written);
        else what claiming it needs: ``"clear"`` (``force``), ``"group"`` (only the group
        statistics' options changed) or None."""
        root, marker = self.root, self.units / "analysis.json"
        if not root.exists():
            return None
        if not self.units.is_dir():
            if any(root.iterdir()):
                self._refuse_foreign()
            return None
        if marker.is_file():
            try:
                old = json.loads(marker.read_text())
            except ValueError:
                old = {}
            if not isinstance(old, dict):
                old = {}
            if old.get("fits") != ident["fits"]:
                if not force:
                    keys = _diff(old.get("config") or {}, ident["config"])
                    keys = [k for k in keys if not k.startswith(("name", "source", "compute"))]
                    what = (f" (differs in {', '.join(keys[:6])}"
                            f"{', ...' if len(keys) > 6 else ''})" if keys else "")
                    if not keys and old.get("version") != ident["version"]:
                        what = (f" (made by napari-lesion-align {old.get('version')}; this "
                                f"is {ident['version']})")
                    raise LesionAlignError(
                        f"{root}: holds another analysis{what}; choose another output folder, "
                        "or rerun with --force to delete its results and start again")
                return "clear"
            return "group" if old.get("group") != ident["group"] else None
        if [p for p in root.iterdir() if p.name != UNITS and not _stale_tmp(p)]:
            self._refuse_foreign()
        return None

    def _take_back(self, made: list, lock: Path | None) -> None:
        """After a refusal: release the lock, delete the lock file this run made (only
        while it held it) and the empty folders it made."""
        if lock is not None:
            lock.unlink(missing_ok=True)
        self.close()
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:  # not empty (another run's files): not ours to delete
                pass

    def remove_stale_writes(self) -> int:
        """Delete the temporary files of writes interrupted by a kill (``atomic_write_*``:
        ``.<name>.*.tmp``), e.g. of a Dask worker killed while it wrote a map. Only while
        no unit of this run writes: when the folder is opened (the lock held) and when
        every unit is done. Returns how many were deleted."""
        stale = [p for p in list(self.root.glob(".*.tmp")) + list(self.units.rglob(".*.tmp"))
                 if _stale_tmp(p)]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    def _refuse_foreign(self) -> None:
        what = ("a result of an earlier version (no units/ folder)"
                if (self.root / "result.json").exists() else "files of its own")
        raise LesionAlignError(
            f"{self.root}: is not empty and holds {what}; choose a new or empty output folder "
            "(nothing in it is overwritten)")

    def clear(self) -> None:
        """Delete this analysis' files: every file its unit records list, the group files
        and ``units/`` (nothing else)."""
        for pattern in OWN_FILE_PATTERNS:
            for p in self.root.glob(pattern):
                if p.is_file():
                    p.unlink()
        for name in OWN_FOLDERS:  # the report of the analysis deleted
            if (self.root / name).is_dir():
                shutil.rmtree(self.root / name)
        for p in self.units.iterdir() if self.units.is_dir() else ():
            if p.name == ".lock":  # held by this run
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    # ------------------------------------------------------------------ records
    def record_path(self, stage: str, name: str) -> Path:
        return self.units / stage / f"{name}.json"

    def read_record(self, stage: str, name: str) -> dict | None:
        p = self.record_path(stage, name)
        try:
            return json.loads(p.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def fit_done_with(self, name: str, data_inputs) -> dict | None:
        """The fit record of unit ``name`` when it was made from the data files
        ``data_inputs`` (the source's ``inputs(subject, language)``), else ``None``."""
        try:
            rec = self.read_record("fit", name)
        except OSError:  # e.g. a folder in the record's place: not done
            return None
        if not isinstance(rec, dict) or (rec.get("inputs") or {}).get("data") != \
                as_recorded(data_inputs):
            return None
        return rec

    def write_record(self, stage: str, name: str, record: dict) -> None:
        atomic_write_text(self.record_path(stage, name),
                          json.dumps(record, indent=2, default=json_default))


def _stale_tmp(p: Path) -> bool:
    """A temporary file of :func:`~.result.atomic_write_bytes` left by a kill."""
    return p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()


def as_recorded(x):
    """``x`` as it reads back from a record (a JSON round trip: tuples become lists)."""
    return json.loads(json.dumps(x, default=json_default))


