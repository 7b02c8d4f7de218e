"""Tests of pipelines/quality/duplicates.py: hashes, thumbnails, LSH bands, groups."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from pipelines.quality.duplicates import (
    Member,
    alike_pair,
    bands,
    bucket_entry,
    bucket_pairs,
    duplicate_groups,
    hamming,
    similarity,
)
from tests.pipelines.quality.faces import SIZE, K, S, face, quality


def test_reencoded_brightened_and_cropped_copies_are_near_duplicates_but_other_faces_are_not() -> None:
    image = face(2)
    jpeg = cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_UNCHANGED)
    c = round(SIZE * 0.015)
    cropped = cv2.resize(image[c:-c, c:-c], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    brighter = cv2.convertScaleAbs(image, alpha=1.06, beta=4)
    original = quality(image).phash
    for copy in (jpeg, cropped, brighter):
        assert hamming(original, quality(copy).phash) <= K
    others = [quality(face(i)).phash for i in range(3, 13)]
    assert min(hamming(original, other) for other in others) > K
    assert min(hamming(a, b) for a, b in itertools.combinations(others, 2)) > K


def test_copies_have_similar_thumbnails_and_other_faces_do_not() -> None:
    image = face(2)
    c = round(SIZE * 0.03)
    cropped = cv2.resize(image[c:-c, c:-c], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    brighter = cv2.convertScaleAbs(image, alpha=1.1, beta=8)
    original = quality(image).thumbnail
    assert all(similarity(original, quality(copy).thumbnail) >= S for copy in (cropped, brighter))
    others = [quality(face(i)).thumbnail for i in range(3, 13)]
    assert max(similarity(a, b) for a, b in itertools.combinations([original, *others], 2)) < S
    flat, other_flat = bytes(256), bytes([9] * 256)
    assert similarity(flat, other_flat) == 1.0 and similarity(flat, original) == 0.0


def test_a_pair_with_one_hash_but_different_thumbnails_is_not_a_near_duplicate() -> None:
    a, b = quality(face(3)), quality(face(4))
    same_hash = [Member("1", "train", 1, a.phash), Member("2", "train", 2, a.phash)]
    assert list(bucket_pairs(b"".join(bucket_entry(m.id, m.phash) for m in same_hash), K)) == [
        ("1", "2")
    ]  # no thumbnail check yet
    assert alike_pair([(same_hash[1], b.thumbnail), (same_hash[0], a.thumbnail)], S) == []
    copy = Member("3", "train", 3, a.phash ^ 0b101)
    brightened = quality(cv2.convertScaleAbs(face(3), alpha=1.05)).thumbnail
    # Ends as a GroupByKey gives them: any order, once per bucket the pair shares.
    ends = [(copy, brightened), (same_hash[0], a.thumbnail), (copy, brightened)]
    assert alike_pair(ends, S) == [(same_hash[0], copy)]


def test_banding_finds_every_pair_within_k_like_brute_force() -> None:
    rng = np.random.default_rng(0)
    for k in (0, 3, 6, 10):
        base = [int(x) for x in rng.integers(0, 2**63, 40, dtype=np.int64)]
        hashes = list(base)
        for h in base[:20]:  # near copies: 0..k+2 random bit flips, some just out of reach
            flips = rng.choice(64, size=rng.integers(0, k + 3), replace=False)
            hashes.append(h ^ sum(1 << int(b) for b in flips))
        members = [(str(i), h) for i, h in enumerate(hashes)]
        brute = {(a, b) for (a, ha), (b, hb) in itertools.combinations(members, 2) if hamming(ha, hb) <= k}
        buckets: dict = {}
        for image_id, h in members:
            assert len(bands(h, k)) == k + 1
            for band in bands(h, k):
                buckets.setdefault(band, []).append(bucket_entry(image_id, h))
        found = {pair for bucket in buckets.values() for pair in bucket_pairs(b"".join(bucket), k)}
        assert found == {tuple(sorted(pair, key=lambda i: (len(i), i))) for pair in brute}
        assert any(hamming(ha, hb) <= k for (_, ha), (_, hb) in itertools.combinations(members, 2))


def _member(image_id: str, phash: int, split: str = "train", content: int = 0) -> Member:
    return Member(image_id, split, content or int(image_id) + 1, phash)


def test_groups_are_connected_components_with_kind_kept_and_leakage() -> None:
    a, b, c = _member("10", 1), _member("2", 1, "test"), _member("3", 1)
    exact_1, exact_2 = _member("7", 5, content=99), _member("8", 5, content=99)
    groups = duplicate_groups([(a, b), (b, c), (exact_1, exact_2), (exact_1, exact_2)])
    assert groups == [
        {
            "members": ["2", "3", "10"],
            "member_splits": ["test", "train", "train"],
            "splits": ["test", "train"],
            "kind": "near",
            "kept": "2",
            "leakage": True,
        },
        {
            "members": ["7", "8"],
            "member_splits": ["train", "train"],
            "splits": ["train"],
            "kind": "exact",
            "kept": "7",
            "leakage": False,
        },
    ]


def test_a_bucket_entry_keeps_any_id_and_all_64_bits_of_the_hash() -> None:
    top, near_top = 2**64 - 1, (2**64 - 1) ^ 0b11
    entries = b"".join([bucket_entry("visage-10é", top), bucket_entry("2", near_top), bucket_entry("visage-10é", top)])
    assert list(bucket_pairs(entries, 2)) == [("2", "visage-10é")]
    assert list(bucket_pairs(entries, 1)) == []
    with pytest.raises(ValueError, match="end inside an entry"):
        list(bucket_pairs(entries[:-1], 2))
