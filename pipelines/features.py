"""The TFRecord contract between the preprocessing pipeline and the trainer.

This module is the one place that defines what a preprocessed example holds, what the
output directory contains and how the manifest names things. The trainer imports it
(it depends on TensorFlow only, never on Beam), so the two sides cannot drift apart.

An example (``tf.train.Example``) holds:
  image     bytes  uint8 pixels, row-major height x width x channels (RGB or grey)
  label     int64  class index into the manifest's ``classes``
  id        bytes  the source image's id (file stem or CSV id)
  group     bytes  what splits and folds keep together (--group_by: a person, a pair); the id if none
  height    int64  pixel rows
  width     int64  pixel columns
  channels  int64  1 (grayscale) or 3 (rgb)
  latent    float32[N]  only with --numeric_columns: the row's numeric CSV columns (e.g. Kaggle's
                    v1..v512), bit for bit; N and the column names are the manifest's ``vector``

Reading a data directory with a vector (``vector_length(manifest) > 0``):
  parse with ``raw_feature_spec(vector_length(manifest))``, and pass the tf.Transform layer
  ``{image, label, latent}`` (every key of :func:`transform_input_keys`); it returns
  ``image_normalized`` and ``latent_normalized`` (the vector z-scored per component with the
  train split's mean and variance). A serving model applies the same layer to the same keys,
  so a served request must carry the vector too. Without a vector both are as before: the
  spec has no ``latent`` and the layer takes ``{image, label}``.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

IMAGE_KEY = "image"
LABEL_KEY = "label"
ID_KEY = "id"
GROUP_KEY = "group"
HEIGHT_KEY = "height"
WIDTH_KEY = "width"
CHANNELS_KEY = "channels"

# The transformed (normalised) image that tf.Transform's preprocessing_fn outputs.
NORMALIZED_IMAGE_KEY = "image_normalized"
# Analysis-only inputs of the preprocessing_fn: one image's per-channel mean and mean of
# squares (pixels scaled to [0, 1]). The pipeline computes them; readers never supply them.
PIXEL_MEAN_KEY = "pixel_mean"
PIXEL_MEAN_SQUARE_KEY = "pixel_mean_square"
# The numeric CSV columns of --numeric_columns, one float32 vector per example, and the
# same vector z-scored by tf.Transform with the train split's per-component statistics.
VECTOR_KEY = "latent"
NORMALIZED_VECTOR_KEY = "latent_normalized"

SPLITS = ("train", "validation", "test")
COLOR_MODES = {"rgb": 3, "grayscale": 1}

# Output directory layout.
MANIFEST_FILE = "manifest.json"
TRANSFORM_DIR = "transform"  # tft.TFTransformOutput directory: transform_fn/, *_metadata/
DEAD_LETTER_DIR = "dead_letter"
QUALITY_DIR = "quality"  # images-*.jsonl (statistics, outlier flags), duplicates-*.jsonl (groups)
# examples-*.csv: a row per written example, naming its source file and its shard
# (pipelines/examples_index.py); croissant.json describes the whole directory (pipelines/croissant.py).
EXAMPLES_DIR = "examples"
EXAMPLES_INDEX_COLUMNS = ("id", "path", "label", "label_name", "split", "group", "content_sha256", "shard")
CROISSANT_FILE = "croissant.json"
SHARD_SUFFIX = ".tfrecord.gz"

# Images with more pixels (width x height, from the header) are refused before decoding,
# by the pipeline (--max_pixels) and by the trainer's predict: a small PNG can declare
# 7900x7900 pixels and take gigabytes to decode.
MAX_PIXELS = 64_000_000
# The largest side of the examples (--image_size): beyond it every example costs tens of MB
# and the models (up to 128x128) gain nothing; refused up front rather than failing every image.
MAX_IMAGE_SIDE = 2048
# The shortest side an input image may have (--min_side): upscaled, a smaller one is a blur.
MIN_SIDE = 8
# The images facepipe reads, by file name (the pipeline's decoder takes PNG and JPEG only),
# in preprocessing, the review and the trainer's predict alike.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MANIFEST_VERSION = 1


def shard_prefix(output_dir: str, split: str) -> str:
    """Path prefix of a split's shards: ``<dir>/<split>`` + ``-00000-of-00004.tfrecord.gz``."""
    return posixpath.join(output_dir, split)


def shard_pattern(output_dir: str, split: str) -> str:
    """Glob matching every shard of ``split``."""
    return shard_prefix(output_dir, split) + "-*" + SHARD_SUFFIX


def vector_length(manifest: Mapping[str, Any]) -> int:
    """Length of the examples' ``latent`` vector; 0 when they have none (also older manifests)."""
    return int(manifest.get("vector", {}).get("length", 0))


def transform_input_keys(vector_length: int = 0) -> tuple[str, ...]:
    """The raw features a reader passes to the tf.Transform layer (see the module docstring)."""
    return (IMAGE_KEY, LABEL_KEY, VECTOR_KEY) if vector_length else (IMAGE_KEY, LABEL_KEY)


def raw_feature_spec(vector_length: int = 0) -> dict[str, Any]:
    """The tf.io feature spec that parses a serialized example (shape is in the manifest).

    ``vector_length``: :func:`vector_length` of the manifest; 0 (no vector) leaves ``latent`` out.
    """
    import tensorflow as tf  # Imported here so that Beam workers that only list files stay light.

    vector = {VECTOR_KEY: tf.io.FixedLenFeature([vector_length], tf.float32)} if vector_length else {}
    return {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        ID_KEY: tf.io.FixedLenFeature([], tf.string),
        # Shards written before the group existed read as "" (no group).
        GROUP_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        HEIGHT_KEY: tf.io.FixedLenFeature([], tf.int64),
        WIDTH_KEY: tf.io.FixedLenFeature([], tf.int64),
        CHANNELS_KEY: tf.io.FixedLenFeature([], tf.int64),
        **vector,
    }


# What a feature means, beyond its type (see the module docstring).
_MEANINGS = {
    IMAGE_KEY: "uint8 pixels, row-major height x width x channels",
    LABEL_KEY: "index into classes",
    ID_KEY: "source id",
    GROUP_KEY: "split/fold group (--group_by), else the id",
    CHANNELS_KEY: "1 grayscale, 3 rgb",
    VECTOR_KEY: "the manifest's vector columns, in order",
}


def feature_spec_description(vector_length: int = 0) -> dict[str, str]:
    """:func:`raw_feature_spec` in words, as written to the manifest: ``"int64: meaning"``."""
    import tensorflow as tf

    described = {}
    for key, spec in raw_feature_spec(vector_length).items():
        kind = "bytes" if spec.dtype == tf.string else spec.dtype.name
        kind += f"[{spec.shape[0]}]" if spec.shape else ""
        described[key] = f"{kind}: {_MEANINGS[key]}" if key in _MEANINGS else kind
    return described


def encode_example(
    *,
    image: bytes,
    label: int,
    example_id: str,
    height: int,
    width: int,
    channels: int,
    group: str = "",
    vector: bytes = b"",
) -> bytes:
    """Serializes one example; the inverse of parsing with :func:`raw_feature_spec`.

    ``vector``: the float32 values (``ndarray.tobytes()``) of ``latent``; empty: no such feature.
    """
    import tensorflow as tf

    if len(image) != height * width * channels:
        raise ValueError(f"{example_id}: {len(image)} pixel bytes, expected {height}x{width}x{channels}")

    def _int(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {
        IMAGE_KEY: _bytes(image),
        LABEL_KEY: _int(label),
        ID_KEY: _bytes(example_id.encode("utf-8")),
        GROUP_KEY: _bytes((group or example_id).encode("utf-8")),
        HEIGHT_KEY: _int(height),
        WIDTH_KEY: _int(width),
        CHANNELS_KEY: _int(channels),
    }
    if vector:
        # float32 -> Python float -> the proto's float32 is exact: the values arrive bit for bit.
        features[VECTOR_KEY] = tf.train.Feature(float_list=tf.train.FloatList(value=np.frombuffer(vector, np.float32)))
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def read_manifest(data_dir: str) -> dict[str, Any]:
    """Reads and checks ``manifest.json`` from a preprocessed data directory (local or gs://)."""
    import tensorflow as tf

    path = tf.io.gfile.join(data_dir, MANIFEST_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {data_dir} is not a finished preprocessing output "
            "(run `python -m pipelines.preprocess` first; a failed run leaves no manifest)"
        )
    with tf.io.gfile.GFile(path) as f:
        manifest = json.load(f)
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {manifest.get('version')}, expected {MANIFEST_VERSION}")
    return manifest


def read_example_paths(data_dir: str, ids: Collection[str] | None = None) -> dict[str, str]:
    """{id: source path} of the written examples (those of ``ids`` when given), from the
    examples index, read a row at a time; empty for an output written before the index existed."""
    import csv

    import tensorflow as tf

    paths: dict[str, str] = {}
    for name in sorted(tf.io.gfile.glob(posixpath.join(data_dir, EXAMPLES_DIR, "*.csv"))):
        with tf.io.gfile.GFile(name) as f:
            paths.update((row["id"], row["path"]) for row in csv.DictReader(f) if ids is None or row["id"] in ids)
    return paths


def image_shape(manifest: Mapping[str, Any]) -> tuple[int, int, int]:
    """(height, width, channels) of the images a manifest describes."""
    image = manifest["image"]
    return int(image["height"]), int(image["width"]), int(image["channels"])
