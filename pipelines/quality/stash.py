"""The audit's pixels (thumbnail and patches) wait on disk while its records wait in the runner.

The audit's records wait at stage boundaries for what needs the whole data set (the face
spaces, the medians, the duplicate candidates); a local runner holds them in memory until then.
Their thumbnail and patches (1.3 KB an image) leave them at the audit's start, written to files
of their own beside the staged pixels (:class:`StashPixels`); the records carry where they are
(:class:`Stashed`) and the two steps that need them read them back by offset
(:func:`read_stashed`). The files go when the run ends, with the staging directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines.records import DecodedImage, ImageQuality
from pipelines.staging import BundleFiles, pack_fields, read_located, unpack_fields

# Records per stash file (1.3 KB each): a file is read back by offset.
RECORDS_PER_FILE = 10_000


class Stashed(NamedTuple):
    """Where an image's thumbnail and patches wait: the file's name in the stash directory, the record's offset and length."""

    name: str
    offset: int
    length: int


def encode_stashed(image_id: str, thumbnail: bytes, patches: bytes) -> bytes:
    """The stash record of an image: its id (checked on the way back), thumbnail and patches."""
    return pack_fields(image_id.encode("utf-8"), thumbnail, patches)


def decode_stashed(record: bytes) -> tuple[str, bytes, bytes]:
    """(id, thumbnail, patches) of a stash record."""
    image_id, thumbnail, patches = unpack_fields(record, 3, "stash record")
    return image_id.decode("utf-8"), thumbnail, patches


class AuditedImage(NamedTuple):
    """An image as the audit carries it across its stage boundaries: what its steps read, its
    quality without thumbnail and patches (b""), and where those wait."""

    id: str
    split: str
    label: int | None
    content_hash: int
    quality: ImageQuality
    stashed: Stashed | None  # None once no step after needs the thumbnail or patches


class StashPixels(beam.DoFn):
    """DecodedImage (with ``quality``) -> AuditedImage, its thumbnail and patches in a stash file.
    Each bundle writes its own files (RECORDS_PER_FILE records at most), closed at the bundle's
    end, before its outputs count: a retried bundle writes new ones."""

    def __init__(self, directory: str):
        self._dir = directory

    def start_bundle(self) -> None:
        self._files = BundleFiles(self._dir, ".audit", RECORDS_PER_FILE)

    def process(self, image: DecodedImage) -> Iterator[AuditedImage]:
        quality = image.quality
        record = encode_stashed(image.id, quality.thumbnail, quality.patches)
        path, offset = self._files.write(record)
        yield AuditedImage(
            image.id,
            image.split,
            image.label,
            image.content_hash,
            quality._replace(thumbnail=b"", patches=b""),
            Stashed(FileSystems.split(path)[1], offset, len(record)),
        )

    def finish_bundle(self) -> None:
        self._files.close()


def read_stashed(directory: str, wanted: Iterable[tuple[str, Stashed]]) -> dict[Stashed, tuple[bytes, bytes]]:
    """(id, Stashed) pairs -> {Stashed: (thumbnail, patches)}: one open per stash file, by offset;
    a record that is not the id's is an error."""
    ids = {stashed: image_id for image_id, stashed in wanted}
    found = {}
    for stashed, record in read_located((s, FileSystems.join(directory, s.name), s.offset, s.length) for s in ids):
        decoded = decode_stashed(record) if len(record) == stashed.length else None
        if decoded is None or decoded[0] != ids[stashed]:
            path = FileSystems.join(directory, stashed.name)
            raise ValueError(f"the stash file {path} has no record of {ids[stashed]!r} at {stashed.offset}")
        found[stashed] = decoded[1:]
    return found
