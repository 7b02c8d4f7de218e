"""One writer at a time: a lock file naming its holder in every output and job directory.

A run that writes a directory (preprocess's ``--output``, the trainer's ``--job_dir``)
holds ``.facepipe_lock`` there for as long as it runs. A second writer is refused with one
line naming the holder (host, PID, command, since when). The lock is the kernel's
``flock`` on that file, so it ends with the process however it ends (SIGKILL included): a
lock file left by a dead process is taken over, with one log line naming it. On a remote
filesystem (gs://), which has no such lock, the file itself is the lock, and one left by a
process of this host that is no longer running is taken over.

Beam- and TensorFlow-free: both packages and their command lines use it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from pipelines.cli import UsageError
from pipelines.paths import is_remote

LOCK_FILE = ".facepipe_lock"


class LockedError(UsageError):
    """Another run holds the directory's lock (exits 2 as a usage error; ``str()`` is one line)."""


def _holder() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:300],
        "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (its lock file is being written)"
    return f"PID {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} ({holder.get('command')})"


def _parse(text: str) -> dict[str, Any] | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _running_here(holder: dict[str, Any] | None) -> bool:
    """Whether ``holder`` is a process of this host that is still running."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, ValueError, TypeError, KeyError):
        return False
    except PermissionError:
        return True  # Running, as another user.
    return True


def _refusal(directory: str, holder: dict[str, Any] | None) -> LockedError:
    return LockedError(
        f"{directory} is being written by {_describe(holder)}: wait for it to finish, or use another directory"
    )


@contextlib.contextmanager
def _local(directory: str) -> Iterator[None]:
    created = not os.path.isdir(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with os.fdopen(fd) as f:
                raise _refusal(directory, _parse(f.read())) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # The holder removed the file as we opened it: lock the new one.
    try:
        earlier = _parse(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))
        if earlier:
            logging.warning("%s: taking over the lock of %s, which is no longer running", path, _describe(earlier))
        content = json.dumps(_holder()).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, content, 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # Before the unlock: a waiting process then finds the file gone and retries.
        os.close(fd)
        if created and not os.listdir(directory):
            os.rmdir(directory)  # Made for the lock by a run that wrote nothing.


@contextlib.contextmanager
def _remote(directory: str) -> Iterator[None]:
    from apache_beam.io.filesystems import FileSystems

    path = FileSystems.join(directory, LOCK_FILE)
    if FileSystems.exists(path):
        with FileSystems.open(path) as f:
            earlier = _parse(f.read().decode("utf-8", "replace"))
        same_host = earlier is not None and earlier.get("host") == socket.gethostname()
        if not same_host or _running_here(earlier):
            raise _refusal(directory, earlier)
        logging.warning("%s: taking over the lock of %s, which is no longer running", path, _describe(earlier))
    mine = _holder()
    with FileSystems.create(path) as f:
        f.write(json.dumps(mine).encode("utf-8"))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            FileSystems.delete([path])


@contextlib.contextmanager
def held(directory: str) -> Iterator[None]:
    """Holds ``directory``'s lock (creating the directory) while the block runs; LockedError when taken."""
    with _remote(directory) if is_remote(directory) else _local(directory):
        yield
