"""The face renderer: a synthetic portrait of given traits, with or without glasses, as a photo
or a comic (OpenCV drawing; deterministic for a given random generator)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

from pipelines.demo.defects import distort

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
COMIC_GLASSES_FRACTION = 0.25


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


def glasses_photo(rng: np.random.Generator, size: int, traits: Traits, distorted: bool) -> np.ndarray:
    """One image of the glasses dataset."""
    img = add_camera_noise(light(draw_portrait(rng, size, traits), rng), rng)
    return distort(img, rng) if distorted else img


def comic_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like face and its comic rendering with the same geometry."""
    lit = light(draw_portrait(rng, size, Traits.random(rng, rng.random() < COMIC_GLASSES_FRACTION)), rng)
    return add_camera_noise(lit, rng), comicify(lit)
