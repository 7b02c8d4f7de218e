"""Final artefacts appear whole or not at all: written under a temporary name, then renamed.

A process killed while writing ``model.keras`` must not leave a 0-byte ``model.keras``
that the next command takes for the real one. Every final file or folder the trainer
writes goes through :func:`writing`: the caller writes to the temporary path it yields
(``NAME.tmp-<pid>.EXT`` in the same folder, so the rename stays within one filesystem or
bucket), and only a write that finished is renamed to the final name. Local and gs://.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator

import tensorflow as tf


def temporary_path(path: str) -> str:
    """``dir/name.tmp-<pid>.ext`` next to ``path``, every extension kept (Keras checks ``.weights.h5``)."""
    head, name = posixpath.split(path.rstrip("/"))
    stem, dot, ext = name.partition(".")
    temporary = f"{stem}.tmp-{os.getpid()}{dot}{ext}"
    return posixpath.join(head, temporary) if head else temporary


def _remove(path: str) -> None:
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


@contextlib.contextmanager
def writing(path: str) -> Iterator[str]:
    """Yields a temporary path to write ``path``'s file or folder to; renames it on success.

    On an exception the temporary file or folder is removed and ``path`` is left as it was.
    A folder replaces the old one by two renames (the old one is moved aside first, then
    deleted), so there is always a complete folder under one of the two names.
    """
    temporary = temporary_path(path)
    _remove(temporary)  # Left by an earlier process with the same pid.
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise
    if tf.io.gfile.isdir(temporary):
        old = None
        if tf.io.gfile.exists(path):
            old = temporary_path(path) + ".old"
            _remove(old)
            tf.io.gfile.rename(path, old)
        tf.io.gfile.rename(temporary, path)
        if old is not None:
            tf.io.gfile.rmtree(old)
    else:
        tf.io.gfile.rename(temporary, path, overwrite=True)


def write(path: str, content: str | bytes) -> None:
    """Writes ``content`` (text or bytes) to ``path`` through :func:`writing`."""
    with writing(path) as temporary, tf.io.gfile.GFile(temporary, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
