"""Synthetic demo datasets in the exact file layouts of two Kaggle datasets.

``glasses`` mimics "Glasses or No Glasses"::

    DIR/faces-spring-2020/face-<id>.png      ids 1..N, RGB, size x size
    DIR/train.csv                            id,v1..v512,glasses  (first 90% of the ids)
    DIR/test.csv                             id,v1..v512          (last 10%, unlabelled)

plus what a person's review of the data would produce and the generator's ground truth::

    DIR/overrides.csv    id,glasses           corrected labels: wrong train labels and all test ids
    DIR/exclusions.csv   id                   distorted images
    DIR/truth.csv        id,glasses,distorted,duplicate_of,duplicate_kind

The seed's data problems are reproduced: about 56% of the faces wear glasses, about 10% of
the train.csv labels are flipped and about 1% of the images are distorted. About 2% of the
ids hold a copy of another face (``duplicate_of``): byte-for-byte, re-encoded (JPEG saved as
PNG), cropped by 2-4% or brightened (``duplicate_kind``); half of the copies are test ids of a
train face, i.e. leakage across the train/test boundary.

As in the Kaggle set (a GAN's inputs), the latent vector ``v1..v512`` determines the face: each
face's ``z ~ N(0, I_512)`` is drawn from ``(seed, id)``; the faces whose ``z . d_glasses`` (plus
a little noise) is among the top 56% wear glasses, and their stored vector is pushed
``GLASSES_MARGIN`` along ``d_glasses`` away from the others (so a linear model on 1350 rows
finds the direction); glasses style, hair style and colour, skin tone and background colour are
functions of ``z`` along other fixed directions plus small noise. The directions are fixed
orthonormal random unit vectors of the seed. The flipped CSV labels and the distortions do not
depend on ``z``: the vector carries the true label.

``comics`` mimics "Comic faces paired synthetic v2"::

    DIR/face2comics_v2.0.0_by_Sxela/faces/<n>.jpg    n = 0..N-1, photo-like face
    DIR/face2comics_v2.0.0_by_Sxela/comics/<n>.jpg   the same face, comic style

Output is deterministic: image ``i`` is drawn from ``np.random.default_rng([seed, i, stream])``,
so it does not depend on the generation order, and the label plan (which ids wear glasses,
have a wrong label or are distorted) from a generator seeded with ``(seed, count)``.
Images are streamed to disk by a few threads, each writing its own files, so memory stays
bounded whatever the count.

    python -m pipelines.demo.data --dataset glasses --out DIR [--count N] [--size 1024] [--seed S]
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
from tqdm import tqdm

from pipelines import atomic
from pipelines.cli import ArgumentParser
from pipelines.options import (
    COMICS_DIR,
    COMICS_ROOT,
    FACES_DIR,
    GLASSES_FILE_PATTERN,
    GLASSES_IMAGE_DIR,
    GLASSES_LABEL_COLUMN,
    TEST_CSV,
    TRAIN_CSV,
)

DATASETS = ("glasses", "comics")
# Enough demo images that the seeds' CNNs learn the classes (on 600 glasses images the
# glasses CNN memorises), while the whole job stays within minutes on 2 cores. The demo's
# glasses set is a third of Kaggle's 4500 train images, so its presets train longer than
# the seed's 3 epochs (measured on 1500 demo images: 75% validation accuracy after 3 epochs,
# 86% after 10).
DEFAULT_COUNTS = {"glasses": 1500, "comics": 300}
DEFAULT_SIZE = 1024

OVERRIDES_CSV = "overrides.csv"
EXCLUSIONS_CSV = "exclusions.csv"
TRUTH_CSV = "truth.csv"
_GLASSES_CSVS = (TRAIN_CSV, TEST_CSV, OVERRIDES_CSV, EXCLUSIONS_CSV, TRUTH_CSV)

LATENT_DIM = 512
TRAIN_FRACTION = 0.9
GLASSES_FRACTION = 0.56
WRONG_LABEL_FRACTION = 0.10
DISTORTED_FRACTION = 0.01
MIN_COUNT_FOR_DISTORTION = 20
DUPLICATE_FRACTION = 0.02
DUPLICATE_KINDS = ("exact", "reencoded", "cropped", "brightened")
COMIC_GLASSES_FRACTION = 0.25

# Noisy photos barely compress, so Huffman-only deflate with the SUB filter is about as small
# as the default strategy and twice as fast.
PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_SUB,
]
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 90]

# Threads that draw and encode images; more than the cores, as encoding and writing overlap.
_WORKERS = min(8, (os.cpu_count() or 1) + 1)

# Independent random streams per purpose, so the datasets never share faces.
_PLAN_STREAM, _GLASSES_STREAM, _COMICS_STREAM, _LATENT_STREAM, _DIRECTIONS_STREAM, _DUPLICATE_STREAM = 0, 1, 2, 3, 4, 5
# The latent directions of the drawn attributes, in the rows of latent_directions().
_TRAITS = ("glasses", "glasses_style", "hair_style", "hair_color", "skin", "bg_red", "bg_green", "bg_blue")
# Noise (in units of z's projection, which is N(0, 1)) between the latent vector and the attributes.
TRAIT_NOISE = 0.05
# How far the glasses faces' vectors are pushed from the others along d_glasses (in sd of z).
GLASSES_MARGIN = 1.5

_T = TypeVar("_T")
Color = tuple[float, float, float]  # RGB
_AA = cv2.LINE_AA

_LIGHT_SKIN: Color = (246, 218, 196)
_DARK_SKIN: Color = (80, 52, 38)
_HAIR_COLORS: tuple[Color, ...] = (
    (22, 18, 16),
    (58, 38, 26),
    (110, 72, 40),
    (205, 170, 105),
    (150, 62, 30),
    (168, 168, 168),
)
_EYE_COLORS: tuple[Color, ...] = ((70, 42, 22), (60, 110, 160), (70, 120, 70), (110, 110, 115))
_FRAME_COLORS: tuple[Color, ...] = (
    (14, 14, 14),
    (60, 34, 20),
    (112, 62, 30),
    (150, 150, 156),
    (190, 158, 78),
    (160, 28, 40),
)
_HAIR_STYLES = ("short", "long", "bob", "bald")
_HAIR_STYLE_P = (0.4, 0.25, 0.25, 0.1)
# Partial styles: "lenses" has neither rims nor a bridge; "temples" has no lenses or rims, only
# the arms, the bridge and glints where the lenses would be.
_GLASSES_STYLES = ("round", "rect", "sunglasses", "half_rim", "lenses", "temples")
_GLASSES_STYLE_P = (0.22, 0.22, 0.18, 0.14, 0.14, 0.10)


# --------------------------------------------------------------------------- label plan


@dataclass(frozen=True)
class GlassesPlan:
    """Ground truth of a glasses dataset; array index ``i`` is image id ``i + 1``."""

    glasses: np.ndarray  # bool: the face wears glasses
    flipped: np.ndarray  # bool: the train.csv label is wrong (train ids only)
    distorted: np.ndarray  # bool: the image is corrupted
    n_train: int  # ids 1..n_train are in train.csv, the rest in test.csv


def _mask(rng: np.random.Generator, length: int, population: int, k: int) -> np.ndarray:
    """A bool mask of ``length`` with ``k`` True entries among the first ``population``."""
    mask = np.zeros(length, dtype=bool)
    mask[rng.choice(population, size=k, replace=False)] = True
    return mask


@functools.lru_cache(maxsize=4)
def latent_directions(seed: int) -> np.ndarray:
    """The fixed unit directions of the attributes (``_TRAITS``), orthonormal rows [traits, LATENT_DIM]."""
    gaussian = np.random.default_rng([seed, _DIRECTIONS_STREAM]).standard_normal((LATENT_DIM, len(_TRAITS)))
    return np.linalg.qr(gaussian)[0].T


def _latent(seed: int, image_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Face ``image_id``'s z ~ N(0, I) and its attributes' projections plus noise, one per trait."""
    rng = _image_rng(seed, image_id, _LATENT_STREAM)
    z = rng.standard_normal(LATENT_DIM)
    return z, latent_directions(seed) @ z + TRAIT_NOISE * rng.standard_normal(len(_TRAITS))


def plan_glasses(count: int, seed: int) -> GlassesPlan:
    """Choose the true classes (from the latent vectors), the wrong train labels and the distorted ids."""
    rng = np.random.default_rng([seed, count, _PLAN_STREAM])
    n_train = round(count * TRAIN_FRACTION)
    n_distorted = max(round(count * DISTORTED_FRACTION), int(count >= MIN_COUNT_FOR_DISTORTION))
    # One float per face (the vectors are drawn again when the face is drawn): memory stays small.
    scores = np.array([_latent(seed, image_id)[1][0] for image_id in range(1, count + 1)])
    glasses = np.zeros(count, dtype=bool)
    glasses[np.argsort(-scores, kind="stable")[: round(count * GLASSES_FRACTION)]] = True
    return GlassesPlan(
        glasses=glasses,
        flipped=_mask(rng, count, n_train, round(n_train * WRONG_LABEL_FRACTION)),
        distorted=_mask(rng, count, count, n_distorted),
        n_train=n_train,
    )


# --------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class Traits:
    """What a face looks like beyond its geometry: each a value in [0, 1) or the glasses flag."""

    glasses: bool
    glasses_style: float
    hair_style: float
    hair_color: float
    skin: float
    background: tuple[float, float, float]

    @classmethod
    def random(cls, rng: np.random.Generator, glasses: bool) -> Traits:
        """Independent uniform attributes (the comics, which have no latent vectors)."""
        u = rng.uniform(size=6)
        return cls(glasses, u[0], u[1], u[2], u[3], (u[4], u[5], rng.uniform()))


def face_latent(seed: int, image_id: int, glasses: bool) -> tuple[np.ndarray, Traits]:
    """Face ``image_id``'s latent vector (as written to the CSV) and the attributes it determines."""
    z, projections = _latent(seed, image_id)
    d_glasses = latent_directions(seed)[0]
    vector = z + (GLASSES_MARGIN if glasses else -GLASSES_MARGIN) * d_glasses
    u = [0.5 * (1 + math.erf(p / math.sqrt(2))) for p in projections[1:]]  # N(0, 1) -> uniform
    return vector, Traits(glasses, u[0], u[1], u[2], u[3], (u[4], u[5], u[6]))


def _choice(options: Sequence[_T], p: Sequence[float], u: float) -> _T:
    """The option that a uniform ``u`` falls on, with probabilities ``p``."""
    return options[min(int(np.searchsorted(np.cumsum(p), u, side="right")), len(options) - 1)]


@dataclass(frozen=True)
class Face:
    """A head's geometry (pixels, degrees) and colours."""

    cx: float
    cy: float
    rx: float
    ry: float
    tilt: float
    skin: Color
    hair: Color
    hair_style: str
    hairline: float
    eyes: Color
    mouth: float
    clothes: Color

    def at(self, u: float, v: float) -> tuple[int, int]:
        """Pixel of head coordinates ``(u, v)``, in units of the radii, rotated by the tilt."""
        x, y = u * self.rx, v * self.ry
        c, s = math.cos(math.radians(self.tilt)), math.sin(math.radians(self.tilt))
        return round(self.cx + c * x - s * y), round(self.cy + s * x + c * y)

    def axes(self, u: float, v: float) -> tuple[int, int]:
        """Ellipse semi-axes in pixels for semi-axes ``(u, v)`` in units of the radii."""
        return max(1, round(u * self.rx)), max(1, round(v * self.ry))

    def width(self, u: float) -> int:
        """A line thickness of ``u`` head radii, at least one pixel."""
        return max(1, round(u * self.rx))


def _shade(color: Color, factor: float) -> Color:
    """``color`` darkened (factor < 1) or lightened (factor > 1)."""
    return tuple(min(255.0, c * factor) for c in color)  # type: ignore[return-value]


def _mix(a: Color, b: Color, t: float) -> Color:
    """Linear interpolation from ``a`` (t=0) to ``b`` (t=1)."""
    return tuple(x + (y - x) * t for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _pick(rng: np.random.Generator, colors: Sequence[Color], jitter: float = 0.12) -> Color:
    """One of ``colors`` with a random brightness jitter per channel."""
    base = colors[rng.integers(len(colors))]
    factors = rng.uniform(1 - jitter, 1 + jitter, 3)
    return tuple(min(255.0, c * f) for c, f in zip(base, factors, strict=True))  # type: ignore[return-value]


def sample_face(rng: np.random.Generator, size: int, traits: Traits) -> Face:
    """A random face (position, size, tilt, eyes, clothes) with the skin and hair of ``traits``."""
    rx = size * rng.uniform(0.2, 0.26)
    return Face(
        cx=size * (0.5 + rng.uniform(-0.06, 0.06)),
        cy=size * (0.47 + rng.uniform(-0.05, 0.05)),
        rx=rx,
        ry=rx * rng.uniform(1.2, 1.4),
        tilt=rng.uniform(-10, 10),
        skin=_pick(rng, [_mix(_LIGHT_SKIN, _DARK_SKIN, traits.skin)], 0.05),
        hair=_pick(rng, [_HAIR_COLORS[min(int(traits.hair_color * len(_HAIR_COLORS)), len(_HAIR_COLORS) - 1)]]),
        hair_style=_choice(_HAIR_STYLES, _HAIR_STYLE_P, traits.hair_style),
        hairline=rng.uniform(-0.55, -0.38),
        eyes=_pick(rng, _EYE_COLORS),
        mouth=rng.uniform(0.22, 0.34),
        clothes=tuple(rng.uniform(20, 235, 3)),  # type: ignore[arg-type]
    )


def draw_background(rng: np.random.Generator, size: int, color: tuple[float, float, float]) -> np.ndarray:
    """A smooth gradient around ``color`` (each channel in [0, 1)), uint8 RGB ``size x size``."""
    base = 30 + 195 * np.asarray(color)
    corners = np.clip(base + rng.normal(0, 35, (2, 2, 3)), 0, 255).astype(np.uint8)
    return cv2.resize(corners, (size, size), interpolation=cv2.INTER_LINEAR)


# Eye centres in head coordinates; glasses are drawn around them.
_EYE_U, _EYE_V = 0.36, -0.08


def draw_face(img: np.ndarray, f: Face) -> None:
    """Draw hair, shoulders, neck, ears, head and facial features of ``f`` onto ``img``."""
    if f.hair_style == "long":
        cv2.ellipse(img, f.at(0, 0.35), f.axes(1.25, 1.3), f.tilt, 0, 360, f.hair, -1, _AA)
    elif f.hair_style == "bob":
        cv2.ellipse(img, f.at(0, 0), f.axes(1.17, 1.02), f.tilt, 0, 360, f.hair, -1, _AA)
    cv2.ellipse(img, f.at(0, 1.8), f.axes(1.9, 0.8), f.tilt, 0, 360, f.clothes, -1, _AA)
    neck = np.array([f.at(-0.42, 0.6), f.at(0.42, 0.6), f.at(0.5, 1.4), f.at(-0.5, 1.4)], np.int32)
    cv2.fillConvexPoly(img, neck, _shade(f.skin, 0.85), _AA)
    for side in (-1, 1):
        ear = f.at(side * 0.97, 0.02)
        cv2.ellipse(img, ear, f.axes(0.16, 0.2), f.tilt, 0, 360, _shade(f.skin, 0.93), -1, _AA)
    cv2.ellipse(img, f.at(0, 0), f.axes(1, 1), f.tilt, 0, 360, f.skin, -1, _AA)
    if f.hair_style != "bald":
        cap = f.axes(1.05, 1.1 + f.hairline)
        cv2.ellipse(img, f.at(0, f.hairline), cap, f.tilt, 180, 360, f.hair, -1, _AA)
    _draw_eyes(img, f)
    _draw_nose_and_mouth(img, f)


def _draw_eyes(img: np.ndarray, f: Face) -> None:
    """Eye whites, irises, pupils, upper lids and brows."""
    for side in (-1, 1):
        centre = f.at(side * _EYE_U, _EYE_V)
        eye = f.axes(0.15, 0.065)
        cv2.ellipse(img, centre, eye, f.tilt, 0, 360, (238, 236, 232), -1, _AA)
        cv2.circle(img, centre, f.width(0.06), f.eyes, -1, _AA)
        cv2.circle(img, centre, f.width(0.028), (18, 14, 14), -1, _AA)
        cv2.ellipse(img, centre, eye, f.tilt, 180, 360, _shade(f.skin, 0.35), f.width(0.025), _AA)
        brow = f.at(side * _EYE_U, _EYE_V - 0.2)
        cv2.ellipse(img, brow, f.axes(0.19, 0.06), f.tilt, 200, 340, _shade(f.hair, 0.8), f.width(0.05), _AA)


def _draw_nose_and_mouth(img: np.ndarray, f: Face) -> None:
    """A nose line and closed lips with a slight smile."""
    nose = np.array([f.at(0.03, -0.02), f.at(-0.08, 0.27), f.at(0.05, 0.3)], np.int32)
    cv2.polylines(img, [nose], False, _shade(f.skin, 0.7), f.width(0.03), _AA)
    lips = _mix(_shade(f.skin, 0.8), (170, 60, 70), 0.35)
    cv2.ellipse(img, f.at(0, 0.55), f.axes(f.mouth, 0.07), f.tilt, 0, 360, lips, -1, _AA)
    smile = f.axes(f.mouth, 0.04)
    cv2.ellipse(img, f.at(0, 0.52), smile, f.tilt, 20, 160, _shade(lips, 0.5), f.width(0.02), _AA)


def _lens_points(f: Face, cu: float, du: float, dv: float, rect: bool, upper_only: bool) -> np.ndarray:
    """Outline of a lens centred at head coordinates ``(cu, eye level)`` with half-size ``(du, dv)``."""
    if rect:
        c = 0.7  # chamfered corners; the first four points are the upper edge
        ring = [(-1, -c), (-c, -1), (c, -1), (1, -c), (1, c), (c, 1), (-c, 1), (-1, c)]
        ring = ring[:4] if upper_only else ring
    else:
        angles = np.linspace(np.pi, 2 * np.pi if upper_only else 3 * np.pi, 19 if upper_only else 37)
        ring = [(math.cos(a), math.sin(a)) for a in angles]
    return np.array([f.at(cu + du * x, _EYE_V + dv * y) for x, y in ring], np.int32)


def _blend(img: np.ndarray, draw: Callable[[np.ndarray], object], alpha: float) -> None:
    """Apply ``draw`` to ``img`` with opacity ``alpha``."""
    overlay = img.copy()
    draw(overlay)
    cv2.addWeighted(overlay, alpha, img, 1 - alpha, 0, dst=img)


def draw_glasses(img: np.ndarray, f: Face, rng: np.random.Generator, style_u: float) -> None:
    """Draw glasses of the style that ``style_u`` picks (see ``_GLASSES_STYLES``) over the eyes of ``f``."""
    style = _choice(_GLASSES_STYLES, _GLASSES_STYLE_P, style_u)
    rect = style == "rect" or (style != "round" and rng.random() < 0.5)
    du = rng.uniform(0.25, 0.31)  # lens half-width in head radii
    dv = du * f.rx / f.ry * (rng.uniform(0.55, 0.75) if rect else rng.uniform(0.75, 0.95))
    frame = _pick(rng, _FRAME_COLORS)
    thick = f.width(rng.uniform(0.06, 0.1) if rng.random() < 0.5 else rng.uniform(0.025, 0.045))
    tint = rng.uniform(0.85, 0.97) if style == "sunglasses" else rng.uniform(0.1, 0.3)
    tint_color: Color = (18, 18, 22) if style == "sunglasses" else (200, 222, 236)
    lenses = [_lens_points(f, side * _EYE_U, du, dv, rect, upper_only=False) for side in (-1, 1)]

    if style != "temples":
        _blend(img, lambda o: cv2.fillPoly(o, lenses, tint_color, _AA), tint)
    if style in ("round", "rect", "sunglasses"):
        cv2.polylines(img, lenses, True, frame, thick, _AA)
    elif style == "half_rim":
        tops = [_lens_points(f, side * _EYE_U, du, dv, rect, upper_only=True) for side in (-1, 1)]
        cv2.polylines(img, tops, False, frame, thick, _AA)
    elif style == "lenses":
        cv2.polylines(img, lenses, True, (205, 205, 210), f.width(0.015), _AA)
    if style != "lenses":
        gap = _EYE_U - du
        bridge = [f.at(-gap, _EYE_V - 0.3 * dv), f.at(0, _EYE_V - 0.45 * dv), f.at(gap, _EYE_V - 0.3 * dv)]
        cv2.polylines(img, [np.array(bridge, np.int32)], False, frame, thick, _AA)
    temples = [
        np.array([f.at(side * (_EYE_U + du), _EYE_V - 0.4 * dv), f.at(side * 0.99, _EYE_V - 0.06)], np.int32)
        for side in (-1, 1)
    ]
    cv2.polylines(img, temples, False, frame, max(1, round(thick * 0.8)), _AA)
    glints = [
        np.array([f.at(cu - 0.5 * du, _EYE_V + 0.3 * dv), f.at(cu - 0.1 * du, _EYE_V - 0.5 * dv)], np.int32)
        for cu in (-_EYE_U, _EYE_U)
    ]
    _blend(img, lambda o: cv2.polylines(o, glints, False, (255, 255, 255), f.width(0.04), _AA), 0.45)


def draw_portrait(rng: np.random.Generator, size: int, traits: Traits) -> np.ndarray:
    """A clean (noise-free) face of ``traits`` on a gradient background, uint8 RGB ``size x size``."""
    img = draw_background(rng, size, traits.background)
    face = sample_face(rng, size, traits)
    draw_face(img, face)
    if traits.glasses:
        draw_glasses(img, face, rng, traits.glasses_style)
    return img


# --------------------------------------------------------------------------- rendering styles


def light(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth, uneven illumination: multiply by a random low-frequency gain field."""
    size = img.shape[0]
    coarse = rng.uniform(0.8, 1.15, (3, 3)).astype(np.float32)
    gain = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.multiply(img, cv2.merge([gain] * 3), dtype=cv2.CV_8U)


def add_camera_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photographic look: slight lens blur plus Gaussian (luminance) sensor noise."""
    size = img.shape[0]
    blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=rng.uniform(0.5, 1.2) * size / 512)
    sigma = rng.uniform(2.0, 7.0)
    noise = rng.standard_normal((size, size), dtype=np.float32) * sigma
    return cv2.add(blurred, cv2.merge([noise] * 3), dtype=cv2.CV_8U)


_COMIC_LEVELS = 5
_COMIC_STEP = 256 // _COMIC_LEVELS
# Brightness lookup table: every value maps to the middle of its band.
_POSTERISE = np.array(
    [min(v // _COMIC_STEP, _COMIC_LEVELS - 1) * _COMIC_STEP + _COMIC_STEP // 2 for v in range(256)], np.uint8
)
_COMIC_OUTLINE: Color = (16, 12, 12)


def comicify(img: np.ndarray) -> np.ndarray:
    """Comic style: saturated colours, posterised brightness and thick dark outlines."""
    size = img.shape[0]
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
    sat = cv2.convertScaleAbs(sat, alpha=1.6)
    comic = cv2.cvtColor(cv2.merge([hue, sat, cv2.LUT(val, _POSTERISE)]), cv2.COLOR_HSV2RGB)
    edges = cv2.Canny(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), 30, 90)
    radius = max(1, round(size / 256))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    comic[cv2.dilate(edges, kernel) > 0] = _COMIC_OUTLINE
    return comic


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


def glasses_photo(rng: np.random.Generator, size: int, traits: Traits, distorted: bool) -> np.ndarray:
    """One image of the glasses dataset."""
    img = add_camera_noise(light(draw_portrait(rng, size, traits), rng), rng)
    return distort(img, rng) if distorted else img


def comic_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like face and its comic rendering with the same geometry."""
    lit = light(draw_portrait(rng, size, Traits.random(rng, rng.random() < COMIC_GLASSES_FRACTION)), rng)
    return add_camera_noise(lit, rng), comicify(lit)


# --------------------------------------------------------------------------- writing


def _write_image(path: Path, rgb: np.ndarray, params: list[int]) -> None:
    """Encode by the file extension and write whole or not at all (pipelines/atomic.py)."""
    ok, data = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic.write(str(path), data.tobytes(), durable=False)  # Made again by rerunning the demo.


@contextlib.contextmanager
def _atomic_csv(path: Path) -> Iterator[Any]:
    """A ``csv.writer`` on a temporary file that is renamed to ``path`` on success (pipelines/atomic.py)."""
    with atomic.writing(str(path)) as tmp, open(tmp, "w", newline="") as fh:
        yield csv.writer(fh, lineterminator="\n")


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a small CSV atomically."""
    with _atomic_csv(path) as writer:
        writer.writerow(header)
        writer.writerows(rows)


def _image_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The generator of one image: independent of every other image and of the order."""
    return np.random.default_rng([seed, index, stream])


def _run(task: Callable[[int], _T], count: int, desc: str) -> Iterator[_T]:
    """Yield ``task(index)`` for ``index`` in ``range(count)``, in order, with a progress bar.

    A few threads overlap drawing with encoding (OpenCV releases the GIL); each task writes
    its own files, so at most ``_WORKERS`` images are in memory at once.
    """
    with ThreadPoolExecutor(_WORKERS) as pool:
        yield from tqdm(pool.map(task, range(count)), total=count, desc=desc, unit="img", file=sys.stderr)


def _write_review_files(out: Path, plan: GlassesPlan) -> None:
    """overrides.csv and exclusions.csv as a person's review would write them, and truth.csv."""
    ids = np.arange(1, len(plan.glasses) + 1)
    glasses, distorted = plan.glasses.astype(int), plan.distorted.astype(int)
    corrected = plan.flipped | (ids > plan.n_train)  # wrong train labels and all unlabelled test ids
    _write_csv(out / OVERRIDES_CSV, ["id", GLASSES_LABEL_COLUMN], zip(ids[corrected], glasses[corrected], strict=True))
    _write_csv(out / EXCLUSIONS_CSV, ["id"], ([i] for i in ids[plan.distorted]))
    _write_csv(out / TRUTH_CSV, ["id", GLASSES_LABEL_COLUMN, "distorted"], zip(ids, glasses, distorted, strict=True))


def _generate_glasses(out: Path, count: int, size: int, seed: int) -> dict[str, Any]:
    """Write the glasses layout; see the module docstring."""
    plan = plan_glasses(count, seed)
    image_dir = out / GLASSES_IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)

    def write_image(index: int) -> list[Any]:
        """Write image ``index`` and return its CSV row: id and latent vector."""
        image_id = index + 1
        vector, traits = face_latent(seed, image_id, bool(plan.glasses[index]))
        row = [image_id, *(f"{x:.3f}" for x in vector)]
        rng = _image_rng(seed, image_id, _GLASSES_STREAM)
        img = glasses_photo(rng, size, traits, bool(plan.distorted[index]))
        _write_image(image_dir / GLASSES_FILE_PATTERN.format(id=image_id), img, PNG_PARAMS)
        return row

    header = ["id", *(f"v{i}" for i in range(1, LATENT_DIM + 1))]
    with _atomic_csv(out / TRAIN_CSV) as train, _atomic_csv(out / TEST_CSV) as test:
        train.writerow([*header, GLASSES_LABEL_COLUMN])
        test.writerow(header)
        for index, row in enumerate(_run(write_image, count, f"glasses {size}px")):
            if index < plan.n_train:
                train.writerow([*row, int(plan.glasses[index] != plan.flipped[index])])
            else:
                test.writerow(row)

    _write_review_files(out, plan)
    duplicates = plan_duplicates(plan, seed)
    _write_duplicates(out, plan, duplicates, seed)
    return {
        "images": count,
        "train": plan.n_train,
        "test": count - plan.n_train,
        "glasses": int(plan.glasses.sum()),
        "wrong_labels": int(plan.flipped.sum()),
        "distorted": int(plan.distorted.sum()),
        "duplicates": len(duplicates),
        "leaking_duplicates": sum(copy > plan.n_train for copy, _, _ in duplicates),
        "paths": {
            "images": str(image_dir),
            **{name: str(out / name) for name in _GLASSES_CSVS},
        },
    }


def plan_duplicates(plan: GlassesPlan, seed: int) -> list[tuple[int, int, str]]:
    """(copy id, source id, kind): ids whose image becomes a copy of a train face of the same
    class, so that every label and override stays true. Neither is distorted or mislabelled;
    copies alternate between test ids (leakage) and train ids."""
    count = len(plan.glasses)
    wanted = max(round(count * DUPLICATE_FRACTION), len(DUPLICATE_KINDS) if count >= MIN_COUNT_FOR_DISTORTION else 0)
    rng = np.random.default_rng([seed, count, _DUPLICATE_STREAM])
    candidates = [int(i) + 1 for i in rng.permutation(np.flatnonzero(~plan.distorted & ~plan.flipped))]
    used: set[int] = set()
    duplicates = []
    for slot in range(wanted):
        in_test = slot % 2 == 0
        copy = next((i for i in candidates if i not in used and (i > plan.n_train) == in_test), None)
        if copy is None:
            continue
        same = plan.glasses[copy - 1]
        source = next(
            (i for i in candidates if i not in used | {copy} and i <= plan.n_train and plan.glasses[i - 1] == same),
            None,
        )
        if source is None:
            continue
        used |= {copy, source}
        duplicates.append((copy, source, DUPLICATE_KINDS[slot % len(DUPLICATE_KINDS)]))
    return duplicates


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


def _write_duplicates(out: Path, plan: GlassesPlan, duplicates: Sequence[tuple[int, int, str]], seed: int) -> None:
    """Overwrite each copy id's image with its copy of the source, and add the copies to truth.csv."""
    image_dir = out / GLASSES_IMAGE_DIR
    for copy, source, kind in duplicates:
        source_path = image_dir / GLASSES_FILE_PATTERN.format(id=source)
        copy_path = image_dir / GLASSES_FILE_PATTERN.format(id=copy)
        if kind == "exact":
            atomic.write(str(copy_path), source_path.read_bytes(), durable=False)
        else:
            rgb = np.ascontiguousarray(cv2.imread(str(source_path))[..., ::-1])
            _write_image(copy_path, duplicate_copy(rgb, kind, _image_rng(seed, copy, _DUPLICATE_STREAM)), PNG_PARAMS)
    by_copy = {copy: (source, kind) for copy, source, kind in duplicates}
    ids = range(1, len(plan.glasses) + 1)
    rows = [[i, int(plan.glasses[i - 1]), int(plan.distorted[i - 1]), *by_copy.get(i, ("", ""))] for i in ids]
    _write_csv(out / TRUTH_CSV, ["id", GLASSES_LABEL_COLUMN, "distorted", "duplicate_of", "duplicate_kind"], rows)


def _generate_comics(out: Path, count: int, size: int, seed: int) -> dict[str, Any]:
    """Write the comics layout; see the module docstring."""
    faces_dir = out / COMICS_ROOT / FACES_DIR
    comics_dir = out / COMICS_ROOT / COMICS_DIR
    faces_dir.mkdir(parents=True, exist_ok=True)
    comics_dir.mkdir(parents=True, exist_ok=True)

    def write_pair(index: int) -> None:
        """Write face and comic number ``index``."""
        face, comic = comic_pair(_image_rng(seed, index, _COMICS_STREAM), size)
        _write_image(faces_dir / f"{index}.jpg", face, JPEG_PARAMS)
        _write_image(comics_dir / f"{index}.jpg", comic, JPEG_PARAMS)

    for _ in _run(write_pair, count, f"comics {size}px"):
        pass
    paths = {"faces": str(faces_dir), "comics": str(comics_dir)}
    return {"images": 2 * count, "pairs": count, "paths": paths}


def generate(dataset: str, out_dir: str, *, count: int, size: int = DEFAULT_SIZE, seed: int = 0) -> dict[str, Any]:
    """Write a demo dataset to ``out_dir`` and return a summary (counts and paths).

    ``dataset`` is "glasses" (``count`` images) or "comics" (``count`` face/comic pairs).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if count < 1 or size < 16 or seed < 0:
        raise ValueError(f"need count >= 1, size >= 16 and seed >= 0, got {count}, {size}, {seed}")
    out = Path(out_dir)
    write = _generate_glasses if dataset == "glasses" else _generate_comics
    summary = write(out, count, size, seed)
    return {"dataset": dataset, "out_dir": str(out), "count": count, "size": size, "seed": seed, **summary}


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: generate a demo dataset and print its summary as JSON."""
    parser = ArgumentParser(prog="python -m pipelines.demo.data", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--count", type=int, help=f"images (glasses) or face/comic pairs (comics); default {DEFAULT_COUNTS}"
    )
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"image side in pixels (default {DEFAULT_SIZE})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    count = DEFAULT_COUNTS[args.dataset] if args.count is None else args.count
    try:
        summary = generate(args.dataset, args.out, count=count, size=args.size, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
