"""Thumbnails: small JPEGs decoded by the pipeline's decoder, in a bounded LRU cache."""

from __future__ import annotations

import collections
import threading

import cv2
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines import decoding, features
from pipelines.paths import not_a_file_reason
from pipelines.review.listing import Item, is_under

THUMB_JPEG_QUALITY = 85


def make_thumbnail(data: bytes, *, side: int, max_pixels: int, min_side: int = 1) -> bytes:
    """Encoded image -> JPEG whose longer side is at most ``side`` (never enlarged).

    Decoded by the pipeline's decoder (same checks, same failure reasons, INTER_AREA; with the
    run's ``max_pixels`` and ``min_side`` it refuses exactly the images the pipeline refuses);
    raises decoding.UndecodableImage. EXIF orientation is ignored, as everywhere (pipelines/decoding.py).
    """
    decoding.check_container(data)
    width, height = decoding.image_dimensions(data)
    scale = min(1.0, side / max(width, height, 1))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = decoding.decode_and_resize(data, size=size, color_mode="rgb", max_pixels=max_pixels, min_side=min_side)
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, THUMB_JPEG_QUALITY]
    )
    if not ok:
        raise decoding.UndecodableImage("undecodable", "JPEG encoding failed")
    return encoded.tobytes()


def placeholder(reason: str, *, side: int) -> bytes:
    """A grey JPEG with a cross and the reason written on it, for images that cannot be shown."""
    canvas = np.full((side, side, 3), 48, np.uint8)
    cv2.line(canvas, (0, 0), (side - 1, side - 1), (70, 70, 150), 2)
    cv2.line(canvas, (0, side - 1), (side - 1, 0), (70, 70, 150), 2)
    width = max(8, side // 8)
    lines = [reason[i : i + width] for i in range(0, min(len(reason), width * 5), width)]
    for n, line in enumerate(lines):
        y = side // 2 - 8 * len(lines) + 16 * n + 8
        cv2.putText(canvas, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (240, 240, 240), 1, cv2.LINE_AA)
    return cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, THUMB_JPEG_QUALITY])[1].tobytes()


class Thumbnails:
    """Thumbnails made on demand from the originals, in a bounded in-memory LRU cache."""

    def __init__(
        self,
        *,
        root: str,
        side: int = 160,
        capacity: int = 2000,
        max_pixels: int = features.MAX_PIXELS,
        min_side: int = 1,
    ):
        self.root, self.side, self.capacity, self.max_pixels = root, side, capacity, max_pixels
        self.min_side = min_side
        self._cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, item: Item) -> tuple[bytes, str]:
        """(JPEG, error): a thumbnail and "", or a placeholder and why the image cannot be shown."""
        with self._lock:
            if item.id in self._cache:
                self._cache.move_to_end(item.id)
                return self._cache[item.id], ""
        try:
            jpeg = make_thumbnail(
                self._read(item.path), side=self.side, max_pixels=self.max_pixels, min_side=self.min_side
            )
        except decoding.UndecodableImage as e:
            error = ": ".join(p for p in (e.reason, e.detail) if p)
            return placeholder(error, side=self.side), error
        except OSError as e:  # Missing or unreadable (Beam's BeamIOError is an OSError too).
            error = f"read_error: {type(e).__name__}"
            return placeholder(error, side=self.side), error
        except (cv2.error, ValueError, MemoryError) as e:  # The decoder's own failures.
            error = f"undecodable: {type(e).__name__}"
            return placeholder(error, side=self.side), error
        with self._lock:  # Errors are not cached: a file fixed on disk shows on the next visit.
            self._cache[item.id] = jpeg
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return jpeg, ""

    def _read(self, path: str) -> bytes:
        if not is_under(path, self.root):  # The index was checked; a symlink may have changed since.
            raise decoding.UndecodableImage("outside_images", "the file resolves to outside --images")
        if reason := not_a_file_reason(path):  # A FIFO would block the read forever.
            raise decoding.UndecodableImage(reason)
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read()
