"""Processes that tests start: free loopback ports, and stopping them by PID."""

from __future__ import annotations

import contextlib
import socket
import subprocess


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (held open together so that they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def stop(procs: list[subprocess.Popen]) -> None:
    """terminate -> wait -> kill, each process by its own handle (PID)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
