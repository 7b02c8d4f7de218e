"""The decode cache (``--cache_dir``): resized pixels by content hash, reused across runs.

An entry is keyed by the SHA-256 of the file's bytes and everything that changes the pixels
(image size, colour mode, interpolation, decoder versions, :data:`CACHE_VERSION`), never by
labels, overrides, exclusions, splits, seed or balancing: a rerun that changes only those
decodes nothing. The file's bytes are still read on a hit, to hash them (cheap beside a decode).

Entry layout (all integers big-endian)::

    magic b"FPDC" | format u16 | height u32 | width u32 | channels u32
    | original width u32 | original height u32 | payload length u64
    | SHA-256 of (the entry's key + the header before it + payload) 32 bytes
    | payload: uint8 pixels, row-major

The checksum covers the key, so an entry is valid only under its own name: two sound entries
swapped on disk (two ids would get each other's pixels) fail the check and are recomputed.

Workers write entries under a unique temp name and rename it into place, so a reader never
sees half an entry and concurrent writers of one key are harmless (the same bytes win). An
entry that fails any check is not trusted: :meth:`DecodeCache.get` reports it as corrupt and
the caller recomputes it and writes it again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines import atomic, output_dir, paths
from pipelines.cli import usage_error
from pipelines.decoding import CachedPixels

# Bump whenever the decode or resize changes the pixels without a library version changing.
CACHE_VERSION = "1"
INTERPOLATION = "INTER_AREA"  # What pipelines.transforms.decode_and_resize resizes with.
_MAGIC = b"FPDC"
_FORMAT = 2  # 2: the checksum covers the key (format 1 entries are recomputed).
_FIELDS = struct.Struct(">4sHIIIIIQ")
_DIGEST_BYTES = 32
_SUFFIX = ".fpdc"


class CorruptEntry(ValueError):
    """A cache entry whose header, length or checksum does not check out."""


def decoder_version() -> str:
    """The versions of what computes the pixels: part of every key."""
    import cv2
    import simplejpeg

    return f"opencv={cv2.__version__};simplejpeg={simplejpeg.__version__};facepipe_cache={CACHE_VERSION}"


def cache_key(content_sha256: bytes, *, size: tuple[int, int], color_mode: str, decoder: str) -> str:
    """The hex key of an image's entry: its content hash and every setting that changes its pixels."""
    parts = [content_sha256.hex(), f"{size[0]}x{size[1]}", color_mode, INTERPOLATION, decoder]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def _checksum(key: str, header: bytes, payload: bytes) -> bytes:
    return hashlib.sha256(key.encode("ascii") + header + payload).digest()


def encode_entry(entry: CachedPixels, key: str) -> bytes:
    """The bytes of the entry file of ``key`` (header, checksum, payload)."""
    pixels = np.ascontiguousarray(entry.pixels, dtype=np.uint8)
    height, width, channels = pixels.shape
    payload = pixels.tobytes()
    header = _FIELDS.pack(_MAGIC, _FORMAT, height, width, channels, *entry.original_size, len(payload))
    return header + _checksum(key, header, payload) + payload


def decode_entry(data: bytes, key: str) -> CachedPixels:
    """The bytes of the entry file of ``key`` -> CachedPixels; CorruptEntry when anything does not
    check out, also when they are another key's entry."""
    start = _FIELDS.size + _DIGEST_BYTES
    if len(data) < start:
        raise CorruptEntry(f"{len(data)} bytes: shorter than the header")
    header, digest, payload = data[: _FIELDS.size], data[_FIELDS.size : start], data[start:]
    magic, version, height, width, channels, original_width, original_height, length = _FIELDS.unpack(header)
    if magic != _MAGIC or version != _FORMAT:
        raise CorruptEntry(f"magic {magic!r} format {version}")
    if length != len(payload) or length != height * width * channels:
        raise CorruptEntry(f"payload {len(payload)} bytes, header says {length} for {height}x{width}x{channels}")
    if _checksum(key, header, payload) != digest:
        raise CorruptEntry("checksum mismatch (damaged, or another key's entry)")
    pixels = np.frombuffer(payload, np.uint8).reshape(height, width, channels)
    return CachedPixels(pixels, (original_width, original_height))


class DecodeCache:
    """Entries under ``cache_dir`` on any Beam filesystem (``<dir>/<key[:2]>/<key>.fpdc``)."""

    def __init__(self, cache_dir: str, *, size: tuple[int, int], color_mode: str):
        self._dir = cache_dir
        self._size = size
        self._color_mode = color_mode
        self._decoder = decoder_version()
        self._write_failed = False  # After the first failed write, the others are not logged.

    def key(self, content_sha256: bytes) -> str:
        return cache_key(content_sha256, size=self._size, color_mode=self._color_mode, decoder=self._decoder)

    def path(self, content_sha256: bytes) -> str:
        key = self.key(content_sha256)
        return FileSystems.join(self._dir, key[:2], key + _SUFFIX)

    def get(self, content_sha256: bytes) -> CachedPixels | None:
        """The entry, or None when there is none; CorruptEntry when there is one but it is broken."""
        path = self.path(content_sha256)
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                data = f.read()
        except Exception:  # Not there (each filesystem raises its own type): a miss.
            return None
        entry = decode_entry(data, self.key(content_sha256))
        if entry.pixels.shape[:2] != (self._size[1], self._size[0]):
            raise CorruptEntry(f"pixels {entry.pixels.shape}, expected {self._size[1]}x{self._size[0]}")
        return entry

    def put(self, content_sha256: bytes, entry: CachedPixels) -> None:
        """Writes an entry atomically (temp name, then rename); a failure only logs: the run goes on."""
        path = self.path(content_sha256)
        try:
            # No fsync: an entry lost in a power cut is a miss, and one per entry would cost the decode's time.
            atomic.write(path, encode_entry(entry, self.key(content_sha256)), durable=False)
        except Exception as e:  # A full disk or a read-only cache costs speed, never the job.
            if not self._write_failed:  # One line a worker, not one an image.
                self._write_failed = True
                logging.warning(
                    "decode cache: could not write %s: %s; the run goes on, further failed writes are not logged",
                    path,
                    e,
                )


def check_cache_dir(cache_dir: str, output: str, inputs: tuple[str, ...]) -> None:
    """Usage error when ``cache_dir`` overlaps the output or an input (a glob stands for its folder):
    inside the output, ``--overwrite`` could meet it; inside an input, the listing would."""
    if output_dir.overlaps(cache_dir, output):
        usage_error(f"--cache_dir {cache_dir} overlaps --output {output}: choose a cache folder outside the output")
    for given in inputs:
        if output_dir.overlaps(cache_dir, given):
            usage_error(f"--cache_dir {cache_dir} overlaps the input {given}: choose a cache folder outside the inputs")
    if not paths.is_remote(cache_dir):  # Else every entry's write would fail, one warning an image.
        existing = os.path.abspath(cache_dir)
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            usage_error(f"--cache_dir {cache_dir}: {existing} is a file, not a folder: give a folder for the cache")
