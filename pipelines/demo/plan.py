"""The glasses set's ground truth: latent vectors, true classes, wrong labels, distortions, copies.

As in the Kaggle set (a GAN's inputs), the latent vector ``v1..v512`` determines the face: each
face's ``z ~ N(0, I_512)`` is drawn from ``(seed, id)``; the faces whose ``z . d_glasses`` (plus
a little noise) is among the top 56% wear glasses, and their stored vector is pushed
``GLASSES_MARGIN`` along ``d_glasses`` away from the others (so a linear model on 1350 rows
finds the direction); glasses style, hair style and colour, skin tone and background colour are
functions of ``z`` along other fixed directions plus small noise. The directions are fixed
orthonormal random unit vectors of the seed. The flipped CSV labels and the distortions do not
depend on ``z``: the vector carries the true label.

The plan (which ids wear glasses, have a wrong label, are distorted or copies) comes from a
generator seeded with ``(seed, count)``; each image's own draws from :func:`image_rng`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from pipelines.demo.faces import Traits

LATENT_DIM = 512
TRAIN_FRACTION = 0.9
GLASSES_FRACTION = 0.56
WRONG_LABEL_FRACTION = 0.10
DISTORTED_FRACTION = 0.01
MIN_COUNT_FOR_DISTORTION = 20
DUPLICATE_FRACTION = 0.02
DUPLICATE_KINDS = ("exact", "reencoded", "cropped", "brightened")
# Independent random streams per purpose, so the datasets never share faces.
PLAN_STREAM, GLASSES_STREAM, COMICS_STREAM, LATENT_STREAM, DIRECTIONS_STREAM, DUPLICATE_STREAM = 0, 1, 2, 3, 4, 5
# The latent directions of the drawn attributes, in the rows of latent_directions().
_TRAITS = ("glasses", "glasses_style", "hair_style", "hair_color", "skin", "bg_red", "bg_green", "bg_blue")
# Noise (in units of z's projection, which is N(0, 1)) between the latent vector and the attributes.
TRAIT_NOISE = 0.05
# How far the glasses faces' vectors are pushed from the others along d_glasses (in sd of z).
GLASSES_MARGIN = 1.5


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


def image_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The generator of one image: independent of every other image and of the order."""
    return np.random.default_rng([seed, index, stream])


@functools.lru_cache(maxsize=4)
def latent_directions(seed: int) -> np.ndarray:
    """The fixed unit directions of the attributes (``_TRAITS``), orthonormal rows [traits, LATENT_DIM]."""
    gaussian = np.random.default_rng([seed, DIRECTIONS_STREAM]).standard_normal((LATENT_DIM, len(_TRAITS)))
    return np.linalg.qr(gaussian)[0].T


def _latent(seed: int, image_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Face ``image_id``'s z ~ N(0, I) and its attributes' projections plus noise, one per trait."""
    rng = image_rng(seed, image_id, LATENT_STREAM)
    z = rng.standard_normal(LATENT_DIM)
    return z, latent_directions(seed) @ z + TRAIT_NOISE * rng.standard_normal(len(_TRAITS))


def plan_glasses(count: int, seed: int) -> GlassesPlan:
    """Choose the true classes (from the latent vectors), the wrong train labels and the distorted ids."""
    rng = np.random.default_rng([seed, count, PLAN_STREAM])
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


def face_latent(seed: int, image_id: int, glasses: bool) -> tuple[np.ndarray, Traits]:
    """Face ``image_id``'s latent vector (as written to the CSV) and the attributes it determines."""
    z, projections = _latent(seed, image_id)
    d_glasses = latent_directions(seed)[0]
    vector = z + (GLASSES_MARGIN if glasses else -GLASSES_MARGIN) * d_glasses
    u = [0.5 * (1 + math.erf(p / math.sqrt(2))) for p in projections[1:]]  # N(0, 1) -> uniform
    return vector, Traits(glasses, u[0], u[1], u[2], u[3], (u[4], u[5], u[6]))


def plan_duplicates(plan: GlassesPlan, seed: int) -> list[tuple[int, int, str]]:
    """(copy id, source id, kind): ids whose image becomes a copy of a train face of the same
    class, so that every label and override stays true. Neither is distorted or mislabelled;
    copies alternate between test ids (leakage) and train ids."""
    count = len(plan.glasses)
    wanted = max(round(count * DUPLICATE_FRACTION), len(DUPLICATE_KINDS) if count >= MIN_COUNT_FOR_DISTORTION else 0)
    rng = np.random.default_rng([seed, count, DUPLICATE_STREAM])
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
