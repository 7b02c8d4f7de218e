"""Processes the tests and benchmarks start on loopback: free ports, the portable services,
and stopping every process by its own PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence

LOOPBACK = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1 (held open together so that they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]


def stop_processes(processes: Sequence[subprocess.Popen], *, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds, each process by its own PID."""
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def running_services(log_dir: str) -> Iterator[tuple[int, int]]:
    """(job service port, worker pool port): both services started as processes of their own
    on free loopback ports, logging to ``log_dir/<service>.log``, stopped by PID on exit."""
    processes, ports = [], []
    try:
        for service in ("job_service", "worker_pool"):
            with open(os.path.join(log_dir, f"{service}.log"), "w") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "pipelines.portable", service, "--port", "0"],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
            processes.append(process)
            line = process.stdout.readline()  # "<service> listening on 127.0.0.1:<port>"
            if f"listening on {LOOPBACK}:" not in line:
                raise RuntimeError(f"{service} did not start (see {log.name}): {line!r}")
            ports.append(int(line.rsplit(":", 1)[1]))
        yield ports[0], ports[1]
    finally:
        stop_processes(processes)
