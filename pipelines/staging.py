"""Staging files: a decoded image's pixels and vector wait on disk until the shard writer needs them.

Between the decode and the writer the job has stage boundaries that need every image first:
the class balance (a side input of counts per class), ``--dedupe keep_one`` (a side input of
the audit's groups) and the Flattens that join branches. A local runner holds whatever crosses
such a boundary in memory until its consumer runs, so images that carried their pixels across
them made the job's memory grow with the data set (docs/benchmarks.md section 2). Instead, the
decode's own stage writes each batch's pixels to a staging file of its own, the rest of the job
carries only the images' small fields and that file's name, and the writer's stage reads them
back one staging file (a batch) at a time. The files live in the output directory's
``output_dir.STAGING_DIR`` and go when the run ends, with its other temp files.

A --numeric_columns vector (2 KB for Kaggle's 512 columns) leaves even earlier, at the labels
CSV's parse (:class:`StageVectors`): the join by id and everything after it carry its digest
and where it is (records.VectorLocation), and the writer's stage reads it back by offset.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import (
    _TFRecordUtil,  # Beam's own TFRecord framing: a truncated or corrupt record fails its CRC.
)

from pipelines.records import UNLABELLED_SPLIT, DecodedImage, LabelRow, VectorLocation

# Vectors per vectors file (2 KB each for 512 columns): a file is read back by offset.
VECTORS_PER_FILE = 10_000
DIGEST_BYTES = 16


def vector_digest(vector: bytes) -> bytes:
    """What a staged vector's records carry in its place: equal vectors, equal digests."""
    return hashlib.blake2b(vector, digest_size=DIGEST_BYTES).digest()


def pack_fields(*fields: bytes) -> bytes:
    """One record of ``fields``: their lengths (uint32, little-endian), then the fields."""
    return struct.pack(f"<{len(fields)}I", *map(len, fields)) + b"".join(fields)


def unpack_fields(record: bytes, count: int, what: str) -> list[bytes]:
    """The ``count`` fields of a :func:`pack_fields` record; ValueError when the record's length is not
    what its lengths say (``what`` names the record)."""
    head = struct.Struct(f"<{count}I")
    lengths = head.unpack_from(record) if len(record) >= head.size else None
    expected = head.size + sum(lengths or ())
    if lengths is None or len(record) != expected:
        how = "shorter" if len(record) < expected else "longer"
        raise ValueError(f"a {what} of {len(record)} bytes does not match its lengths ({how} than they say)")
    fields, start = [], head.size
    for length in lengths:
        fields.append(record[start : start + length])
        start += length
    return fields


def read_located(located: Iterable[tuple[Any, str, int, int]]) -> Iterator[tuple[Any, bytes]]:
    """(key, path, offset, length) -> (key, the bytes read there): one open per file (files in the
    order first named, records by offset within one); a short read gives fewer bytes."""
    by_file: dict[str, list[tuple[Any, int, int]]] = {}
    for key, path, offset, length in located:
        by_file.setdefault(path, []).append((key, offset, length))
    for path, records in by_file.items():
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for key, offset, length in sorted(records, key=lambda record: record[1]):
                f.seek(offset)
                yield key, f.read(length)


def encode_staged(image: DecodedImage) -> bytes:
    """The staging record of an image: its id (to check it on the way back) and pixels."""
    return pack_fields(image.id.encode("utf-8"), image.pixels)


def decode_staged(record: bytes) -> tuple[str, bytes]:
    """(id, pixels) of a staging record."""
    image_id, pixels = unpack_fields(record, 2, "staging record")
    return image_id.decode("utf-8"), pixels


class BundleFiles:
    """One bundle's staging files of one kind: a new file every ``per_file`` records, each
    closed by :meth:`close` at the end of the bundle, before the bundle's outputs count: a
    retried bundle writes new files, and the ones a failed attempt left are never read."""

    def __init__(self, directory: str, suffix: str, per_file: int):
        self._dir, self._suffix, self._per_file = directory, suffix, per_file
        self._file = None
        self._path = ""
        self._in_file = self._offset = 0

    def write(self, record: bytes) -> tuple[str, int]:
        """Appends ``record``; returns (the file's path, the record's offset in it)."""
        if self._file is None or self._in_file >= self._per_file:
            self.close()
            self._path = FileSystems.join(self._dir, f"{uuid.uuid4().hex}{self._suffix}")
            self._file = FileSystems.create(self._path, compression_type=CompressionTypes.UNCOMPRESSED)
        self._file.write(record)
        offset = self._offset
        self._in_file += 1
        self._offset += len(record)
        return self._path, offset

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._in_file, self._offset = None, 0, 0


class StagePixels(beam.DoFn):
    """[DecodedImage] -> the same without pixels, ``staged`` naming the one file that holds the batch's.

    Its vector stays as it is: in the job it left at the labels CSV's parse (StageVectors).
    An unlabelled image (split UNLABELLED_SPLIT: decoded for the audit alone, without pixels)
    passes as it is. The file (TFRecord-framed records) is closed before the batch leaves: a
    retried bundle writes new files, and the ones a failed attempt left are never read.
    """

    def __init__(self, staging_dir: str):
        self._dir = staging_dir

    def process(self, batch: list[DecodedImage]) -> Iterator[list[DecodedImage]]:
        labelled = [image for image in batch if image.split != UNLABELLED_SPLIT]
        path = FileSystems.join(self._dir, f"{uuid.uuid4().hex}.staged")
        if labelled:
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                for image in labelled:
                    _TFRecordUtil.write_record(f, encode_staged(image))
        yield [image if image.split == UNLABELLED_SPLIT else image._replace(pixels=b"", staged=path) for image in batch]


class StageVectors(beam.DoFn):
    """(id, LabelRow) -> the same with ``vector`` its digest and ``vector_location`` the vectors
    file record (digest, then the vector) that holds it; a row without a vector passes as it is.
    Each bundle writes its own files (VECTORS_PER_FILE vectors at most).
    """

    def __init__(self, staging_dir: str):
        self._dir = staging_dir

    def start_bundle(self) -> None:
        self._files = BundleFiles(self._dir, ".vectors", VECTORS_PER_FILE)

    def process(self, element: tuple[str, LabelRow]) -> Iterator[tuple[str, LabelRow]]:
        image_id, row = element
        if not row.vector:
            yield element
            return
        digest = vector_digest(row.vector)
        record = digest + row.vector
        path, offset = self._files.write(record)
        yield image_id, row._replace(vector=digest, vector_location=VectorLocation(path, offset, len(record)))

    def finish_bundle(self) -> None:
        self._files.close()


def _with_vectors(images: list[DecodedImage]) -> Iterator[DecodedImage]:
    """Images -> the same with each staged vector read back (one open per vectors file, by offset)."""
    located = []
    for image in images:
        if image.vector_location is None:
            yield image
        else:
            located.append((image, *image.vector_location))
    for image, record in read_located(located):
        where = image.vector_location
        digest, vector = record[:DIGEST_BYTES], record[DIGEST_BYTES:]
        if len(record) != where.length or vector_digest(vector) != digest:
            raise ValueError(f"the vectors file {where.path} has no intact vector of {image.id!r} at {where.offset}")
        yield image._replace(vector=vector, vector_location=None)


class _ReadStagingFile(beam.DoFn):
    """[DecodedImage without pixels] of one staging file -> each of them with its pixels and vector."""

    def process(self, images: Iterable[DecodedImage]) -> Iterator[DecodedImage]:
        wanted, path = {}, None
        for image in images:
            path = path or image.staged
            if image.staged != path:
                raise ValueError(f"a batch to restore holds images of two staging files: {path}, {image.staged}")
            if image.id in wanted:
                raise ValueError(f"{image.id!r} is twice in the staging file {path}")
            wanted[image.id] = image
        if path is None:
            return
        restored = []
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            while wanted and (record := _TFRecordUtil.read_record(f)) is not None:
                image_id, pixels = decode_staged(record)
                image = wanted.pop(image_id, None)
                if image is not None:
                    restored.append(image._replace(pixels=pixels, staged=""))
        if wanted:
            raise ValueError(f"the staging file {path} lacks {sorted(wanted)[:5]} ({len(wanted)} images)")
        yield from _with_vectors(restored)


class RestorePixels(beam.PTransform):
    """[DecodedImage] of one staging file (StagePixels; their vectors by StageVectors) -> each
    image with its pixels and vector, for the writer: one read of the file per batch."""

    def expand(self, batches):
        # Out: DecodedImage with pixels and vector, ``staged`` empty.
        return batches | "ReadStagingFile" >> beam.ParDo(_ReadStagingFile())
