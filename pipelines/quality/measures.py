"""Per-image quality measures: statistics of the resized pixels, the perceptual hash, thumbnails.

The statistics are computed from the *resized* pixels the pipeline writes and the original
(width, height) from the file's header, never from the file's full-resolution pixels: a
decode cache that stores resized pixels and the original size can then recompute the audit
on a cache hit without reading or decoding the file again. The content hash (SHA-256 of the
file bytes) is the one :class:`pipelines.records.DecodedImage` already carries.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipelines.records import ImageQuality

HASH_BITS = 64
THUMBNAIL_SIDE = 16
PATCHES_SIDE = 32  # The grey image the hash's DCT and the atypicality's patches are made of.
PATCH_SIDE = 8  # PATCHES_SIDE cut into 4x4 patches.


def _grey(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    return pixels.reshape(pixels.shape[0], pixels.shape[1])


def small_grey(grey: np.ndarray) -> np.ndarray:
    """The grey image at PATCHES_SIDE² (area interpolation): what the hash and the patches are made of."""
    return cv2.resize(grey, (PATCHES_SIDE, PATCHES_SIDE), interpolation=cv2.INTER_AREA)


def phash(small: np.ndarray) -> int:
    """64-bit perceptual hash of the :func:`small_grey` image: the 8x8 lowest frequencies of its
    32x32 DCT, one bit per "above their median". Unlike a dHash it barely moves under
    re-encoding, brightening or a slight crop of the smooth demo faces (measured: 0-6 bits,
    different faces 12 or more)."""
    low = cv2.dct(small.astype(np.float32))[:8, :8].ravel()
    # The median of the 63 terms after DC (overall brightness does not set it); a partition
    # finds it 3x faster than np.median.
    bits = low > np.partition(low[1:], 31)[31]
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def thumbnail(grey: np.ndarray) -> bytes:
    """The grey image at THUMBNAIL_SIDE x THUMBNAIL_SIDE (area interpolation), as bytes."""
    return cv2.resize(grey, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA).tobytes()


def image_quality(pixels: np.ndarray, original_size: tuple[int, int]) -> ImageQuality:
    """The audit of one image: ``pixels`` uint8 HxWxC as written, ``original_size`` (width, height)."""
    # OpenCV's reductions, not numpy's: the audit must stay small beside the decode (docs/benchmarks.md, section 7).
    grey = _grey(pixels)
    width, height = original_size
    counts = np.bincount(grey.ravel(), minlength=256)
    # A blur along one direction removes the gradients across it alone; the +1 keeps flat
    # images (no gradients either way) at 0.
    energy_x = cv2.norm(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.NORM_L2SQR) / grey.size
    energy_y = cv2.norm(cv2.Sobel(grey, cv2.CV_32F, 0, 1), cv2.NORM_L2SQR) / grey.size
    mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(grey))
    laplacian_std = float(cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_64F))[1][0, 0])
    small = small_grey(grey)
    return ImageQuality(
        width=int(width),
        height=int(height),
        aspect_ratio=width / height,
        sharpness=laplacian_std**2,
        anisotropy=math.log((energy_x + 1) / (energy_y + 1)),
        brightness=mean,
        contrast=std,
        saturated=float(np.count_nonzero((pixels == 0) | (pixels == 255)) / pixels.size),
        constancy=float(counts.max() / grey.size),
        phash=phash(small),
        thumbnail=thumbnail(grey),
        patches=small.tobytes(),
    )
