"""Atypicality: how far the parts of an image's thumbnail lie from the principal subspaces of the
same parts of the other half of the images (their "face space", see :class:`PatchMoments`).

The one statistic that needs the rest of the data set. It sees what no pixel statistic does:
a scrambled or warped face, a foreign image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from pipelines.quality.measures import PATCH_SIDE, PATCHES_SIDE

# Images of one data set are alike (faces, aligned and lit alike), so each part of them varies
# little: the 8x8 patch at one place of a 32x32 grey thumbnail lies near a low-dimensional
# subspace of its own ("modular eigenspaces", Pentland et al. 1994). A patch far from its
# subspace is not like that part of the other images: a warped eye, a block out of place, a
# foreign picture. Local subspaces see what one subspace of the whole thumbnail misses (a mild
# warp changes every part a little; on the demo sets they found the global model's flags and
# more, docs/benchmarks.md section 7).
_PATCHES = (PATCHES_SIDE // PATCH_SIDE) ** 2
_PATCH_PIXELS = PATCH_SIDE * PATCH_SIDE
# The principal components kept at each place: as many as hold this share of its variance
# (the usual eigenfaces choice). The rest is what "atypical" measures.
FACE_SPACE_VARIANCE = 0.95
# An image is measured against the face space of the *other* fold: in its own, an odd image
# (noise, a scramble) is a large share of the variance and gets a component of its own, so
# it would look typical exactly when it is not (a small data set shows it at once).
FACE_SPACE_FOLDS = 2
# A fold's face space needs as many images as a patch has pixels: with fewer, each place's
# covariance has rank < 64 and its "residual" is rounding noise. Smaller folds get none, and
# their images no atypicality (a data set under ~130 images is not audited for it).
MIN_FOLD_IMAGES = _PATCH_PIXELS
# A patch's sd is never taken below 2 grey levels: a flat background with one pixel off by 1
# would otherwise be standardised into a full-size spike.
_MIN_PATCH_STD = 2.0
# Distances and residual variances are per pixel of patches standardised to about unit
# variance: 1% of that is the smallest residual a place is measured against, so a place whose
# subspace holds (nearly) all its variance keeps a meaningful ratio.
_RESIDUAL_FLOOR = 1e-2
# The most images the pipeline measures in one call of :func:`atypicality`.
ATYPICALITY_BATCH = 256


class FaceSpace(NamedTuple):
    """The standardised patches' mean, the projection off their principal subspace and the
    variance left outside it, per place."""

    mean: np.ndarray  # (places, 64)
    complement: np.ndarray  # (places, 64, 64): I - B Bᵀ, B the place's kept principal directions
    residual_variance: np.ndarray  # (places,): the mean variance per pixel outside the subspace


def standardised_patches(thumbnails: bytes) -> np.ndarray:
    """Concatenated PATCHES_SIDE² thumbnails -> (images, places, 64) float64 patches, each of mean 0
    and sd 1 (brightness and contrast are audited apart); sd below _MIN_PATCH_STD grey levels is
    divided by that instead, so a flat patch is all zeros and a nearly flat one stays small."""
    grid = PATCHES_SIDE // PATCH_SIDE
    x = np.frombuffer(thumbnails, np.uint8).astype(np.float64)
    x = x.reshape(-1, grid, PATCH_SIDE, grid, PATCH_SIDE).swapaxes(2, 3).reshape(-1, _PATCHES, _PATCH_PIXELS)
    x -= x.mean(axis=2, keepdims=True)
    x /= np.maximum(x.std(axis=2, keepdims=True), _MIN_PATCH_STD)
    return x


class PatchMoments:
    """Count, sum and sum of outer products of the standardised patches, per place.

    They merge, so the face space of any number of images costs one combine of 16 64x64
    matrices per fold, never their pixels on one worker. Thumbnails wait in a block of at most
    _BLOCK and are summed by one batched matrix product (an outer product per image costs 5x
    more).

    The sums are exact, so they are the same in any order, bundles or merges (float sums are
    not: the runner's bundling moved the face space, and every atypicality, in the last bits):
    each standardised value (|x| <= sqrt(63) < 8) is rounded to a multiple of 2^-_GRID_BITS
    first; then a product is a multiple of 2^-2·_GRID_BITS below 2^6 and any sum of them up to
    2^53 units of that multiple, here 2^25 images a fold, is exact in float64.
    """

    _BLOCK = 256
    _GRID_BITS = 11  # 2^-11 of a standard deviation: far below the _RESIDUAL_FLOOR
    MAX_IMAGES = 2**25

    def __init__(self) -> None:
        self.count = 0
        self.total = np.zeros((_PATCHES, _PATCH_PIXELS))
        self.outer = np.zeros((_PATCHES, _PATCH_PIXELS, _PATCH_PIXELS))
        self._pending: list[bytes] = []

    def add(self, thumbnail: bytes) -> PatchMoments:
        self._pending.append(thumbnail)
        if len(self._pending) >= self._BLOCK:
            self._flush()
        return self

    def merge(self, other: PatchMoments) -> PatchMoments:
        self._flush()
        other._flush()
        self.count += other.count
        self.total += other.total
        self.outer += other.outer
        return self

    def _flush(self) -> None:
        if self._pending:
            # (places, images, 64), contiguous: the product below is then one BLAS call per place.
            on_grid = np.round(standardised_patches(b"".join(self._pending)) * 2**self._GRID_BITS) / 2**self._GRID_BITS
            by_place = np.ascontiguousarray(on_grid.swapaxes(0, 1))
            self.count += by_place.shape[1]
            if self.count > self.MAX_IMAGES:
                raise ValueError(
                    f"a face-space fold of over {self.MAX_IMAGES} images: its sums would no longer be exact"
                )
            self.total += by_place.sum(axis=1)
            self.outer += by_place.swapaxes(1, 2) @ by_place
            self._pending = []

    def face_space(self) -> FaceSpace | None:
        """Each place's principal subspace holding FACE_SPACE_VARIANCE of its variance; None for
        fewer than MIN_FOLD_IMAGES images."""
        self._flush()
        if self.count < MIN_FOLD_IMAGES:
            return None
        mean = self.total / self.count
        covariance = self.outer / self.count - mean[:, :, None] * mean[:, None, :]
        variances, directions = np.linalg.eigh(covariance)  # ascending, per place
        variances, directions = variances[:, ::-1].clip(min=0), directions[:, :, ::-1]  # largest first
        share = np.cumsum(variances, axis=1) / np.maximum(variances.sum(axis=1, keepdims=True), 1e-300)
        # Per place; where every patch is alike (flat everywhere), none: any structure there is atypical.
        kept = np.where(variances.sum(axis=1) > 0, (share < FACE_SPACE_VARIANCE).sum(axis=1) + 1, 0)
        columns = np.arange(_PATCH_PIXELS)
        basis = np.where(columns[None, None, :] < kept[:, None, None], directions, 0.0)
        residual = np.where(columns[None, :] >= kept[:, None], variances, 0.0).sum(axis=1) / _PATCH_PIXELS
        return FaceSpace(mean, np.eye(_PATCH_PIXELS) - basis @ basis.swapaxes(1, 2), residual)


def atypicality(thumbnails: bytes, space: FaceSpace) -> np.ndarray:
    """Per image of the concatenated PATCHES_SIDE² ``thumbnails``, the mean over places of
    log(squared distance of the patch from its subspace / the subspace's residual variance),
    both floored at _RESIDUAL_FLOOR: about 0 for an image as typical as the average one.

    The ratio is the "distance from feature space" over its expected value (Moghaddam and
    Pentland 1997), so a place that is noisy in every image (a textured background) does not
    outweigh one that is not. Many images at once (ATYPICALITY_BATCH): one at a time, numpy's
    overheads cost 5x the arithmetic.

    Always in blocks of ATYPICALITY_BATCH rows, the last one padded with flat patches: the
    BLAS product rounds differently for some row counts (1, 13, 23, ... measured), so a fixed
    count gives an image the same value to the last bit whatever batch or bundle it came in."""
    patches = standardised_patches(thumbnails)
    count = len(patches)
    padding = np.zeros((-count % ATYPICALITY_BATCH, *patches.shape[1:]))
    scores = []
    for block in np.split(np.concatenate([patches, padding]), max(1, (count + len(padding)) // ATYPICALITY_BATCH)):
        # (places, images, 64), contiguous: one BLAS product per place below.
        centred = np.ascontiguousarray((block - space.mean).swapaxes(0, 1))
        residual = centred @ space.complement  # the complement is symmetric
        distance = np.square(residual).mean(axis=2)  # (places, images)
        ratio = (_RESIDUAL_FLOOR + distance) / (_RESIDUAL_FLOOR + space.residual_variance[:, None])
        scores.append(np.log(ratio).mean(axis=0))
    return np.concatenate(scores)[:count]


def face_space_fold(content_hash: int) -> int:
    """The image's fold, from its content hash: the same on every worker and every run."""
    return content_hash % FACE_SPACE_FOLDS


def with_atypicality(images: Sequence[Any], spaces: Mapping[int, FaceSpace | None]) -> list[Any]:
    """``images`` (each with ``quality`` and ``content_hash``, as DecodedImage), their quality's
    atypicality measured in the face space of the fold after their own (unchanged where that
    fold has none)."""
    by_space: dict[int, list[int]] = {}
    for index, image in enumerate(images):
        by_space.setdefault((face_space_fold(image.content_hash) + 1) % FACE_SPACE_FOLDS, []).append(index)
    measured = list(images)
    for fold, indices in by_space.items():
        space = spaces.get(fold)
        if space is None:
            continue
        scores = atypicality(b"".join(images[i].quality.patches for i in indices), space)
        for i, score in zip(indices, scores, strict=True):
            measured[i] = images[i]._replace(quality=images[i].quality._replace(atypicality=float(score)))
    return measured
