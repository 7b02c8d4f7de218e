"""Preflight findings and their report: shared by ``pipelines.preflight`` and ``trainer.preflight``.

Beam-free and TensorFlow-free, so that the trainer can import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class Finding(NamedTuple):
    """One preflight check: passed or not, and what to fix when it did not."""

    ok: bool
    message: str


def report(findings: Iterable[Finding]) -> int:
    """Prints one line per finding and a summary; returns the exit status (1 on any failure)."""
    failed = 0
    for finding in findings:
        print(f"{'ok   ' if finding.ok else 'FAIL '} {finding.message}")
        failed += not finding.ok
    print(f"{failed} problem(s) found" if failed else "preflight passed")
    return 1 if failed else 0
