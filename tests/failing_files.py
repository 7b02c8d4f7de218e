"""Files that fail while facepipe writes them: a full disk, a kill mid-write."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

import pytest

from pipelines import atomic


def patch_local_writes(monkeypatch: pytest.MonkeyPatch, write: Callable[[IO[bytes], bytes], None]) -> None:
    """Every local file pipelines/atomic.py creates is made, then each write to it is ``write(file, content)``."""
    create = atomic.LOCAL.create

    class _Failing:
        def __init__(self, path: str):
            self._file = create(path)

        def __enter__(self) -> _Failing:
            return self

        def __exit__(self, *exc: object) -> None:
            self._file.close()

        def write(self, content: bytes) -> None:
            write(self._file, content)

    monkeypatch.setattr(atomic.LOCAL, "create", _Failing)
