"""trainer/data.py: shard listing, parsing, tf.Transform normalisation, batching."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from pipelines import features
from trainer import data


def _numpy_split(data_dir, split):
    """(pixels [N, H, W, C] uint8, labels [N], ids [N]) read without tf.data or tf.Transform."""
    pixels, labels, ids = [], [], []
    for path in sorted(tf.io.gfile.glob(features.shard_pattern(data_dir, split))):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            ex = tf.train.Example.FromString(record).features.feature
            h, w, c = (ex[k].int64_list.value[0] for k in ("height", "width", "channels"))
            pixels.append(np.frombuffer(ex["image"].bytes_list.value[0], np.uint8).reshape(h, w, c))
            labels.append(ex["label"].int64_list.value[0])
            ids.append(ex["id"].bytes_list.value[0].decode())
    return np.stack(pixels), np.array(labels), ids


def _transform_stats(tft_output):
    """The mean and stddev constants baked into the transform graph, recovered by probing it."""
    layer = tft_output.transform_features_layer()
    zeros = np.zeros((1, 16, 16, 3), np.uint8)
    ones = np.full((1, 16, 16, 3), 255, np.uint8)
    out = layer({"image": tf.constant([zeros.tobytes(), ones.tobytes()]), "label": tf.constant([0, 0], tf.int64)})
    normalized = out["image_normalized"].numpy()
    # (0 - mean) / std and (1 - mean) / std  =>  std = 1 / (b - a), mean = -a * std.
    a, b = normalized[0, 0, 0], normalized[1, 0, 0]
    std = 1.0 / (b - a)
    return -a * std, std


def test_list_shards_and_missing_split(rgb_dir, tmp_path):
    assert [p.rsplit("/", 1)[1] for p in data.list_shards(rgb_dir, "train")] == [
        "train-00000-of-00002.tfrecord.gz",
        "train-00001-of-00002.tfrecord.gz",
    ]
    with pytest.raises(FileNotFoundError, match="no shards"):
        data.list_shards(str(tmp_path), "train")


def test_normalisation_matches_numpy_with_train_statistics(rgb_dir):
    manifest = features.read_manifest(rgb_dir)
    tft_output = data.load_transform(rgb_dir, manifest)
    train_pixels, _, _ = _numpy_split(rgb_dir, "train")
    # Statistics from the train split only, per channel, over all pixels.
    scaled = train_pixels.astype(np.float64) / 255.0
    mean, std = scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2))
    graph_mean, graph_std = _transform_stats(tft_output)
    np.testing.assert_allclose(graph_mean, mean, rtol=1e-4)
    np.testing.assert_allclose(graph_std, std, rtol=1e-4)

    test_pixels, test_labels, test_ids = _numpy_split(rgb_dir, "test")
    ds = data.make_dataset(
        rgb_dir,
        "test",
        manifest=manifest,
        tft_output=tft_output,
        global_batch_size=5,
        training=False,
        with_metadata=True,
    )
    got = {k: np.concatenate([b[k].numpy() for b in ds]) for k in ("image", "label", "id", "pixels")}
    order = [test_ids.index(i.decode()) for i in got["id"]]
    assert sorted(order) == list(range(len(test_ids)))  # Every test example exactly once.
    assert got["image"].shape == (16, 16, 16, 3) and got["image"].dtype == np.float32
    np.testing.assert_array_equal(got["label"], test_labels[order])
    np.testing.assert_array_equal(got["pixels"], test_pixels[order])
    expected = (test_pixels[order].astype(np.float64) / 255.0 - mean) / std
    np.testing.assert_allclose(got["image"], expected, atol=1e-4)


def test_parse_and_transform_eager_equals_dataset_map(rgb_dir):
    manifest = features.read_manifest(rgb_dir)
    fn = data.make_parse_and_transform(data.load_transform(rgb_dir, manifest), image_shape=(16, 16, 3))
    records = list(tf.data.TFRecordDataset(data.list_shards(rgb_dir, "validation"), compression_type="GZIP").take(4))
    eager_image, eager_label = fn(tf.stack(records))
    mapped_image, mapped_label = next(iter(tf.data.Dataset.from_tensor_slices(tf.stack(records)).batch(4).map(fn)))
    np.testing.assert_allclose(eager_image.numpy(), mapped_image.numpy(), atol=1e-6)
    np.testing.assert_array_equal(eager_label.numpy(), mapped_label.numpy())


def test_training_dataset_shuffles_repeats_and_is_deterministic(rgb_dir):
    manifest = features.read_manifest(rgb_dir)
    tft_output = data.load_transform(rgb_dir, manifest)

    def labels(seed, n_batches=6):
        ds = data.make_dataset(
            rgb_dir, "train", manifest=manifest, tft_output=tft_output, global_batch_size=16, training=True, seed=seed
        )
        batches = list(ds.take(n_batches))
        assert all(b[0].shape == (16, 16, 16, 3) for b in batches)  # drop_remainder: static batch
        return np.concatenate([b[1].numpy() for b in batches])

    first = labels(seed=1)
    assert len(first) == 96  # Repeats past the 48 train examples.
    np.testing.assert_array_equal(first, labels(seed=1))  # Same seed, same order.
    assert not np.array_equal(first, labels(seed=2))
    # Shuffle before repeat: each epoch (48 examples) holds every example once: 24 per class.
    assert first[:48].sum() == 24 and first[48:].sum() == 24
    assert data.steps_per_epoch(48, 16) == 3 and data.steps_per_epoch(48, 64) == 1


def test_manifest_count_mismatch_fails_loudly(rgb_dir):
    manifest = features.read_manifest(rgb_dir)
    manifest["counts"]["written"]["test"] = {"0": 8, "1": 9}  # One example too many.
    ds = data.make_dataset(
        rgb_dir,
        "test",
        manifest=manifest,
        tft_output=data.load_transform(rgb_dir, manifest),
        global_batch_size=4,
        training=False,
    )
    assert ds.cardinality().numpy() == 5  # ceil(17 / 4): Keras knows the epoch length.
    with pytest.raises(
        tf.errors.FailedPreconditionError, match="expected to contain 17 elements but contained only 16"
    ):
        list(ds)


NO_BEAM_SCRIPT = r"""
import sys
from pipelines import features
from trainer import (data, distribute, evaluation, export, job_layout, models, multiworker, predict, preflight,
                     records, task, training, tuning)
manifest = features.read_manifest(sys.argv[1])
ds = data.make_dataset(sys.argv[1], "test", manifest=manifest, tft_output=data.load_transform(sys.argv[1], manifest),
                       global_batch_size=4, training=False)
next(iter(ds))
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "apache_beam")
print("beam modules:", loaded[:5])
sys.exit(1 if loaded else 0)
"""


def test_trainer_never_imports_apache_beam(rgb_dir):
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]  # The project root, not tests/.
    proc = subprocess.run(
        [sys.executable, "-c", NO_BEAM_SCRIPT, rgb_dir],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_the_vector_is_z_scored_with_train_statistics_and_image_inputs_are_unchanged(latent_dir):
    manifest = features.read_manifest(latent_dir)
    tft_output = data.load_transform(latent_dir, manifest)
    common = dict(manifest=manifest, tft_output=tft_output, global_batch_size=64, training=False)
    inputs, labels = next(iter(data.make_dataset(latent_dir, "test", inputs=("image", "latent"), **common)))
    assert sorted(inputs) == ["image", "latent"] and inputs["latent"].shape == (12, 4)

    def vectors(split):
        lines = (pathlib.Path(latent_dir).parent / f"{split}.csv").read_text().splitlines()[1:]
        return {line.split(",")[0]: np.array(line.split(",")[2:], np.float32) for line in lines}

    train = np.stack(list(vectors("train").values()))
    test_ids = next(iter(data.make_dataset(latent_dir, "test", with_metadata=True, **common)))["id"].numpy()
    raw = np.stack([vectors("test")[i.decode()] for i in test_ids])
    np.testing.assert_allclose(inputs["latent"].numpy(), (raw - train.mean(0)) / train.std(0), rtol=1e-4, atol=1e-4)

    # An image preset on the same data: the image tensor alone, the same values.
    image, same_labels = next(iter(data.make_dataset(latent_dir, "test", **common)))
    np.testing.assert_array_equal(image.numpy(), inputs["image"].numpy())
    np.testing.assert_array_equal(same_labels.numpy(), labels.numpy())
    latent_only, _ = next(iter(data.make_dataset(latent_dir, "test", inputs=("latent",), **common)))
    assert sorted(latent_only) == ["latent"]
