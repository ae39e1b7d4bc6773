"""Reading and writing files: the one check before a file is opened, atomic writes, the
user cache, what identifies an input file, labels that become file names, paths of a
config file."""

from __future__ import annotations

import io
import os
import re
import stat
import tempfile
from pathlib import Path

import numpy as np

from .errors import LesionAlignError, WriteFailed


#: what a non-regular file is, by its stat type
_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def regular_file(path, what: str = "file", fix: str = "") -> Path:
    """``path`` when it is a regular, readable file; else one :class:`LesionAlignError`
    naming the path, what it is instead and ``fix`` (nothing is opened before the check,
    so a named pipe never blocks and a device is never read)."""
    p = Path(str(path)).expanduser()
    tail = f"; {fix}" if fix else ""
    try:
        st = p.stat()  # follows links: a link to a device is a device
    except FileNotFoundError:
        if p.is_symlink():
            raise LesionAlignError(f"{p}: file not found ({what}: a link to "
                                   f"{os.readlink(p)!r}, which does not exist){tail}") from None
        raise LesionAlignError(f"{p}: file not found ({what}){tail}") from None
    except OSError as err:  # e.g. a path through a file, a link loop, no permission
        raise LesionAlignError(f"{p}: cannot be reached ({what}: {err.strerror or err})"
                               f"{tail}") from None
    link = f" (a link to {os.readlink(p)!r})" if p.is_symlink() else ""
    if stat.S_ISDIR(st.st_mode):
        raise LesionAlignError(f"{p}: is a folder{link}, not a file ({what}); give the "
                               f"path of the file itself{tail}")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise LesionAlignError(f"{p}: is {kind}{link}, not a regular file ({what}); it is "
                               f"not read. Give the path of a file on disk{tail}")
    if not os.access(p, os.R_OK):
        raise LesionAlignError(f"{p}: cannot be read ({what}: permission denied); check "
                               f"its permissions{tail}")
    return p


def read_bytes(path, what: str = "file", fix: str = "") -> bytes:
    """The bytes of a regular file (:func:`regular_file`), read errors as one message."""
    p = regular_file(path, what, fix)
    try:
        return p.read_bytes()
    except OSError as err:
        raise LesionAlignError(f"{p}: cannot be read ({what}: {err.strerror or err})") from err


def read_text(path, what: str = "file", fix: str = "") -> str:
    """A regular file's text as UTF-8 (BOM removed), one message when it is not."""
    data = read_bytes(path, what, fix)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise LesionAlignError(f"{path}: {what} is not UTF-8 text (byte "
                               f"0x{data[err.start:err.start + 1].hex()} at position "
                               f"{err.start}); save it as UTF-8") from err


_LABEL = re.compile(r"[A-Za-z0-9]+")


def check_label(value: str, what: str) -> str:
    """BIDS-style labels: letters and digits only (they go into file names)."""
    value = str(value)
    if not _LABEL.fullmatch(value):  # (match: "$" also matches before a final newline)
        raise LesionAlignError(
            f"{what} label {value!r} must contain only letters and digits (it becomes part of "
            "the output file names); rename it in the config"
        )
    return value


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and os.replace."""
    path = Path(path)
    try:
        _atomic_write(path, data)
    except WriteFailed:
        raise
    except OSError as err:
        raise WriteFailed(
            f"{path}: cannot be written ({err.strerror or err}); make room on the disk or "
            "choose a folder you can write to, then run the same command again (finished "
            "units are kept)") from err


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_nifti(img, path: Path) -> None:
    """Save a nibabel image atomically (gzip when the name ends with .gz)."""
    import gzip

    buf = io.BytesIO()
    file_map = img.make_file_map({"image": buf, "header": buf})
    img.to_file_map(file_map)
    raw = buf.getvalue()
    if str(path).endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    atomic_write_bytes(path, raw)


def cache_dir() -> Path:
    """The user cache: ``$NAPARI_LESION_ALIGN_CACHE`` or ``~/.cache/napari-lesion-align``."""
    env = os.environ.get("NAPARI_LESION_ALIGN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "napari-lesion-align"


def file_identity(path: str) -> list:
    """``[path, size, mtime_ns]`` of an input file (a changed file reruns its unit)."""
    try:
        st = os.stat(path)
        return [str(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def resolve_path(path: str, base: Path) -> str:
    """``path`` (``~`` expanded) when absolute, else relative to ``base``."""
    p = Path(str(path)).expanduser()
    return str(p if p.is_absolute() else (base / p))


def json_default(x):
    """What ``json.dumps`` cannot write itself, as the records and result.json write it:
    numpy numbers as Python numbers, arrays as lists, paths as text."""
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
