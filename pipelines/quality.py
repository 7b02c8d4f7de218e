"""Image-quality audit: per-image statistics, robust outliers and (near-)duplicate groups.

The statistics are computed from the *resized* pixels the pipeline writes and the original
(width, height) from the file's header, never from the file's full-resolution pixels: a
decode cache that stores resized pixels and the original size can then recompute the audit
on a cache hit without reading or decoding the file again. The content hash (SHA-256 of the
file bytes) is the one :class:`pipelines.transforms.DecodedImage` already carries.

Near duplicates need two checks: their perceptual hashes within ``distance`` bits (found by LSH
bands) *and* their 16x16 grey thumbnails correlated at ``similarity`` or more. The hash alone
joins different faces of one layout (the demo's smooth synthetic faces, 55 false groups of 70
at distance 6 in docs/benchmarks.md section 7); the thumbnails tell them apart.

One statistic needs the rest of the data set: ``atypicality``, how far the parts of an
image's thumbnail lie from the principal subspaces of the same parts of the other half of the
images (their "face space", see :class:`PatchMoments`). It sees what no pixel statistic does:
a scrambled or warped face, a foreign image.

Plain numpy/cv2 functions here, tested eagerly; :class:`AuditQuality` wires them into Beam.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.stats import ApproximateQuantilesCombineFn

from pipelines.labels import UNLABELLED_SPLIT

NAMESPACE = "facepipe.quality"
HASH_BITS = 64
THUMBNAIL_SIDE = 16
PATCHES_SIDE = 32  # The grey image the hash's DCT and the atypicality's patches are made of.
PATCH_SIDE = 8  # PATCHES_SIDE cut into 4x4 patches.
# Audited statistic -> (reason when far below the median, reason when far above).
OUTLIER_REASONS: dict[str, tuple[str | None, str]] = {
    "sharpness": ("blurry", "oversharp"),
    "anisotropy": ("directional_blur", "directional_blur"),
    "brightness": ("dark", "bright"),
    "contrast": ("low_contrast", "high_contrast"),
    "saturated": (None, "saturated"),
    "constancy": (None, "constant"),
    "atypicality": (None, "atypical"),
}
# Smallest MAD used per statistic: where nearly every image agrees (no saturated pixels at
# all, say), the MAD is 0 and any difference would be "infinitely" far out.
# Constancy's floor is 5% of the pixels: flat backgrounds make a few percent of one grey value
# common in clean photos (26 of 1485 clean demo faces were "constant" with a 0.5% floor).
_MAD_FLOORS = {
    "sharpness": 0.05,
    "anisotropy": 0.05,
    "brightness": 1.0,
    "contrast": 1.0,
    "saturated": 0.005,
    "constancy": 0.05,
    "atypicality": 0.05,
}
_MAD_TO_SIGMA = 0.6745


class ImageQuality(NamedTuple):
    """What the audit knows of one image: a few numbers, no pixels."""

    width: int  # original, from the header
    height: int
    aspect_ratio: float  # width / height of the original
    sharpness: float  # variance of the Laplacian of the resized grey image
    anisotropy: float  # log of the horizontal / vertical gradient energies: far off by motion blur, smears
    brightness: float  # mean grey value, 0-255
    contrast: float  # std of the grey values
    saturated: float  # share of channel values that are 0 or 255
    constancy: float  # share of the most common grey value (1.0: one colour)
    phash: int  # 64-bit perceptual hash (DCT)
    thumbnail: bytes  # THUMBNAIL_SIDE² grey uint8: the near-duplicate check beside the hash
    patches: bytes  # PATCHES_SIDE² grey uint8: what the atypicality measures
    # How far the patches lie from the other fold's face space (:func:`atypicality`): set by
    # the audit once the whole data set is seen (:func:`with_atypicality`); NaN until then.
    atypicality: float = math.nan


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


def similarity(a: bytes, b: bytes) -> float:
    """Pearson correlation of two thumbnails, in [-1, 1]: blind to brightness and contrast
    changes (a brightened copy stays 1.0), near 1 for re-encoded or slightly cropped copies.
    Two flat thumbnails are alike (1.0); a flat one and another are not (0.0)."""
    x = np.frombuffer(a, np.uint8).astype(np.float64)
    y = np.frombuffer(b, np.uint8).astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    norms = math.sqrt(float(x @ x) * float(y @ y))
    if norms == 0:
        return 1.0 if not x.any() and not y.any() else 0.0
    return float(x @ y) / norms


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


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def robust_values(quality: ImageQuality) -> dict[str, float]:
    """The audited statistics on the scale their z-scores use (sharpness is heavy-tailed: log)."""
    values = {
        "sharpness": math.log1p(quality.sharpness),
        "anisotropy": quality.anisotropy,
        "brightness": quality.brightness,
        "contrast": quality.contrast,
        "saturated": quality.saturated,
        "constancy": quality.constancy,
    }
    if not math.isnan(quality.atypicality):
        values["atypicality"] = quality.atypicality
    return values


def robust_z(values: Mapping[str, float], medians: Mapping[str, float], mads: Mapping[str, float]) -> dict[str, float]:
    """0.6745 (x - median) / MAD per statistic (the MAD floored, see ``_MAD_FLOORS``)."""
    return {
        name: _MAD_TO_SIGMA * (value - medians[name]) / max(mads[name], _MAD_FLOORS[name])
        for name, value in values.items()
        if name in medians and name in mads
    }


def outlier_reasons(z: Mapping[str, float], threshold: float) -> list[str]:
    """The reasons (``blurry``, ``constant``, ...) for the z-scores beyond ``threshold``."""
    reasons = []
    for name, score in sorted(z.items()):
        low, high = OUTLIER_REASONS[name]
        if score > threshold:
            reasons.append(high)
        elif score < -threshold and low:
            reasons.append(low)
    return reasons


# --- Face space ------------------------------------------------------------------------

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


# --- Duplicates ------------------------------------------------------------------------


class Member(NamedTuple):
    """An image as the duplicate search sees it (its thumbnail travels apart, see :class:`AuditQuality`)."""

    id: str
    split: str
    content_hash: int
    phash: int


def bands(phash: int, distance: int) -> list[tuple[int, int]]:
    """(band index, band value) of ``phash`` split into ``distance + 1`` bands of ~64/(k+1) bits.

    Pigeonhole: two hashes that differ in at most ``distance`` bits agree on at least one band,
    so grouping by every band finds every such pair (and some farther ones, checked after).
    """
    count = distance + 1
    edges = [round(i * HASH_BITS / count) for i in range(count + 1)]
    return [(i, (phash >> lo) & ((1 << (hi - lo)) - 1)) for i, (lo, hi) in enumerate(itertools.pairwise(edges))]


def bucket_pairs(members: Iterable[Member], distance: int) -> Iterator[tuple[Member, Member]]:
    """Pairs (lower id first) of one LSH bucket's members whose hashes are within ``distance`` bits."""
    ordered = sorted(set(members), key=lambda m: id_order(m.id))
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if hamming(a.phash, b.phash) <= distance:
                yield a, b


def alike_pair(ends: Iterable[tuple[Member, bytes]], min_similarity: float) -> list[tuple[Member, Member]]:
    """A candidate pair's two (Member, thumbnail) -> [the pair, lower id first] when the thumbnails
    correlate at ``min_similarity`` or more, else []. An end may come more than once (the pair
    was in several buckets)."""
    thumbnails = dict(ends)
    a, b = sorted(thumbnails, key=lambda m: id_order(m.id))
    return [(a, b)] if similarity(thumbnails[a], thumbnails[b]) >= min_similarity else []


def id_order(image_id: str) -> tuple[int, str]:
    """Ids in their natural order ("2" before "10"): the lowest of a group is kept."""
    return len(image_id), image_id


def duplicate_groups(edges: Iterable[tuple[Member, Member]]) -> list[dict[str, Any]]:
    """Connected components of the edges (union-find), as the groups written to ``quality/``."""
    parent: dict[str, str] = {}
    members: dict[str, Member] = {}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        for m in (a, b):
            members[m.id] = m
            parent.setdefault(m.id, m.id)
        ra, rb = root(a.id), root(b.id)
        if ra != rb:
            parent[max(ra, rb, key=id_order)] = min(ra, rb, key=id_order)
    components: dict[str, list[Member]] = {}
    for image_id in parent:
        components.setdefault(root(image_id), []).append(members[image_id])
    groups = []
    for component in components.values():
        component.sort(key=lambda m: id_order(m.id))
        # The kept one is the lowest id among the written (labelled) members, if any.
        kept = min(component, key=lambda m: (m.split == UNLABELLED_SPLIT, id_order(m.id)))
        splits = sorted({m.split for m in component})
        groups.append(
            {
                "members": [m.id for m in component],
                "member_splits": [m.split for m in component],
                "splits": splits,
                "kind": "exact" if len({m.content_hash for m in component}) == 1 else "near",
                "kept": kept.id,
                "leakage": len(splits) > 1,
            }
        )
    return sorted(groups, key=lambda g: id_order(g["members"][0]))


# --- Beam ------------------------------------------------------------------------------


class _FlagOutliers(beam.DoFn):
    """(DecodedImage-like record) -> one JSON-able line with its statistics, z-scores and flags."""

    def __init__(self, threshold: float):
        self._threshold = threshold
        self._flagged = Metrics.counter(NAMESPACE, "outliers")

    def process(self, image, medians: dict, mads: dict) -> Iterator[dict[str, Any]]:
        quality = image.quality
        z = robust_z(robust_values(quality), medians, mads)
        flags = outlier_reasons(z, self._threshold)
        if flags:
            self._flagged.inc()
        stats = {**quality._asdict(), "phash": f"{quality.phash:016x}"}
        del stats["thumbnail"], stats["patches"]  # Pixels, not statistics.
        if math.isnan(quality.atypicality):  # No other fold to measure it against: unknown, not NaN in JSON.
            del stats["atypicality"]
        yield {
            "id": image.id,
            "split": image.split,
            "label": image.label,
            "content_hash": f"{image.content_hash:064x}",
            "stats": stats,
            "z": {name: round(score, 3) for name, score in z.items()},
            "flags": flags,
        }


class _FaceSpaceFn(beam.CombineFn):
    """Patch thumbnails -> their FaceSpace (None for fewer than MIN_FOLD_IMAGES), by PatchMoments."""

    def create_accumulator(self) -> PatchMoments:
        return PatchMoments()

    def add_input(self, moments: PatchMoments, thumbnail: bytes) -> PatchMoments:
        return moments.add(thumbnail)

    def merge_accumulators(self, accumulators: Iterable[PatchMoments]) -> PatchMoments:
        merged = PatchMoments()
        for moments in accumulators:
            merged.merge(moments)
        return merged

    def extract_output(self, moments: PatchMoments) -> FaceSpace | None:
        return moments.face_space()


# The medians' rank error bound, as a share of the images: exact for data sets of up to ~15 000
# images, within 0.1% of the ranks beyond. Beam's default for 3 quantiles is 1/3, which let a
# "median" of 2000 values move with the order the elements came in, and the flags with it.
MEDIAN_EPSILON = 1e-3


class MedianPerKey(beam.PTransform):
    """(name, x) -> (name, median of x) by Beam's approximate quantiles: a bounded sketch per
    key (MEDIAN_EPSILON), never every value on one worker."""

    def expand(self, values):
        quantiles = ApproximateQuantilesCombineFn.create(num_quantiles=3, epsilon=MEDIAN_EPSILON)
        return (
            values
            | "Quantiles" >> beam.CombinePerKey(quantiles)
            # (name, [min, median, max])
            | "Median" >> beam.Map(lambda kv: (kv[0], kv[1][1]))
        )


class AuditQuality(beam.PTransform):
    """DecodedImage (with ``quality``) -> ``images`` (a line per image), ``groups`` (duplicate
    groups) and ``stats`` ((key, value) pairs for the run statistics).

    Outliers: robust z-scores per data set, median and MAD (median of |x - median|) of each
    statistic by approximate quantiles, atypicality among them once the face space of each
    fold's thumbnails is combined. Duplicates: LSH on the perceptual hash's bands (GroupByKey on
    (band, value), pairs within ``distance`` bits in a bucket, then their two thumbnails
    compared at ``similarity``) plus exact copies by content hash; the resulting edges are few
    (a pair per duplicate, not per image), so one global combine builds the groups from them.
    """

    def __init__(self, *, threshold: float, distance: int, similarity: float, examples: int = 5):
        super().__init__()
        self._threshold = threshold
        self._distance = distance
        self._similarity = similarity
        self._examples = examples

    def expand(self, images):
        distance, min_similarity = self._distance, self._similarity
        spaces = beam.pvalue.AsDict(
            images
            | "KeyFolds" >> beam.Map(lambda im: (face_space_fold(im.content_hash), im.quality.patches))
            | "FaceSpaces" >> beam.CombinePerKey(_FaceSpaceFn())
            # (fold, FaceSpace): 16 64x64 projections per fold; none for a fold too small
        )
        images = (
            images
            | "BatchForAtypicality" >> beam.BatchElements(min_batch_size=16, max_batch_size=ATYPICALITY_BATCH)
            # [image]: within a bundle, so that the atypicality is one numpy pass per batch
            | "Atypicality" >> beam.FlatMap(with_atypicality, spaces)
        )
        # images: as given, their quality's atypicality set
        measured = images | "WithoutPixels" >> beam.Map(
            lambda im: im._replace(quality=im.quality._replace(thumbnail=b"", patches=b""))
        )
        # images without their thumbnail and patches: what waits for the medians below needs
        # neither (a local runner holds every such record in memory until they are known)
        values = measured | "Values" >> beam.FlatMap(lambda im: robust_values(im.quality).items())
        medians = beam.pvalue.AsDict(values | "ValueMedians" >> MedianPerKey())
        deviations = values | "Deviation" >> beam.Map(lambda kv, med: (kv[0], abs(kv[1] - med[kv[0]])), medians)
        mads = beam.pvalue.AsDict(deviations | "DeviationMedians" >> MedianPerKey())
        lines = measured | "FlagOutliers" >> beam.ParDo(_FlagOutliers(self._threshold), medians, mads)

        with_thumbnails = images | "Members" >> beam.Map(
            lambda im: (Member(im.id, im.split, im.content_hash, im.quality.phash), im.quality.thumbnail)
        )
        members = with_thumbnails | "WithoutThumbnails" >> beam.Keys()
        # The LSH buckets hold each image once per band (distance + 1 times): they carry no
        # thumbnail; the few candidate pairs they find fetch their two thumbnails after.
        partners = beam.pvalue.AsDict(
            members
            | "KeyBands" >> beam.FlatMap(lambda m: ((band, m) for band in bands(m.phash, distance)))
            | "GroupBands" >> beam.GroupByKey()
            # ((band index, band value), [Member])
            | "CloseHashes" >> beam.FlatMap(lambda kv: bucket_pairs(kv[1], distance))
            # (Member, Member) within ``distance`` bits, once per bucket they share
            | "BothEnds" >> beam.FlatMap(lambda pair: [(pair[0].id, pair[1].id), (pair[1].id, pair[0].id)])
            | "PartnersById" >> beam.GroupByKey()
            # (id, [ids of its candidate partners]): a dict side input, read once per bundle (a
            # multimap's lookups are one runner request per image)
        )
        near = (
            with_thumbnails
            | "KeyByCandidatePair" >> beam.FlatMap(_candidate_pair_ends, partners)
            # ((lower id, higher id), (Member, thumbnail)) per candidate pair the image is in
            | "GroupCandidatePairs" >> beam.GroupByKey()
            | "AlikeThumbnails" >> beam.FlatMap(lambda kv: alike_pair(kv[1], min_similarity))
        )
        exact = (
            members
            | "KeyContent" >> beam.Map(lambda m: (m.content_hash, m))
            | "GroupContent" >> beam.GroupByKey()
            # (content hash, [Member]): a chain of edges connects every copy
            | "ExactPairs" >> beam.FlatMap(lambda kv: _chain(kv[1]))
        )
        groups = (
            (near, exact)
            | "FlattenEdges" >> beam.Flatten()
            | "Edges" >> beam.combiners.ToList()
            | "Groups" >> beam.FlatMap(duplicate_groups)
        )

        keys = [
            lines | "OutlierKeys" >> beam.FlatMap(lambda line: [f"quality/outliers/{f}" for f in line["flags"]]),
            lines
            | "Flagged" >> beam.Filter(lambda line: line["flags"])
            | "FlaggedKey" >> beam.Map(lambda _: "quality/flagged_images"),
            groups | "GroupKeys" >> beam.FlatMap(_group_keys),
        ]
        counts = keys | "FlattenKeys" >> beam.Flatten() | "Count" >> beam.combiners.Count.PerElement()
        leaking = (
            groups
            | "Leaking" >> beam.Filter(lambda g: g["leakage"])
            | "FirstLeaking" >> beam.combiners.Top.Smallest(self._examples, key=lambda g: id_order(g["members"][0]))
            | "LeakingKey" >> beam.Map(lambda gs: ("quality/leakage_groups", [_brief(g) for g in gs]))
        )
        stats = (counts, leaking) | "FlattenStats" >> beam.Flatten()
        return {"images": lines, "groups": groups, "stats": stats}


def _candidate_pair_ends(
    member_thumbnail: tuple[Member, bytes], partners: Mapping[str, Sequence[str]]
) -> Iterator[tuple[tuple[str, str], tuple[Member, bytes]]]:
    member = member_thumbnail[0]
    for partner in set(partners.get(member.id, ())):
        yield tuple(sorted((member.id, partner), key=id_order)), member_thumbnail


def _chain(members: Iterable[Member]) -> Iterator[tuple[Member, Member]]:
    ordered = sorted(set(members), key=lambda m: id_order(m.id))
    return itertools.pairwise(ordered)


def _group_keys(group: Mapping[str, Any]) -> list[str]:
    keys = [f"quality/groups/{group['kind']}"] + ["quality/duplicate_images"] * len(group["members"])
    return [*keys, "quality/leakage"] if group["leakage"] else keys


def _brief(group: Mapping[str, Any]) -> dict[str, Sequence[str]]:
    return {"members": group["members"], "splits": group["member_splits"], "kind": group["kind"]}


def dropped_duplicates(group: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(id, kept id) for every member of a group but the kept one (--dedupe keep_one)."""
    return [(image_id, group["kept"]) for image_id in group["members"] if image_id != group["kept"]]
