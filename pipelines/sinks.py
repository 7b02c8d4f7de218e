"""Beam writers: TFRecord shards, tf.Transform statistics, dead letters, run statistics.

What the driver does with the output directory before and after the run (claiming it, the
empty shards, reading the statistics back, the manifest) is in ``pipelines.output_dir``.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import (
    _TFRecordUtil,  # Beam's own TFRecord framing (length, CRCs).
)
from apache_beam.options.value_provider import StaticValueProvider

from pipelines import features
from pipelines.config import PreprocessConfig
from pipelines.output_dir import SHARDS_TEMP_DIR, stats_path
from pipelines.transforms import unit_hash

EXAMPLES_PER_SHARD = 1000
# The shards' gzip level: on the job's records (50x50 RGB and 512-value vectors) level 3
# compresses 51-62 MB/s against 41-47 at 9 (gzip's default, the same ratio as 6), to within
# 1.5% of its size (smaller on 256-px sources); the compression is the largest part of the
# writer's work (docs/benchmarks.md section 1), off the thread that runs the steps after the decode.
SHARD_GZIP_LEVEL = 3
# Framed records a shard's sink gzips at once, on a thread of its own: a shard's records are
# ~10 KB (50x50 RGB and a 512-value vector), so a hand-over per 25 of them; the job's up to ~20
# open shards hold at most twice this each.
SHARD_WRITE_CHUNK = 256 << 10
# Images whose channel statistics are computed at once (their float64 copies: 16 bytes a value).
STATISTICS_CHUNK = 64


def num_shards_for(estimated_examples: float, requested: int) -> int:
    """Shards for a split: the requested number, else one per ~1000 examples (>= 2 once the
    split is big enough that two readers or workers are worth having)."""
    if requested:
        return requested
    shards = math.ceil(estimated_examples / EXAMPLES_PER_SHARD)
    if estimated_examples >= 64:
        shards = max(shards, 2)
    return max(1, min(shards, 1024))


def shard_counts(config: PreprocessConfig, estimated_images: int) -> dict[str, int]:
    """Shards per split, from the estimated number of images and the split fractions."""
    fractions = config.splits or {"train": 1.0, "validation": config.validation_fraction, "test": 1.0}
    return {
        split: num_shards_for(estimated_images * fractions.get(split, 0.0), config.num_shards)
        for split in features.SPLITS
    }


def shard_name(split: str, image_id: str, shards: Mapping[str, int]) -> str:
    """The shard an example goes to, ``train-00001-of-00004``: a stable hash of its id."""
    count = shards[split]
    return f"{split}-{int(unit_hash('shard', image_id) * count):05d}-of-{count:05d}"


@functools.cache
def _shard_compressor() -> ThreadPoolExecutor:
    """The thread that gzips the shards of this process (zlib releases the GIL while it compresses)."""
    return ThreadPoolExecutor(1, thread_name_prefix="shard-gzip")


class _GzipTFRecordSink(fileio.FileSink):
    """A fileio sink writing GZIP-compressed TFRecords (what tf.data.TFRecordDataset reads).

    The records are framed here, SHARD_WRITE_CHUNK bytes of them gzipped at a time on
    :func:`_shard_compressor`'s thread while this one encodes the next: one chunk of a shard in
    flight at most, in order, so the file's bytes are those of gzipping record by record.
    """

    def open(self, fh) -> None:
        self._file = gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=SHARD_GZIP_LEVEL)
        self._chunk = io.BytesIO()
        self._writing: Future | None = None

    def write(self, record: tuple[str, bytes]) -> None:
        _TFRecordUtil.write_record(self._chunk, record[1])
        if self._chunk.tell() >= SHARD_WRITE_CHUNK:
            self._hand_over()

    def _hand_over(self) -> None:
        """The chunk to the compressing thread, once the one before it is written (its error raised here)."""
        if self._writing is not None:
            self._writing.result()
        self._writing = _shard_compressor().submit(self._file.write, self._chunk.getvalue())
        self._chunk = io.BytesIO()

    def flush(self) -> None:
        self._hand_over()
        self._writing.result()
        self._file.close()  # Writes the gzip trailer; fileio closes the file itself.


def shard_file_name(window, pane, index, total, compression, destination: str) -> str:
    """``train-00001-of-00004.tfrecord.gz``; a ``-N`` part is added when several bundles
    (workers) wrote to the same shard, one file each."""
    del window, pane, compression
    part = "" if total in (None, 1) else f"-{index}"
    return f"{destination}{part}{features.SHARD_SUFFIX}"


class WriteShards(beam.PTransform):
    """DecodedImage -> ``<split>-SSSSS-of-NNNNN.tfrecord.gz`` for each split.

    Written with ``fileio.WriteToFiles``: every bundle streams its examples straight into
    one open file per shard, so no step holds the examples in memory (Beam's WriteToTFRecord
    groups all of them by shard first, which the local runners keep in memory). Files go to
    a temp directory first and are renamed when complete.
    """

    def __init__(self, config: PreprocessConfig, estimated_images: int):
        super().__init__()
        self._config = config
        self._estimated = estimated_images

    def expand(self, images):
        config = self._config
        width, height = config.image_size
        shards = shard_counts(config, self._estimated)

        def keyed_example(image) -> tuple[str, bytes]:
            serialized = features.encode_example(
                image=image.pixels,
                label=image.label,
                example_id=image.id,
                group=image.group,
                vector=image.vector,
                height=height,
                width=width,
                channels=config.channels,
            )
            return shard_name(image.split, image.id, shards), serialized

        return (
            images
            | "Encode" >> beam.Map(keyed_example)
            # (shard name, serialized tf.Example)
            | "Write"
            >> fileio.WriteToFiles(
                path=config.output_dir,
                destination=lambda keyed: keyed[0],
                sink=lambda destination: _GzipTFRecordSink(),
                file_naming=shard_file_name,
                temp_directory=StaticValueProvider(str, FileSystems.join(config.output_dir, SHARDS_TEMP_DIR)),
                max_writers_per_bundle=sum(shards.values()),
            )
        )


def analysis_record_batch(
    images: Sequence[Any], *, channels: int, vector_length: int, schema: pa.Schema
) -> pa.RecordBatch:
    """What the preprocessing_fn's analysers read of a batch of train images, as one Arrow record
    batch of ``schema`` (the raw metadata's, as tf.Transform's TF-Example decoder would build it):
    each image's channel statistics (and its vector, with --numeric_columns).

    The pixels themselves are left out (an empty string): the analysers never read them, and
    carrying them would hold every train image in the local runner's memory.
    """
    count = len(images)
    pixels = np.frombuffer(b"".join(image.pixels for image in images), np.uint8).reshape(count, -1, channels)
    mean, mean_square = _channel_moments(pixels)
    columns = {
        features.IMAGE_KEY: [b""] * count,
        features.LABEL_KEY: np.array([image.label for image in images], np.int64),
        features.PIXEL_MEAN_KEY: mean,
        features.PIXEL_MEAN_SQUARE_KEY: mean_square,
    }
    if vector_length:
        columns[features.VECTOR_KEY] = np.frombuffer(b"".join(image.vector for image in images), np.float32)
    arrays = []
    for field in schema:
        values = pa.array(np.ravel(columns[field.name]) if field.name != features.IMAGE_KEY else columns[field.name])
        # Every feature is fixed-length: row i is values[i * width : (i + 1) * width].
        offsets = pa.array(np.arange(count + 1, dtype=np.int64) * (len(values) // max(count, 1)))
        arrays.append(pa.LargeListArray.from_arrays(offsets, values.cast(field.type.value_type)))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _channel_moments(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, values, channels] uint8 -> ([n, channels], [n, channels]) float32: each image's channel
    mean and mean square in [0, 1], in float64 as tf.Transform's instance dicts had them.

    STATISTICS_CHUNK images at a time: tf.Transform's batches grow with the data (up to 1000
    images), and their float64 copies at once were the job's peak memory. Each image is reduced
    alone, so the values do not depend on the chunk.
    """
    means, squares = [], []
    for start in range(0, len(pixels), STATISTICS_CHUNK):
        chunk = pixels[start : start + STATISTICS_CHUNK].astype(np.float64) / 255.0
        means.append(chunk.mean(axis=1).astype(np.float32))
        squares.append(np.square(chunk).mean(axis=1).astype(np.float32))
    return np.concatenate(means), np.concatenate(squares)


class WriteTransformStatistics(beam.PTransform):
    """Train-split DecodedImage -> tf.Transform's ``transform/`` (transform_fn, metadata).

    Must be applied inside ``tft_beam.Context``; the statistics cover the train split only,
    so validation and test never leak into the normalisation. Returns WriteTransformFn's
    output, which is complete once ``transform/`` is.
    """

    def __init__(self, config: PreprocessConfig):
        super().__init__()
        self._config = config

    def expand(self, train_images):
        import tensorflow_transform.beam as tft_beam
        from tfx_bsl.coders import batch_util
        from tfx_bsl.tfxio import tf_example_record

        from pipelines.preprocessing import make_preprocessing_fn, raw_metadata

        config = self._config
        width, height = config.image_size
        channels, vector_length = config.channels, config.vector_length
        metadata = raw_metadata(channels=channels, vector_length=vector_length)
        # The Arrow form tf.Transform reads (TFXIO): its own conversion of per-image dicts
        # encodes each one as a tf.Example and decodes them again, in Python per image.
        tfxio = tf_example_record.TFExampleBeamRecord(
            physical_format="inmem", telemetry_descriptors=["facepipe"], schema=metadata.schema
        )
        transform_dir = FileSystems.join(config.output_dir, features.TRANSFORM_DIR)
        raw = (
            train_images
            # tf.Transform's own batching of its input (1 to 1000, tuned by Beam): its analysers
            # sum each batch in float32, so larger fixed batches would move the statistics.
            | "BatchForAnalysis" >> beam.BatchElements(**batch_util.GetBatchElementsKwargs(None))
            # [DecodedImage]: within a bundle
            | "ToRecordBatch"
            >> beam.Map(
                analysis_record_batch, channels=channels, vector_length=vector_length, schema=tfxio.ArrowSchema()
            )
            # pa.RecordBatch: a row per image (its label and channel statistics, its vector)
        )
        transform_fn = (raw, tfxio.TensorAdapterConfig()) | "Analyze" >> tft_beam.AnalyzeDataset(
            make_preprocessing_fn(height=height, width=width, channels=channels, vector_length=vector_length)
        )
        written = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(transform_dir)
        _ = metadata | "WriteRawMetadata" >> tft_beam.WriteMetadata(
            FileSystems.join(transform_dir, "metadata"), train_images.pipeline
        )
        return written


class WriteDeadLetters(beam.PTransform):
    """Dead-letter dicts -> ``dead_letter/dead_letter-*.jsonl``."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._prefix = FileSystems.join(output_dir, features.DEAD_LETTER_DIR, "dead_letter")

    def expand(self, dead_letters):
        return (
            dead_letters
            | "ToJson" >> beam.Map(lambda record: json.dumps(record, sort_keys=True))
            | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl")
        )


class WriteQuality(beam.PTransform):
    """The audit's JSON-able dicts -> ``quality/images-*.jsonl`` (a line per image) and
    ``quality/duplicates-*.jsonl`` (a line per duplicate group)."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._dir = FileSystems.join(output_dir, features.QUALITY_DIR)

    def expand(self, audit: Mapping[str, Any]):
        return [
            audit[name]
            | f"ToJson_{name}" >> beam.Map(lambda record: json.dumps(record, sort_keys=True))
            | f"Write_{name}" >> beam.io.WriteToText(FileSystems.join(self._dir, file), file_name_suffix=".jsonl")
            for name, file in (("images", "images"), ("groups", "duplicates"))
        ]


HASH_MODULUS = 2**256


def sum_hashes(hashes: Iterable[int]) -> int:
    """The fingerprint of a multiset of 256-bit item hashes: their sum modulo 2**256.

    Why a sum: it is commutative and associative, so Beam combines it in parts on every
    worker and the order of the items never matters; equal items add up where XOR would
    cancel them (two copies of one image left no trace); and a hash of the sorted hashes
    would gather every item on one worker. It identifies data; it is no defence against
    collisions forged on purpose.
    """
    return sum(hashes) % HASH_MODULUS


class WriteRunStatistics(beam.PTransform):
    """Counts and fingerprints of the whole run -> one JSON object in ``output_dir.STATS_FILE``.

    Input: a dict of PCollections — ``listed`` (paths), ``non_image_files`` (paths),
    ``labelled`` (LabelledImage), ``dead_letters`` (dicts), ``decoded`` and ``written``
    (DecodedImage), ``file_hashes`` and ``content_hashes`` (256-bit ints, combined by
    :func:`sum_hashes`), and ``quality`` ((key, value) pairs of the audit, taken as they are).
    """

    def __init__(self, output_dir: str):
        super().__init__()
        self._path = stats_path(output_dir)

    def expand(self, inputs: Mapping[str, Any]):
        def dead_letter_key(record: dict) -> str:
            kind = "dead_letter" if record["is_image"] else "rejected_rows"
            return f"{kind}/{record['reason']}"

        keyed = [
            inputs["listed"] | "KeyListed" >> beam.Map(lambda _: "images_listed"),
            inputs["non_image_files"] | "KeyNonImage" >> beam.Map(lambda _: "non_image_files"),
            inputs["labelled"]
            | "Overridden" >> beam.Filter(lambda im: im.overridden)
            | "KeyOverride" >> beam.Map(lambda _: "overrides_applied"),
            inputs["dead_letters"] | "KeyDeadLetter" >> beam.Map(dead_letter_key),
            inputs["decoded"] | "KeyDecoded" >> beam.Map(lambda im: f"before_balance/{im.split}/{im.label}"),
            inputs["written"] | "KeyWritten" >> beam.Map(lambda im: f"written/{im.split}/{im.label}"),
        ]
        counts = (
            keyed | "FlattenKeys" >> beam.Flatten() | "Count" >> beam.combiners.Count.PerElement()
            # (key, count)
        )
        fingerprints = [
            inputs[name]
            | f"Sum_{name}" >> beam.CombineGlobally(sum_hashes)
            | f"Hex_{name}" >> beam.Map(lambda value, n=name: (f"fingerprint/{n}", f"{value:064x}"))
            for name in ("file_hashes", "content_hashes")
        ]
        return (
            [counts, *fingerprints, inputs["quality"]]
            | "FlattenStats" >> beam.Flatten()
            | "ToDict" >> beam.combiners.ToDict()
            | "ToJson" >> beam.Map(lambda stats: json.dumps(stats, sort_keys=True))
            | "Write" >> beam.io.WriteToText(self._path, shard_name_template="")
        )
