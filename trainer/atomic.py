"""The trainer's final artefacts appear whole or not at all: pipelines/atomic.py on tf.io.gfile.

A process killed while writing ``model.keras`` must not leave a 0-byte ``model.keras``
that the next command takes for the real one. Every final file or folder the trainer
writes goes through :func:`writing` or :func:`write`: facepipe's one temp-then-rename
writer (pipelines/atomic.py), with TensorFlow's filesystems for remote (gs://) paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import BinaryIO

import tensorflow as tf

from pipelines import atomic


class _GFile:
    """tf.io.gfile: the filesystems the trainer reads and writes (gs:// folders rename whole)."""

    exists = staticmethod(tf.io.gfile.exists)
    isdir = staticmethod(tf.io.gfile.isdir)
    remove = staticmethod(tf.io.gfile.remove)
    rmtree = staticmethod(tf.io.gfile.rmtree)

    @staticmethod
    def rename(source: str, target: str) -> None:
        tf.io.gfile.rename(source, target, overwrite=True)

    @staticmethod
    def create(path: str) -> BinaryIO:
        return tf.io.gfile.GFile(path, "wb")


GFILE: atomic.Files = _GFile()


@contextlib.contextmanager
def writing(path: str) -> Iterator[str]:
    """:func:`pipelines.atomic.writing` (the extension kept: Keras checks it)."""
    with atomic.writing(path, keep_extension=True, remote=GFILE) as temporary:
        yield temporary


def write(path: str, content: str | bytes) -> None:
    """:func:`pipelines.atomic.write`."""
    atomic.write(path, content, remote=GFILE)
