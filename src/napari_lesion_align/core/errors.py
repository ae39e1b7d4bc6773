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
