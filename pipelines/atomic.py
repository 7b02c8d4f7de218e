"""Files and folders appear whole or not at all: written under a temporary name beside them, then renamed.

The one temp-then-rename writer of facepipe: the pipeline (manifest, decode-cache entries),
the review tool (its CSVs), the demo's files and the trainer (model, export, records) all
write through :func:`writing` or :func:`write`. A process killed mid-write leaves the old
file (or none) under the final name, never a half-written one, and its temporary beside it:

  ``.NAME.facepipe-<16 hex>.tmp`` (``keep_extension``: ``.NAME.facepipe-<16 hex>.tmp.EXT``,
  for writers that check the extension, e.g. Keras' ``model.save``)

in the same folder, so that the rename stays within one filesystem or bucket. Only names
of that form are facepipe's temporaries (:func:`final_name`, :func:`is_temporary`, :func:`remove_leftovers`).

Local paths: the file is fsynced before the rename and its folder after it (the write
survives a power cut; ``durable=False`` skips both), and a replaced file's mode is kept. Remote paths (``gs://``...)
go through a :class:`Files` of the caller's filesystem: Beam's by default; the trainer
passes tf.io.gfile's (trainer/atomic.py).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from pipelines.paths import is_remote

TEMP_INFIX = ".facepipe-"
TEMP_SUFFIX = ".tmp"


class Files(Protocol):
    """The few filesystem operations a temp-then-rename write needs."""

    def exists(self, path: str) -> bool: ...
    def isdir(self, path: str) -> bool: ...
    def remove(self, path: str) -> None: ...  # A file.
    def rmtree(self, path: str) -> None: ...  # A folder.
    def rename(self, source: str, target: str) -> None: ...  # A file replaces ``target``.
    def create(self, path: str) -> BinaryIO: ...  # A new file (and its folder), open for writing bytes.


class _Local:
    """The local filesystem, with fsyncs and the replaced file's mode kept."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    remove = staticmethod(os.unlink)
    rmtree = staticmethod(shutil.rmtree)

    @staticmethod
    def create(path: str) -> BinaryIO:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # As Beam's create does.
        return open(path, "wb")

    @staticmethod
    def rename(source: str, target: str) -> None:
        if os.path.isfile(source):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(source, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(source, target)


class _Beam:
    """Any Beam filesystem (gs://, s3://, ...): what the pipeline writes remote outputs with."""

    @staticmethod
    def _fs():
        from apache_beam.io.filesystems import FileSystems  # Here: the review and the demo never need Beam.

        return FileSystems

    def exists(self, path: str) -> bool:
        return self._fs().exists(path)

    def isdir(self, path: str) -> bool:
        return False  # Object stores have no folders to swap; only files are written there.

    def remove(self, path: str) -> None:
        self._fs().delete([path])

    def rmtree(self, path: str) -> None:
        self._fs().delete([path])

    def create(self, path: str) -> BinaryIO:
        from apache_beam.io.filesystems import CompressionTypes

        return self._fs().create(path, compression_type=CompressionTypes.UNCOMPRESSED)

    def rename(self, source: str, target: str) -> None:
        fs = self._fs()
        if fs.exists(target):
            fs.delete([target])  # Beam's rename does not replace (a local one would fail).
        fs.rename([source], [target])


LOCAL: Files = _Local()
BEAM: Files = _Beam()


def _fsync(path: str) -> None:
    """Flushes a local file, or a folder's entries (a rename), to the disk; a no-op where a folder cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _extension(name: str) -> str:
    """Every extension of a file name (``.weights.h5``: Keras checks the whole of it)."""
    dot = name.find(".", 1)
    return name[dot:] if dot > 0 else ""


def temporary_path(path: str, *, keep_extension: bool = False) -> str:
    """``dir/.NAME.facepipe-<16 hex>.tmp`` beside ``path`` (``keep_extension``: ``….tmp.EXT``)."""
    head, name = posixpath.split(path.rstrip("/"))
    extension = _extension(name) if keep_extension else ""
    temporary = f".{name}{TEMP_INFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}{extension}"
    return posixpath.join(head, temporary) if head else temporary


# What temporary_path names: .FINAL.facepipe-<16 hex>.tmp[.EXT], EXT the final name's extension.
_TEMPORARY_NAME = re.compile(
    r"\.(?P<final>.+)" + re.escape(TEMP_INFIX) + r"[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + r"(?P<extension>.*)"
)


def final_name(name: str) -> str | None:
    """The final file name the file name ``name`` is a :func:`temporary_path` of; None when it is none."""
    found = _TEMPORARY_NAME.fullmatch(name)
    if found is None or found["extension"] not in ("", _extension(found["final"])):
        return None
    return found["final"]


def is_temporary(name: str, of: str) -> bool:
    """Whether the file name ``name`` is one of :func:`temporary_path`'s for the final name ``of``."""
    return final_name(name) == posixpath.basename(of.rstrip("/"))


def remove_leftovers(path: str) -> int:
    """Removes the temporary files an interrupted write of the local file ``path`` left beside it; their count.

    Only files named as :func:`temporary_path` names them for ``path`` are removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return 0
    removed = 0
    for entry in os.scandir(folder):
        if is_temporary(entry.name, path) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed += 1
    return removed


def _files(path: str, remote: Files | None) -> Files:
    if not is_remote(path):
        return LOCAL
    return remote or BEAM


def _remove(files: Files, path: str) -> None:
    if files.isdir(path):
        files.rmtree(path)
    elif files.exists(path):
        files.remove(path)


@contextlib.contextmanager
def writing(
    path: str, *, keep_extension: bool = False, durable: bool = True, remote: Files | None = None
) -> Iterator[str]:
    """Yields a temporary path to write ``path``'s file or folder to; renames it to ``path`` on success.

    On an exception the temporary file or folder is removed and ``path`` is left as it was.
    A folder replaces the old one by two renames (the old one is moved aside first, then
    deleted), so there is always a complete folder under one of the two names.
    ``durable`` False: no fsyncs (a file that can be made again, e.g. a cache entry, where
    one fsync per file would cost more than the work it saves). ``remote``: the
    filesystem of a remote ``path`` (default: Beam's).
    """
    files = _files(path, remote)
    temporary = temporary_path(path, keep_extension=keep_extension)
    try:
        yield temporary
    except BaseException as e:
        _remove(files, temporary)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, "", temporary):
            # A write on a full disk names no file, a failed open the temporary: say which file.
            raise OSError(e.errno, e.strerror, path) from e
        raise
    folder = files.isdir(temporary)
    if durable and files is LOCAL and not folder:
        _fsync(temporary)
    old = None
    try:
        if folder and files.exists(path):
            old = temporary_path(path)
            files.rename(path, old)
        files.rename(temporary, path)
    except OSError as e:  # A folder where the file goes, a read-only folder, ...: said of ``path``.
        _remove(files, temporary)
        if old is not None:
            files.rename(old, path)  # The old folder back under its name.
        raise OSError(e.errno, e.strerror, path) from e
    if old is not None:
        files.rmtree(old)
    if durable and files is LOCAL:
        _fsync(os.path.dirname(os.path.abspath(path)))


def write(path: str, content: str | bytes, *, durable: bool = True, remote: Files | None = None) -> None:
    """Writes ``content`` (text as UTF-8, or bytes) to ``path`` through :func:`writing`."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    with writing(path, durable=durable, remote=remote) as temporary, _files(path, remote).create(temporary) as f:
        f.write(data)
