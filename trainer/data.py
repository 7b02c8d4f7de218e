"""tf.data input pipeline: GZIP TFRecord shards -> parsed examples -> normalised batches.

The normalisation is the pipeline's own tf.Transform graph (``<data_dir>/transform``),
applied in the dataset map: ``TFTransformOutput.transform_features_layer()`` is a tf_keras
model, which cannot be a layer of a Keras 3 functional model, so the trainer's models take
already-normalised images and the exported serving module applies the same graph itself.

Element shapes (B = global batch):
  training / evaluation: (inputs, label [B] int64); inputs: the image [B, H, W, C] float32,
    or for a model that takes the --numeric_columns vector (``inputs`` names "latent") a dict
    {"image": …, "latent": [B, N] float32} of the inputs it takes (:func:`model_inputs`)
  with_metadata=True:    {image, label, id [B] string, pixels [B, H, W, C] uint8, inputs (as above)}

Augmentation (``augment`` "light" / "strong", trainer/augmentation.py) is a map on the
training dataset only, after the normalisation.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from pipelines import features
from trainer import augmentation

AUTOTUNE = tf.data.AUTOTUNE

# Splits whose serialized examples take less than this are cached in memory after the
# first pass: the gzip decode is then paid once, not once per epoch.
DEFAULT_CACHE_MAX_BYTES = 1 << 30
# Upper bound of the shuffle buffer when the split is not cached (memory, not randomness).
MAX_SHUFFLE_BUFFER = 10_000


def list_shards(data_dir: str, split: str) -> list[str]:
    """Sorted shard files of ``split`` (local or gs://); fails loudly when there are none."""
    files = sorted(tf.io.gfile.glob(features.shard_pattern(data_dir, split)))
    if not files:
        raise FileNotFoundError(f"no shards match {features.shard_pattern(data_dir, split)}")
    return files


def texts(values: Any) -> np.ndarray:
    """A batch of tf.string values (bytes) as a str array, decoded as UTF-8: ids and groups may
    hold any letter (``é日本``), which numpy's ``astype(str)`` (ASCII) cannot decode."""
    return np.char.decode(np.asarray(values).astype(bytes), "utf-8")


def class_counts(manifest: Mapping[str, Any], split: str) -> dict[int, int]:
    """{class index: examples} the pipeline wrote to ``split``; {} when the manifest counts none.

    The one reader of the manifest's counts in the trainer.
    """
    written = manifest.get("counts", {}).get("written", {}).get(split)
    return {int(label): int(n) for label, n in written.items()} if isinstance(written, Mapping) else {}


def split_size(manifest: Mapping[str, Any], split: str) -> int:
    """Number of examples the pipeline wrote to ``split`` (from the manifest's counts; 0 when none)."""
    return sum(class_counts(manifest, split).values())


@dataclasses.dataclass(frozen=True)
class Subset:
    """Some labelled examples of a data dir, picked by id from the shards of every split.

    What a cross-validation fold trains or validates on (trainer/folds.py); ``name`` is for
    the logs. ``ids`` and ``labels`` are [n] arrays (ids and labels only, never pixels).
    """

    name: str
    ids: np.ndarray  # [n] str
    labels: np.ndarray  # [n] int64

    @property
    def class_counts(self) -> dict[int, int]:
        labels, counts = np.unique(self.labels, return_counts=True)
        return {int(label): int(n) for label, n in zip(labels, counts, strict=True)}


# Where a fit's examples come from: a split's name or a Subset.
Examples = str | Subset


def examples_class_counts(manifest: Mapping[str, Any], examples: Examples) -> dict[int, int]:
    """{class index: examples} of a split (the manifest's counts) or of a Subset."""
    return examples.class_counts if isinstance(examples, Subset) else class_counts(manifest, examples)


def examples_size(manifest: Mapping[str, Any], examples: Examples) -> int:
    """Number of examples of a split (the manifest's counts) or of a Subset."""
    return len(examples.ids) if isinstance(examples, Subset) else split_size(manifest, examples)


def load_transform(data_dir: str, manifest: Mapping[str, Any]) -> tft.TFTransformOutput:
    """The tf.Transform output the pipeline wrote next to the shards."""
    path = tf.io.gfile.join(data_dir, manifest.get("transform_dir", features.TRANSFORM_DIR))
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"{path}: no tf.Transform output (transform_fn/) in the data directory")
    return tft.TFTransformOutput(path)


@dataclasses.dataclass(frozen=True)
class DataDir:
    """A preprocessing output directory, read once per command and passed down.

    ``DataDir.read`` reads the manifest; the tf.Transform output is loaded on first use
    (once), so that a command fails on the manifest before it touches the transform.
    """

    path: str
    manifest: Mapping[str, Any]

    @classmethod
    def read(cls, path: str) -> DataDir:
        return cls(path, features.read_manifest(path))

    @functools.cached_property
    def tft_output(self) -> tft.TFTransformOutput:
        return load_transform(self.path, self.manifest)

    def load(self) -> None:
        """Loads the tf.Transform output now (FileNotFoundError when it is missing)."""
        self.tft_output  # noqa: B018 (the cached property loads it)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return features.image_shape(self.manifest)

    @property
    def vector_length(self) -> int:
        """Length of the examples' ``latent`` vector (0: preprocessed without --numeric_columns)."""
        return features.vector_length(self.manifest)

    @property
    def named_dataset(self) -> str | None:
        """The layout preprocess --dataset named ("glasses", "comics"), None for none."""
        return self.manifest.get("dataset")

    def dataset(self, split: Examples, **kwargs: Any) -> tf.data.Dataset:
        """:func:`make_dataset` of this directory: ``kwargs`` are its keyword arguments."""
        return make_dataset(self.path, split, manifest=self.manifest, tft_output=self.tft_output, **kwargs)

    @property
    def classes(self) -> list[Any]:
        return list(self.manifest["classes"])

    @property
    def fingerprint(self) -> str:
        """One hex digest of the data, recorded by tune, train, evaluate and the export.

        The manifest's ``fingerprint["data"]`` when the pipeline writes one; older manifests
        hold only per-aspect hashes (files, contents, options), hashed here into one digest
        (its prose "about" left out, so rewording it changes nothing).
        """
        recorded = self.manifest.get("fingerprint", {})
        if isinstance(recorded, dict) and isinstance(recorded.get("data"), str):
            return recorded["data"]
        if isinstance(recorded, dict):
            recorded = {k: v for k, v in recorded.items() if k != "about"}
        return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Batches that see every example once (the last partial batch is topped up by repeat)."""
    return max(1, math.ceil(num_examples / global_batch_size))


def _read_serialized(files: list[str], *, shuffle_files: bool, seed: int, deterministic: bool) -> tf.data.Dataset:
    """Serialized examples of all shards, read several files at a time."""
    ds = tf.data.Dataset.from_tensor_slices(files)  # (file name)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # Parallel interleave hides per-file latency (gs:// reads, gzip decode); with
    # deterministic=False the reader takes whichever file is ready first.
    return ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=min(len(files), 16),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )  # (serialized example)


def model_inputs(
    transformed: Mapping[str, tf.Tensor],
    inputs: Sequence[str],
    *,
    image_shape: tuple[int, int, int],
    vector_length: int = 0,
):
    """The tf.Transform layer's outputs -> what a model with ``inputs`` takes.

    ``inputs`` ("image" and/or "latent", :func:`trainer.architectures.input_names`): ("image",) gives
    the image tensor (the image presets); any other a dict of those inputs.
    """
    keys = {features.IMAGE_KEY: features.NORMALIZED_IMAGE_KEY, features.VECTOR_KEY: features.NORMALIZED_VECTOR_KEY}
    shapes = {features.IMAGE_KEY: [None, *image_shape], features.VECTOR_KEY: [None, vector_length]}
    taken = {name: tf.ensure_shape(transformed[keys[name]], shapes[name]) for name in inputs}
    return taken[features.IMAGE_KEY] if tuple(inputs) == (features.IMAGE_KEY,) else taken


def make_parse_and_transform(
    tft_output: tft.TFTransformOutput,
    *,
    image_shape: tuple[int, int, int],
    with_metadata: bool = False,
    vector_length: int = 0,
    inputs: Sequence[str] = (features.IMAGE_KEY,),
):
    """Returns ``fn(serialized [B]) -> element``: parse + the tf.Transform normalisation.

    ``vector_length``: the manifest's (:func:`features.vector_length`); ``inputs``: what the
    model takes (:func:`model_inputs`).

    The transform layer is created once, here, and not inside the map function: creating
    it per trace would reload the transform SavedModel each time (see the TFT docstring of
    ``transform_raw_features``).
    """
    tft_layer = tft_output.transform_features_layer()
    height, width, channels = image_shape

    def parse_and_transform(serialized: tf.Tensor):
        parsed = tf.io.parse_example(serialized, features.raw_feature_spec(vector_length))
        # The transform graph takes exactly the raw inputs the pipeline analysed.
        transformed = tft_layer({key: parsed[key] for key in features.transform_input_keys(vector_length)})
        model_input = model_inputs(transformed, inputs, image_shape=image_shape, vector_length=vector_length)
        label = parsed[features.LABEL_KEY]
        if not with_metadata:
            return model_input, label
        pixels = tf.reshape(tf.io.decode_raw(parsed[features.IMAGE_KEY], tf.uint8), [-1, height, width, channels])
        return {
            "image": tf.ensure_shape(transformed[features.NORMALIZED_IMAGE_KEY], [None, height, width, channels]),
            "label": label,
            "id": parsed[features.ID_KEY],
            "group": parsed[features.GROUP_KEY],
            "pixels": pixels,
            "inputs": model_input,
        }

    return parse_and_transform


def _shards(data_dir: str, examples: Examples) -> list[str]:
    """The shard files holding ``examples``: the split's, or every split's for a Subset."""
    if not isinstance(examples, Subset):
        return list_shards(data_dir, examples)
    files = [f for split in features.SPLITS for f in sorted(tf.io.gfile.glob(features.shard_pattern(data_dir, split)))]
    if not files:
        raise FileNotFoundError(f"{data_dir}: no shards ({features.SHARD_SUFFIX}) in any split")
    return files


def _keep_ids(ids: np.ndarray) -> Callable[[tf.Tensor], tf.Tensor]:
    """``fn(serialized) -> bool``: whether the example's id is one of ``ids``."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.string), tf.ones([len(ids)], tf.int64)),
        default_value=0,
    )
    spec = {features.ID_KEY: features.raw_feature_spec()[features.ID_KEY]}

    def keep(serialized: tf.Tensor) -> tf.Tensor:
        return tf.equal(table.lookup(tf.io.parse_single_example(serialized, spec)[features.ID_KEY]), 1)

    return keep


def make_dataset(
    data_dir: str,
    split: Examples,
    *,
    manifest: Mapping[str, Any],
    tft_output: tft.TFTransformOutput,
    global_batch_size: int,
    training: bool,
    seed: int = 0,
    deterministic: bool = True,
    cache: bool | None = None,
    with_metadata: bool = False,
    augment: str = "none",
    inputs: Sequence[str] = (features.IMAGE_KEY,),
) -> tf.data.Dataset:
    """Batches of one split, normalised with the pipeline's transform graph.

    Args:
      data_dir: The preprocessing output directory (local or gs://).
      split: "train", "validation" or "test", or a :class:`Subset` (read from every split's
        shards, only its ids kept).
      manifest: ``features.read_manifest(data_dir)``.
      tft_output: ``load_transform(data_dir, manifest)``.
      global_batch_size: per-replica batch x ``strategy.num_replicas_in_sync``; the strategy
        splits each global batch between the replicas.
      training: shuffle, repeat forever and drop the remainder (static batch shape, the same
        number of examples on every replica). Fit it with ``steps_per_epoch``. Otherwise
        one ordered pass, last batch partial.
      seed: Shuffle seed. Defaults to 0.
      deterministic: Keep element order reproducible (for a given seed); False lets the
        parallel reader and map return whatever is ready first. Defaults to True.
      cache: Cache serialized examples in memory. Defaults to caching when the split's
        pixels take less than ``DEFAULT_CACHE_MAX_BYTES``.
      with_metadata: Yield dicts with id and the stored uint8 pixels too (evaluation).
      augment: "none", "light" or "strong" (:func:`augmentation.make_augment`); training only; on the image.
      inputs: What the model takes, "image" and/or "latent" (:func:`model_inputs`).
    """
    if augment != "none" and not training:
        raise ValueError(f"augmentation ({augment!r}) is for the training dataset only")
    image_shape = features.image_shape(manifest)
    num_examples = examples_size(manifest, split)
    if cache is None:
        cache = num_examples * math.prod(image_shape) < DEFAULT_CACHE_MAX_BYTES
    files = _shards(data_dir, split)
    logging.info(
        "%s: %d examples in %d shards, global batch %d, training=%s, cache=%s",
        split.name if isinstance(split, Subset) else split,
        num_examples,
        len(files),
        global_batch_size,
        training,
        cache,
    )

    ds = _read_serialized(files, shuffle_files=training and not cache, seed=seed, deterministic=deterministic)
    if isinstance(split, Subset):
        ds = ds.filter(_keep_ids(split.ids))  # (serialized example of the subset)
    # The manifest's count (a Subset's size) is the contract: any other number of examples
    # fails at the end of the first pass, and Keras knows the length of an evaluation epoch.
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_examples))
    if cache:
        # Cache the small serialized records (not the float images: 4x the bytes) before
        # shuffling, so that every epoch still sees a fresh order.
        ds = ds.cache()
    if training:
        # Shuffle before repeat: each epoch is a full permutation and no example shows up
        # twice before every other example has been seen once.
        buffer = num_examples if cache else min(num_examples, MAX_SHUFFLE_BUFFER)
        ds = ds.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat()
    # Batch first, then parse and transform whole batches: one vectorised call per batch.
    # drop_remainder only matters for training (static shapes; the data repeats anyway).
    ds = ds.batch(global_batch_size, drop_remainder=training)  # (serialized [B])
    ds = ds.map(
        make_parse_and_transform(
            tft_output,
            image_shape=image_shape,
            with_metadata=with_metadata,
            vector_length=features.vector_length(manifest),
            inputs=inputs,
        ),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )  # (inputs, label [B]) or a dict with id and pixels
    ds = augmentation.augment_batches(ds, augment, seed=seed)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class FitExamples:
    """What a fit trains and validates on: splits (``train``'s) or Subsets (a fold's).

    ``validation`` None: the fit validates on nothing (no val_* figures, no early stopping).
    """

    train: Examples = "train"
    validation: Examples | None = "validation"


class FitDatasets(NamedTuple):
    """What a fit reads: ``train`` (augmented, repeated), ``validation`` (one pass, or None), the
    steps of one epoch of ``train``, and ``calibration``: the training examples shuffled and
    repeated like ``train`` but never augmented, for BatchNormalization's statistics
    (trainer/batch_norm.py)."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    steps_per_epoch: int
    calibration: tf.data.Dataset


def make_fit_datasets(
    data_dir: DataDir,
    examples: FitExamples,
    *,
    global_batch_size: int,
    augment: str = "none",
    seed: int = 0,
    deterministic: bool = True,
    inputs: Sequence[str] = (features.IMAGE_KEY,),
) -> FitDatasets:
    """The datasets of one fit (trainer/fitting.py); ``inputs``: what the model takes (a preset's)."""
    common = dict(global_batch_size=global_batch_size, deterministic=deterministic, inputs=inputs)
    return FitDatasets(
        train=data_dir.dataset(examples.train, training=True, seed=seed, augment=augment, **common),
        validation=None
        if examples.validation is None
        else data_dir.dataset(examples.validation, training=False, **common),
        steps_per_epoch=steps_per_epoch(examples_size(data_dir.manifest, examples.train), global_batch_size),
        calibration=data_dir.dataset(examples.train, training=True, seed=seed, **common),
    )
