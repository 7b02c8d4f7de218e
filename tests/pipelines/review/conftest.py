"""The review tests' data: a copy of the glasses demo data per test.

40 faces of 256x256: ids 1..36 labelled in train.csv, 37..40 unlabelled in test.csv.
"""

from __future__ import annotations

import pathlib
import shutil

import pytest

from pipelines.demo import data as demo_data


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("glasses_demo")
    demo_data.generate("glasses", str(root), count=40, size=256)
    return root


@pytest.fixture
def images(demo_root, tmp_path) -> pathlib.Path:
    """A private copy of the demo data (tests add, break and delete images)."""
    copy = tmp_path / "data"
    shutil.copytree(demo_root, copy)
    return copy
