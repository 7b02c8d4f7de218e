"""The one image decoder: encoded PNG/JPEG bytes -> checked, resized uint8 pixels, or the reason not.

Every place facepipe reads an image uses it, so that each rejects exactly what the others
reject, with the same reason: the pipeline (pipelines/transforms.py, its dead letters), the
review's thumbnails, ``predict`` and ``find_label_issues``' suggested labels
(:func:`check_image` before the serving graph decodes the bytes).

EXIF orientation is ignored everywhere: pixels are used as stored, as the serving graph's
``tf.io.decode_image`` (which cannot read EXIF) sees them. The review's thumbnails are
re-encoded without EXIF, so the browser shows them as the model sees them too.

Beam- and TensorFlow-free: the trainer imports it.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import cv2
import numpy as np
import simplejpeg
from PIL import Image

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class CachedPixels(NamedTuple):
    """A decoded image: the resized pixels and the original image's size (a decode-cache entry)."""

    pixels: np.ndarray  # uint8, height x width x channels
    original_size: tuple[int, int]  # (width, height) of the image before resizing


class UndecodableImage(ValueError):
    """An image that cannot be used; ``reason`` is the dead-letter reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_container(data: bytes) -> str:
    """'png' or 'jpeg' after cheap checks on the bytes; raises UndecodableImage otherwise."""
    if not data:
        raise UndecodableImage("zero_bytes")
    if data.startswith(_PNG_MAGIC):
        # Every complete PNG ends with an IEND chunk (12 bytes incl. its CRC).
        if b"IEND" not in data[-16:]:
            end = data.rfind(b"IEND")
            if end < 0:
                raise UndecodableImage("truncated", "PNG without IEND chunk")
            # The chunk type, then its 4-byte CRC: whatever follows is not part of the image.
            raise UndecodableImage("undecodable", f"{len(data) - end - 8} bytes after the PNG's IEND chunk")
        return "png"
    if data.startswith(_JPEG_MAGIC):
        # A complete JPEG ends with the EOI marker, possibly followed by a little padding.
        if b"\xff\xd9" not in data[-1024:]:
            raise UndecodableImage("truncated", "JPEG without end-of-image marker")
        return "jpeg"
    raise UndecodableImage("not_an_image", f"starts with {data[:8]!r}")


def image_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header alone, without decoding pixels."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            return header.size
    except Image.DecompressionBombError as e:
        raise UndecodableImage("too_large", str(e)) from e
    except Exception as e:  # PIL raises many types for broken headers.
        raise UndecodableImage("undecodable", f"header: {type(e).__name__}: {e}") from e


def to_uint8_color(image: np.ndarray, color_mode: str) -> np.ndarray:
    """An OpenCV-decoded array (8 or 16 bit; grey, BGR or BGRA — OpenCV expands palettes and
    grey+alpha to BGR(A)) -> uint8 RGB or grey, HxWxC."""
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise UndecodableImage("undecodable", f"unsupported pixel type {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 4:  # Alpha is dropped, as tf.io.decode_image(channels=3) does.
        image = image[:, :, :3]
    if color_mode == "grayscale":
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return image[:, :, np.newaxis]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_jpeg(data: bytes, *, color_mode: str, at_least: tuple[int, int]) -> np.ndarray:
    """JPEG bytes (YCbCr, grey or CMYK) -> uint8 RGB or grey HxWxC, decoded by libjpeg-turbo
    DCT-scaled down as far as ``at_least`` (width, height) allows: a large photo costs a
    fraction of a full decode.

    Strict: libjpeg's warnings about corrupt data are errors here. A truncated JPEG with an
    end-of-image marker glued on decodes "successfully" with OpenCV or PIL (the missing rows
    flat grey, a warning on stderr), and would go into the training data.
    """
    try:
        return simplejpeg.decode_jpeg(
            data,
            colorspace="gray" if color_mode == "grayscale" else "rgb",
            min_width=at_least[0],
            min_height=at_least[1],
            strict=True,
        )
    except ValueError as e:
        if "Corrupt JPEG" in str(e) or "Premature end" in str(e):
            raise UndecodableImage("corrupt_jpeg", str(e)) from e
        raise UndecodableImage("undecodable", f"JPEG: {e}") from e


def check_dimensions(width: int, height: int, *, max_pixels: int, min_side: int) -> None:
    """UndecodableImage when an image of ``width`` x ``height`` may not be used."""
    if width * height > max_pixels:
        raise UndecodableImage("too_large", f"{width}x{height} > {max_pixels} pixels")
    if min(width, height) < min_side:  # Upscaled, it would be a blur of a few pixels, not a face.
        raise UndecodableImage("too_small", f"{width}x{height}: a side < --min_side {min_side} pixels")


def decode_with_size(
    data: bytes, *, size: tuple[int, int], color_mode: str, max_pixels: int, min_side: int = 1
) -> CachedPixels:
    """Encoded PNG/JPEG bytes -> the resized uint8 pixels (height, width, channels) and the
    original (width, height); UndecodableImage on bad input."""
    container = check_container(data)
    width, height = image_dimensions(data)
    check_dimensions(width, height, max_pixels=max_pixels, min_side=min_side)
    if container == "jpeg":
        image = decode_jpeg(data, color_mode=color_mode, at_least=size)
    else:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise UndecodableImage("undecodable", f"OpenCV could not decode this {container}")
        if color_mode == "rgb" and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            # BGR -> RGB only swaps channels, and the resize treats each channel alike: swapping
            # the resized image gives the same pixels for a fraction of the work (section 1 of
            # docs/benchmarks.md). A grey conversion or a 16-bit scaling rounds: not reordered.
            image = _resized(image, size)
        image = to_uint8_color(image, color_mode)
    return CachedPixels(np.ascontiguousarray(_resized(image, size)), (width, height))


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (HxW or HxWxC) at ``size`` (width, height), HxWxC; itself when already that size."""
    if (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)  # cache.INTERPOLATION
        if image.ndim == 2:
            image = image[:, :, np.newaxis]
    return image


def decode_and_resize(
    data: bytes, *, size: tuple[int, int], color_mode: str, max_pixels: int, min_side: int = 1
) -> np.ndarray:
    """Encoded PNG/JPEG bytes -> uint8 array (height, width, channels); UndecodableImage on bad input."""
    return decode_with_size(data, size=size, color_mode=color_mode, max_pixels=max_pixels, min_side=min_side).pixels


def check_image(data: bytes, *, max_pixels: int, min_side: int) -> tuple[int, int]:
    """The pipeline's checks and its full, strict decode, the pixels thrown away: the image's
    (width, height), or UndecodableImage with the reason its dead letter would give."""
    return decode_with_size(data, size=(1, 1), color_mode="rgb", max_pixels=max_pixels, min_side=min_side).original_size
