"""Paths on any Beam or TensorFlow filesystem: one answer to "is this path local?"."""

from __future__ import annotations

import errno
import os
import stat

# Dead-letter reasons of listed paths that are not files to read (pipelines/dead_letters.py).
NOT_A_REGULAR_FILE = "not_a_regular_file"  # A FIFO, socket or device: reading it may block forever.
DANGLING_LINK = "dangling_link"  # A symbolic link to nothing (or to a loop of links).


def is_remote(path: str) -> bool:
    """True for a URL-style path on a remote filesystem (``gs://…``, ``s3://…``), false for a local one."""
    return "://" in path


def not_a_file_reason(path: str) -> str | None:
    """Why a local ``path`` is no file to read (DANGLING_LINK, NOT_A_REGULAR_FILE), or None.

    Checked before an image is opened: opening a FIFO blocks until something writes to it.
    Remote paths are objects, always files: None.
    """
    if is_remote(path):
        return None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return DANGLING_LINK if os.path.islink(path) else None  # Gone: the read says so.
    except OSError as e:
        return DANGLING_LINK if e.errno == errno.ELOOP else None  # Else the read reports it.
    return None if stat.S_ISREG(mode) else NOT_A_REGULAR_FILE
