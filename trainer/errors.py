"""The user mistakes trainer.task reports as one line ``error: …`` instead of a traceback.

Raise :class:`UsageError` (a flag or a flag combination; exit 2) or :class:`DataError`
(a file, a folder or their contents; exit 1) where the mistake is detected, with a message
that names the flag or file and says what to do; ``trainer.task.main`` prints it.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; ``exit_code`` is the command's exit status."""

    exit_code = 1


class UsageError(UserError, ValueError):
    """A flag, or a combination of flags, that cannot work (a ValueError to the API's callers)."""

    exit_code = 2


class DataError(UserError):
    """A missing, unreadable or inconsistent input file or folder."""

    exit_code = 1


class MissingFile(DataError, FileNotFoundError):
    """A file or folder the user named that does not exist (a FileNotFoundError to the API's callers)."""
