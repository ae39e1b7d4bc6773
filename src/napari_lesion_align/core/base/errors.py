"""One exception type for every error a user can cause.

The message says what is wrong (file, value) and how to fix it. The GUI shows it as a
notification, the CLI prints it on one line and exits with status 2.
"""

from __future__ import annotations


class LesionAlignError(Exception):
    """A problem with the user's input (file, value, option) with the fix in the message."""


class WriteFailed(LesionAlignError, OSError):
    """A file could not be written (disk full, quota, file size limit, permissions): a
    user's error with its one-line message, and still an ``OSError`` for callers that
    catch those."""


class Cancelled(Exception):
    """Raised inside a running analysis when the caller asked to cancel."""


class UnitFailed(LesionAlignError):
    """A unit of the analysis failed: which one (``units``: e.g. ``sub-02_lang-EN``; the
    subjects fitted together), at which condition, and why. The other units go on."""

    def __init__(self, message: str, units: tuple = (), condition: str | None = None):
        super().__init__(message)
        self.units = tuple(units)
        self.condition = condition

    def __reduce__(self):  # travels between processes (Dask workers) intact
        return type(self), (str(self), self.units, self.condition)


def unit_failed(units, condition, err: BaseException) -> UnitFailed:
    """A :class:`UnitFailed` naming the units, the condition and the original error."""
    what = ", ".join(units) + (f" (condition {condition})" if condition else "")
    msg = str(err) if isinstance(err, LesionAlignError) else f"{type(err).__name__}: {err}"
    return UnitFailed(f"{what}: {msg}", tuple(units), condition)


class InputError(LesionAlignError):
    """A problem at one place of one input file: an annotation's interval or line, a table's
    row, a volume of an image. The message names the file, the place, the problem and the
    fix (:func:`input_error` formats it: the one rule for every such message); ``file`` and
    ``where`` stay readable for callers (e.g. a GUI that points at the file)."""

    def __init__(self, message: str, file: str = "", where: str = ""):
        super().__init__(message)
        self.file = str(file)
        self.where = str(where)

    def __reduce__(self):  # travels between processes (Dask workers) intact
        return type(self), (str(self), self.file, self.where)


def input_error(file, where: str, problem: str, fix: str = "") -> InputError:
    """The error for ``problem`` at ``where`` in ``file`` with its ``fix``:
    ``"<file name>: <where>: <problem>. <fix>."``.

    ``where`` names the place a user finds in the file: ``"line 12"``, ``"tier 'words',
    interval [5] (12.3-12.5 s)"``, ``"volume 40 (80 s)"``; empty for the whole file.
    """
    from pathlib import Path

    name = Path(str(file)).name or str(file)
    text = f"{name}: {where}: {problem}" if where else f"{name}: {problem}"
    text = text.rstrip(" .")
    if fix:
        text += ". " + fix[0].upper() + fix[1:].rstrip(" .")
    return InputError(text + ".", str(file), where)


def describe_chars(text: str) -> str:
    """The code points of a short string, named: ``U+200B ZERO WIDTH SPACE`` (for words that
    look empty)."""
    import unicodedata

    return ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}" for c in text[:6]) \
        + (", ..." if len(text) > 6 else "")
