"""Shared pytest setup: markers, small preprocessed data directories for the trainer tests, --config files."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.image_files import labelled_image

# Quieter TensorFlow in every test process (and the subprocesses the tests start).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = ("no", "yes")
VECTOR_COLUMNS = tuple(f"v{i}" for i in range(1, 513))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: over ~15 s (processes, pipelines); still runs by default and in CI")


def latent_vector(label: int, index: int, length: int) -> np.ndarray:
    """An example's float32 vector: noise around a class-dependent offset (learnable from the vector alone)."""
    rng = np.random.default_rng(index)
    return (rng.normal(size=length) + (1.5 if label else -1.5) + 10.0 * np.arange(length)).astype(np.float32)


def write_data_dir(
    root: pathlib.Path,
    *,
    height: int,
    width: int,
    channels: int,
    n_per_class_split: dict[str, int],
    seed: int = 0,
    numeric_columns: int = 0,
) -> str:
    """Writes small PNGs and runs the real preprocessing pipeline over them.

    Each split gets its own labels CSV (train.csv, validation.csv, test.csv) and the run
    keeps the source's splits without balancing, so every split holds exactly
    ``n_per_class_split[split]`` examples of each class. ``numeric_columns`` N > 0 adds the
    columns v1..vN (:func:`latent_vector`) to the CSVs and preprocesses with --numeric_columns.
    """
    import cv2

    from pipelines.preprocess import run

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    labels_csvs, index = [], seed * 1_000_000

    for split, count in n_per_class_split.items():
        rows = [",".join(["id", "label", *VECTOR_COLUMNS[:numeric_columns]])]
        for label in range(len(CLASSES)):
            for i in range(count):
                image_id = f"{split}_{CLASSES[label]}_{i:03d}"
                index += 1
                image = labelled_image(label, index, height=height, width=width, channels=channels)
                cv2.imwrite(str(images / f"{image_id}.png"), image)
                vector = [repr(float(v)) for v in latent_vector(label, index, numeric_columns)]
                rows.append(",".join([image_id, str(label), *vector]))
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
        labels_csvs += ["--labels_csv", str(root / f"{split}.csv")]
    output = root / "data"
    run(
        [
            "--images",
            str(images),
            *labels_csvs,
            "--output",
            str(output),
            "--classes",
            ",".join(CLASSES),
            "--splits",
            "from_source",
            "--validation_fraction",
            "0",
            "--balance",
            "none",
            "--image_size",
            f"{width},{height}",
            "--color_mode",
            {3: "rgb", 1: "grayscale"}[channels],
            *(["--numeric_columns", f"v1..v{numeric_columns}"] if numeric_columns else []),
        ]
    )
    return str(output)


def check_croissant(data_dir: str) -> None:
    """Every data directory the tests make validates with mlcroissant, its examples the manifest's."""
    import json

    import mlcroissant as mlc

    dataset = mlc.Dataset(os.path.join(data_dir, "croissant.json"))
    with open(os.path.join(data_dir, "manifest.json")) as f:
        written = json.load(f)["counts"]["written_total"]
    assert not dataset.metadata.issues.errors and sum(1 for _ in dataset.records("examples")) == written


@pytest.fixture(scope="session")
def make_data_dir(tmp_path_factory) -> Callable[..., str]:
    """Factory: ``make_data_dir(name, *, height, width, channels, n_per_class_split) -> data_dir``.

    The data directory is the real preprocessing pipeline's output.
    ``n_per_class_split`` is an int (same count for every split) or {split: count};
    ``numeric_columns`` N > 0 gives every example a ``latent`` vector of N values.
    Directories are cached per argument set for the whole session.
    """
    cache: dict[tuple, str] = {}

    def make(name: str, *, height: int, width: int, channels: int, n_per_class_split, numeric_columns: int = 0) -> str:
        if isinstance(n_per_class_split, int):
            n_per_class_split = {"train": n_per_class_split, "validation": n_per_class_split, "test": n_per_class_split}
        key = (name, height, width, channels, tuple(sorted(n_per_class_split.items())), numeric_columns)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"data_{name}")
            cache[key] = write_data_dir(
                root,
                height=height,
                width=width,
                channels=channels,
                n_per_class_split=n_per_class_split,
                numeric_columns=numeric_columns,
            )
            check_croissant(cache[key])
        return cache[key]

    return make


@pytest.fixture(scope="module")
def rgb_dir(make_data_dir) -> str:
    """A 16x16 RGB data directory: 24 train, 8 validation and 8 test images per class."""
    return make_data_dir(
        "rgb16", height=16, width=16, channels=3, n_per_class_split={"train": 24, "validation": 8, "test": 8}
    )


@pytest.fixture(scope="module")
def latent_dir(make_data_dir) -> str:
    """A 16x16 RGB data directory with a 4-value vector (v1..v4): 16 train, 6 validation and 6 test per class."""
    return make_data_dir(
        "latent16",
        height=16,
        width=16,
        channels=3,
        n_per_class_split={"train": 16, "validation": 6, "test": 6},
        numeric_columns=4,
    )


@pytest.fixture
def write_config(tmp_path) -> Callable[[Any], str]:
    """Writes ``values`` as a ``--config`` file (JSON) in tmp_path; returns its path."""

    def write(values: Any) -> str:
        path = tmp_path / "config.json"
        path.write_text(json.dumps(values))
        return str(path)

    return write
