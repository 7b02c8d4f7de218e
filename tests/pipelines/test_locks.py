"""One writer at a time: the lock file, a second writer refused, a dead holder's lock taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from pipelines import locks
from tests.processes import stop_processes

HOLD = textwrap.dedent(
    """
    import os, signal, sys
    from pipelines import locks
    with locks.held(sys.argv[1]):
        print("holding", flush=True)
        if sys.argv[2] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.stdin.read()
    """
)


def _holder(directory, mode: str) -> subprocess.Popen:
    """A process that takes ``directory``'s lock and then waits on stdin ("wait") or SIGKILLs itself ("die")."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=root),
    )
    assert process.stdout.readline() == "holding\n"
    return process


def test_the_lock_file_names_its_holder_and_goes_with_the_run(tmp_path):
    directory = tmp_path / "out"
    with locks.held(str(directory)):
        holder = json.loads((directory / locks.LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        (directory / "result.txt").write_text("kept")
    assert sorted(os.listdir(directory)) == ["result.txt"]


def test_a_folder_made_only_for_the_lock_is_removed_with_it(tmp_path):
    with locks.held(str(tmp_path / "new")):
        pass
    assert not (tmp_path / "new").exists()


def test_a_second_writer_is_refused_with_one_line_naming_the_holder(tmp_path):
    process = _holder(tmp_path, "wait")
    try:
        with pytest.raises(locks.LockedError) as refused, locks.held(str(tmp_path)):
            pytest.fail("the second writer got the lock")
        message = str(refused.value)
        assert f"PID {process.pid} on {socket.gethostname()}" in message and "\n" not in message
        assert (tmp_path / locks.LOCK_FILE).exists()  # The holder's lock is left alone.
    finally:
        stop_processes([process])


def test_a_second_writer_in_the_same_process_is_refused_too(tmp_path):
    with locks.held(str(tmp_path)), pytest.raises(locks.LockedError), locks.held(str(tmp_path)):
        pass


def test_the_lock_of_a_killed_run_is_taken_over_with_one_log_line(tmp_path, caplog):
    process = _holder(tmp_path, "die")
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / locks.LOCK_FILE).read_text())["pid"] == process.pid  # Left behind.
    with caplog.at_level(logging.WARNING), locks.held(str(tmp_path)):
        assert json.loads((tmp_path / locks.LOCK_FILE).read_text())["pid"] == os.getpid()
    taken = [r.getMessage() for r in caplog.records if "taking over the lock" in r.getMessage()]
    assert len(taken) == 1 and f"PID {process.pid}" in taken[0]
