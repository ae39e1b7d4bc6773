"""One exception type for every error a user can cause.

The message says what is wrong (file, value) and how to fix it. The GUI shows it as a
notification, the CLI prints it on one line and exits with status 2.
"""

from __future__ import annotations


class LesionAlignError(Exception):
    """A problem with the user's input (file, value, option) with the fix in the message."""


class Cancelled(Exception):
    """Raised inside a running analysis when the caller asked to cancel."""
