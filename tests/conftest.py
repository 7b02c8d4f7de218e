"""Shared pytest fixtures: small preprocessed data directories for the trainer tests."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Callable

import numpy as np
import pytest

# Quieter TensorFlow in every test process (and the subprocesses the tests start).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = ("no", "yes")


def pytest_configure(config):
    # Marks the trainer's multi-process (SIGKILL/restart) tests; they still run by default.
    config.addinivalue_line("markers", "slow: starts subprocesses; deselect with -m 'not slow'")
N_SHARDS = 2


def synthetic_image(rng: np.random.Generator, *, label: int, height: int, width: int, channels: int) -> np.ndarray:
    """A learnable [height, width, channels] uint8 image: class 1 has a bright horizontal bar."""
    image = rng.integers(0, 120, size=(height, width, channels), dtype=np.uint8)
    if label == 1:
        row = rng.integers(height // 4, 3 * height // 4)
        image[row : row + max(2, height // 8)] = rng.integers(200, 256, dtype=np.uint8)
    return image


def _analyze_and_write_transform(train_examples: list[bytes], transform_dir: str, temp_dir: str, *, height: int, width: int, channels: int) -> None:
    """Runs the real preprocessing_fn over the train split with tf.Transform and writes transform/.

    Runs inside a function (never at module level): a TFT pipeline run at module level
    crashes the interpreter at exit (exit 139).
    """
    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from pipelines.preprocessing import make_preprocessing_fn

    raw_metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(
            {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
        )
    )
    raw_instances = []
    for serialized in train_examples:
        example = tf.train.Example.FromString(serialized)
        raw_instances.append(
            {
                "image": example.features.feature["image"].bytes_list.value[0],
                "label": example.features.feature["label"].int64_list.value[0],
            }
        )
    preprocessing_fn = make_preprocessing_fn(height=height, width=width, channels=channels)
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as pipeline:
        with tft_beam.Context(temp_dir=temp_dir):
            raw = pipeline | "CreateTrain" >> beam.Create(raw_instances)
            transform_fn = (raw, raw_metadata) | "Analyze" >> tft_beam.AnalyzeDataset(preprocessing_fn)
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(transform_dir)


def write_data_dir(
    root: pathlib.Path, *, height: int, width: int, channels: int, n_per_class_split: dict[str, int], seed: int = 0
) -> str:
    """Writes a data directory in the exact layout of the preprocessing pipeline's output."""
    import tensorflow as tf

    from pipelines import features

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards: dict[str, list[str]] = {}
    written: dict[str, dict[str, int]] = {}
    train_examples: list[bytes] = []
    for split in features.SPLITS:
        examples = []
        for label in range(len(CLASSES)):
            for i in range(n_per_class_split[split]):
                image = synthetic_image(rng, label=label, height=height, width=width, channels=channels)
                examples.append(
                    features.encode_example(
                        image=image.tobytes(),
                        label=label,
                        example_id=f"{split}_{CLASSES[label]}_{i:03d}",
                        height=height,
                        width=width,
                        channels=channels,
                    )
                )
        rng.shuffle(examples)
        if split == "train":
            train_examples = examples
        shards[split] = []
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        for shard in range(N_SHARDS):
            name = f"{split}-{shard:05d}-of-{N_SHARDS:05d}{features.SHARD_SUFFIX}"
            with tf.io.TFRecordWriter(str(root / name), options=options) as writer:
                for serialized in examples[shard::N_SHARDS]:
                    writer.write(serialized)
            shards[split].append(name)
        written[split] = {str(label): n_per_class_split[split] for label in range(len(CLASSES))}

    _analyze_and_write_transform(
        train_examples,
        str(root / features.TRANSFORM_DIR),
        str(root.parent / f"{root.name}_tft_tmp"),  # Outside the data dir, as in the pipeline.
        height=height,
        width=width,
        channels=channels,
    )
    manifest = {
        "version": features.MANIFEST_VERSION,
        "image": {
            "height": height,
            "width": width,
            "channels": channels,
            "color_mode": {3: "rgb", 1: "grayscale"}[channels],
        },
        "classes": list(CLASSES),
        "counts": {"written": written},
        "shards": shards,
        "transform_dir": features.TRANSFORM_DIR,
        "feature_spec": features.feature_spec_description(),
    }
    # The manifest comes last: its presence marks a finished output directory.
    (root / features.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return str(root)


@pytest.fixture(scope="session")
def make_data_dir(tmp_path_factory) -> Callable[..., str]:
    """Factory: ``make_data_dir(name, *, height, width, channels, n_per_class_split) -> data_dir``.

    replaced by the real pipeline when pipelines.preprocess lands (keep this signature).
    ``n_per_class_split`` is an int (same count for every split) or {split: count}.
    Directories are cached per argument set for the whole session.
    """
    cache: dict[tuple, str] = {}

    def make(name: str, *, height: int, width: int, channels: int, n_per_class_split) -> str:
        if isinstance(n_per_class_split, int):
            n_per_class_split = {"train": n_per_class_split, "validation": n_per_class_split, "test": n_per_class_split}
        key = (name, height, width, channels, tuple(sorted(n_per_class_split.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"data_{name}")
            cache[key] = write_data_dir(
                root, height=height, width=width, channels=channels, n_per_class_split=n_per_class_split
            )
        return cache[key]

    return make
