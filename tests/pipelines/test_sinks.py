"""Tests of pipelines/sinks.py: the shards' sink, record batches for tf.Transform's analysis."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow_transform.coders import example_proto_coder
from tfx_bsl.coders import example_coder

from pipelines import features
from pipelines.preprocessing import raw_metadata
from pipelines.records import DecodedImage
from pipelines.sinks import (
    SHARD_GZIP_LEVEL,
    SHARD_WRITE_CHUNK,
    STATISTICS_CHUNK,
    _GzipTFRecordSink,
    analysis_record_batch,
)


@pytest.mark.parametrize("vector_length", [0, 5])
def test_a_record_batch_holds_what_tf_transforms_own_decoder_makes_of_each_images_example(vector_length):
    channels = 3
    rng = np.random.default_rng(0)
    images = [
        DecodedImage(
            str(i),
            i % 2,
            "train",
            rng.integers(0, 256, 4 * 6 * channels, dtype=np.uint8).tobytes(),
            i,
            str(i),
            rng.normal(size=vector_length).astype(np.float32).tobytes(),
        )
        for i in range(7)
    ]
    schema = raw_metadata(channels=channels, vector_length=vector_length).schema
    encode = example_proto_coder.ExampleProtoCoder(schema).encode
    examples = []
    for image in images:  # As tf.Transform's instance dicts were: one per image.
        pixels = np.frombuffer(image.pixels, np.uint8).reshape(-1, channels).astype(np.float64) / 255.0
        vector = {features.VECTOR_KEY: np.frombuffer(image.vector, np.float32)} if vector_length else {}
        instance = {
            features.IMAGE_KEY: b"",
            features.LABEL_KEY: image.label,
            features.PIXEL_MEAN_KEY: pixels.mean(axis=0).astype(np.float32),
            features.PIXEL_MEAN_SQUARE_KEY: np.square(pixels).mean(axis=0).astype(np.float32),
            **vector,
        }
        examples.append(encode(instance))
    expected = example_coder.ExamplesToRecordBatchDecoder(schema.SerializeToString()).DecodeBatch(examples)
    batch = analysis_record_batch(images, channels=channels, vector_length=vector_length, schema=expected.schema)
    assert batch.schema == expected.schema and batch.num_rows == len(images)
    for name in expected.schema.names:
        got, want = batch.column(name).to_pylist(), expected.column(name).to_pylist()
        if name in (features.PIXEL_MEAN_KEY, features.PIXEL_MEAN_SQUARE_KEY):
            np.testing.assert_allclose(got, want, rtol=1e-6)  # Means of 72 values summed in another order.
        else:
            assert got == want, name


def test_a_large_batchs_statistics_are_each_images_own_in_memory_of_a_chunk():
    import tracemalloc

    channels, count = 3, 1000  # tf.Transform's largest batch.
    rng = np.random.default_rng(1)
    images = [
        DecodedImage(str(i), i % 2, "train", rng.integers(0, 256, 32 * 32 * channels, dtype=np.uint8).tobytes(), i, "")
        for i in range(count)
    ]
    schema = raw_metadata(channels=channels, vector_length=0).schema
    arrow_schema = example_coder.ExamplesToRecordBatchDecoder(schema.SerializeToString()).ArrowSchema()
    tracemalloc.start()
    batch = analysis_record_batch(images, channels=channels, vector_length=0, schema=arrow_schema)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # The batch's pixels (3 MB) once, and float64 copies of one chunk, not of the batch (48 MB).
    assert peak < 3 * 32 * 32 * channels * count
    assert count > STATISTICS_CHUNK
    for k in (0, STATISTICS_CHUNK - 1, STATISTICS_CHUNK, count - 1):  # Either side of a chunk's edge.
        alone = analysis_record_batch(images[k : k + 1], channels=channels, vector_length=0, schema=arrow_schema)
        for name in (features.PIXEL_MEAN_KEY, features.PIXEL_MEAN_SQUARE_KEY):
            assert batch.column(name)[k].as_py() == alone.column(name)[0].as_py(), (k, name)


def test_the_shard_sink_writes_gzip_tfrecords_at_its_level_that_tensorflow_reads_back(tmp_path):
    import tensorflow as tf

    records = [bytes([i % 251]) * (100 * i) for i in range(1, 40)]
    path = tmp_path / "train-00000-of-00001.tfrecord.gz"
    with open(path, "wb") as fh:
        sink = _GzipTFRecordSink()
        sink.open(fh)
        for record in records:
            sink.write(("train-00000-of-00001", record))
        sink.flush()
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")] == records
    # Not gzip's default level 9 (the header's XFL byte 2: "slowest compression"; 0 for level 3).
    assert SHARD_GZIP_LEVEL == 3 and path.read_bytes()[8] == 0


def test_the_shard_sink_writes_the_bytes_of_gzipping_record_by_record(tmp_path):
    import gzip

    from apache_beam.io.tfrecordio import _TFRecordUtil

    rng = np.random.default_rng(2)
    # ~10 KB records, half noise, half runs: several of the sink's chunks, and a last part one.
    records = [rng.integers(0, 256, 5000 + i, dtype=np.uint8).tobytes() + bytes([i % 7]) * 5000 for i in range(150)]
    assert sum(map(len, records)) > 5 * SHARD_WRITE_CHUNK
    name = "train-00000-of-00001.tfrecord.gz"
    (tmp_path / "sink").mkdir()
    (tmp_path / "plain").mkdir()
    with open(tmp_path / "sink" / name, "wb") as fh:
        sink = _GzipTFRecordSink()
        sink.open(fh)
        for record in records:
            sink.write((name, record))
        sink.flush()
    written = (tmp_path / "sink" / name).read_bytes()
    mtime = int.from_bytes(written[4:8], "little")  # The header's time (of the sink's open).
    with (
        open(tmp_path / "plain" / name, "wb") as fh,
        gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=SHARD_GZIP_LEVEL, mtime=mtime) as plain,
    ):
        for record in records:
            _TFRecordUtil.write_record(plain, record)
    assert written == (tmp_path / "plain" / name).read_bytes()


def test_a_shard_sinks_write_error_on_its_gzip_thread_reaches_the_writer():
    class FullAfterTheHeader:
        name = "full"
        written = 0

        def write(self, data):
            if self.written > 100:  # The header went through (in several writes).
                raise OSError(28, "No space left on device")
            self.written += len(data)

    sink = _GzipTFRecordSink()
    sink.open(FullAfterTheHeader())
    with pytest.raises(OSError, match="No space left"):
        for _ in range(3):
            sink.write(("train", b"x" * SHARD_WRITE_CHUNK))
        sink.flush()
