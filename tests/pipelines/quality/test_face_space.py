"""Tests of pipelines/quality/face_space.py: the face spaces' moments and the atypicality."""

from __future__ import annotations

import pickle

import numpy as np

from pipelines.quality.face_space import (
    MIN_FOLD_IMAGES,
    PatchMoments,
    atypicality,
    face_space_fold,
    with_atypicality,
)
from pipelines.quality.measures import PATCHES_SIDE
from tests.pipelines.quality.faces import face, faces_and_odd_ones, quality


def _thumbnails(count: int) -> list[bytes]:
    """``count`` patch thumbnails: 20 faces' with grey-level noise."""
    rng = np.random.default_rng(3)
    faces = [np.frombuffer(quality(face(i)).patches, np.uint8).astype(int) for i in range(1, 21)]
    return [np.clip(faces[i % 20] + rng.integers(-6, 7, 1024), 0, 255).astype(np.uint8).tobytes() for i in range(count)]


def test_patch_moments_merged_or_pickled_give_the_face_space_of_one_pass() -> None:
    thumbnails = _thumbnails(300)  # more than one block of 256
    whole, first, second = PatchMoments(), PatchMoments(), PatchMoments()
    for i, thumbnail in enumerate(thumbnails):
        whole.add(thumbnail)
        (first if i % 3 else second).add(thumbnail)
    # As Beam ships an accumulator between workers: with thumbnails still waiting in its block.
    merged = pickle.loads(pickle.dumps(first)).merge(second).face_space()
    space = whole.face_space()
    # To the last bit: the sums are exact, whatever the order and grouping.
    for got, want in zip(merged, space, strict=True):
        np.testing.assert_array_equal(got, want)
    # Each place keeps some directions and leaves about 5% of its variance outside them.
    kept = 64 - np.round(np.trace(space.complement, axis1=1, axis2=2)).astype(int)
    assert (kept >= 1).all() and (kept < 64).all()
    assert (space.residual_variance > 0.01).all() and (space.residual_variance < 0.1).all()


def test_too_few_images_get_no_face_space() -> None:
    moments = PatchMoments()
    for thumbnail in _thumbnails(MIN_FOLD_IMAGES - 1):
        moments.add(thumbnail)
    assert moments.face_space() is None
    assert moments.add(_thumbnails(1)[0]).face_space() is not None


def test_a_scrambled_face_a_warped_one_and_noise_are_the_most_atypical_among_faces() -> None:
    # The faces' own fold is left out: in it, the odd images would span components of their own.
    images, odd = faces_and_odd_ones(160)
    moments: dict[int, PatchMoments] = {}
    for image in images:
        moments.setdefault(face_space_fold(image.content_hash), PatchMoments()).add(image.quality.patches)
    spaces = {fold: m.face_space() for fold, m in moments.items()}
    atypicality = {im.id: im.quality.atypicality for im in with_atypicality(images, spaces)}
    ranked = sorted(atypicality, key=atypicality.get, reverse=True)
    assert set(ranked[:3]) == odd


def test_an_images_atypicality_is_the_same_to_the_last_bit_in_any_batch() -> None:
    # A numpy/BLAS product rounds differently for some row counts: the audit's batches (and
    # so bundles and runners) must not change a value in the quality files.
    rng = np.random.default_rng(0)
    thumbnails = [rng.integers(0, 255, PATCHES_SIDE**2, dtype=np.uint8).tobytes() for _ in range(300)]
    moments = PatchMoments()
    for thumbnail in thumbnails:
        moments.add(thumbnail)
    space = moments.face_space()
    whole = atypicality(b"".join(thumbnails), space)
    for size in (1, 13, 23, 256, 299):
        parts = [atypicality(b"".join(thumbnails[i : i + size]), space) for i in range(0, len(thumbnails), size)]
        np.testing.assert_array_equal(np.concatenate(parts), whole, err_msg=f"batches of {size}")
