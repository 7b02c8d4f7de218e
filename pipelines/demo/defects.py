"""The defects the demo injects into its images: distortions beyond use, and near copies."""

from __future__ import annotations

import cv2
import numpy as np


def _scramble(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shuffle an 8x8 grid of blocks."""
    n, tile = 8, img.shape[0] // 8
    side = n * tile
    blocks = img[:side, :side].reshape(n, tile, n, tile, 3).swapaxes(1, 2).reshape(n * n, tile, tile, 3)
    out = img.copy()
    shuffled = blocks[rng.permutation(n * n)]
    out[:side, :side] = shuffled.reshape(n, n, tile, tile, 3).swapaxes(1, 2).reshape(side, side, 3)
    return out


def _smear(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smear along one axis (squash to 1/40, stretch back)."""
    size = img.shape[0]
    horizontal = rng.random() < 0.5
    squashed = (max(1, size // 40), size) if horizontal else (size, max(1, size // 40))
    small = cv2.resize(img, squashed, interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def _warp(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Heavy sinusoidal warp."""
    size = img.shape[0]
    amplitude = size * rng.uniform(0.05, 0.1)
    period = size / rng.uniform(1.5, 4.0)
    grid = np.arange(size, dtype=np.float32)
    map_x = (grid[None, :] + amplitude * np.sin(2 * np.pi * grid[:, None] / period)).astype(np.float32)
    map_y = (grid[:, None] + amplitude * np.cos(2 * np.pi * grid[None, :] / period)).astype(np.float32)
    return cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


_DISTORTIONS = (_scramble, _smear, _warp)


def distort(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Corrupt an image beyond use (scrambled blocks, smear or warp); it stays a valid image."""
    return _DISTORTIONS[rng.integers(len(_DISTORTIONS))](img, rng)


def duplicate_copy(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A near copy of ``rgb``: re-encoded as JPEG, cropped by 2-4% (centred) or brightened."""
    if kind == "reencoded":
        _, data = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 80))])
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if kind == "cropped":
        size = rgb.shape[0]
        margin = max(1, round(size * rng.uniform(0.02, 0.04) / 2))
        return cv2.resize(rgb[margin:-margin, margin:-margin], (size, size), interpolation=cv2.INTER_AREA)
    if kind == "brightened":
        return cv2.convertScaleAbs(rgb, alpha=rng.uniform(1.04, 1.08), beta=3)
    raise ValueError(f"unknown duplicate kind {kind!r}")
