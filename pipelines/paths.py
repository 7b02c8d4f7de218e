"""Paths on any Beam or TensorFlow filesystem: one answer to "is this path local?"."""

from __future__ import annotations


def is_remote(path: str) -> bool:
    """True for a URL-style path on a remote filesystem (``gs://…``, ``s3://…``), false for a local one."""
    return "://" in path
