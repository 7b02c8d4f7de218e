"""Tests of the image-quality audit (pipelines/quality.py): statistics, outliers, duplicates."""

from __future__ import annotations

import itertools
import json
import pickle

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.testing.util import assert_that, equal_to

from pipelines.demo import data as demo_data
from pipelines.options import PreprocessConfig
from pipelines.quality import (
    MIN_FOLD_IMAGES,
    PATCHES_SIDE,
    AuditQuality,
    MedianPerKey,
    Member,
    PatchMoments,
    alike_pair,
    atypicality,
    bands,
    bucket_pairs,
    duplicate_groups,
    face_space_fold,
    hamming,
    image_quality,
    outlier_reasons,
    robust_values,
    robust_z,
    similarity,
    with_atypicality,
)
from pipelines.transforms import DecodedImage, decode_and_resize
from tests.image_files import offline_test_pipeline

SIZE = 128
K = PreprocessConfig.duplicate_distance  # the defaults the job runs with
S = PreprocessConfig.duplicate_similarity


def face(index: int) -> np.ndarray:
    _, traits = demo_data.face_latent(7, index, index % 2 == 0)
    rng = demo_data._image_rng(7, index, demo_data._GLASSES_STREAM)
    return demo_data.glasses_photo(rng, SIZE, traits, distorted=False)


def as_written(rgb: np.ndarray, ext: str = ".png", params: tuple[int, ...] = ()) -> np.ndarray:
    """Encoded and decoded as the pipeline does, resized to its 50x50."""
    _, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    return decode_and_resize(data.tobytes(), size=(50, 50), color_mode="rgb", max_pixels=10**9)


def quality(rgb: np.ndarray, **kwargs):
    return image_quality(as_written(rgb, **kwargs), (rgb.shape[1], rgb.shape[0]))


def test_statistics_of_one_image() -> None:
    q = image_quality(np.full((10, 20, 3), 255, np.uint8), (400, 200))
    assert (q.width, q.height, q.aspect_ratio) == (400, 200, 2.0)
    assert (q.brightness, q.contrast, q.sharpness, q.saturated, q.constancy) == (255.0, 0.0, 0.0, 1.0, 1.0)
    grey = image_quality(np.arange(100, dtype=np.uint8).reshape(10, 10, 1), (10, 10))
    assert grey.constancy == 0.01 and grey.saturated == 0.01 and grey.contrast > 0


def test_blurred_copy_is_less_sharp() -> None:
    image = face(1)
    blurred = cv2.GaussianBlur(image, (0, 0), 3)
    assert quality(blurred).sharpness < 0.5 * quality(image).sharpness


def test_black_image_is_flagged_constant_among_faces() -> None:
    values = [robust_values(quality(face(i))) for i in range(15)]
    medians = {name: float(np.median([v[name] for v in values])) for name in values[0]}
    mads = {name: float(np.median([abs(v[name] - medians[name]) for v in values])) for name in values[0]}
    black = robust_values(image_quality(np.zeros((50, 50, 3), np.uint8), (SIZE, SIZE)))
    z = robust_z(black, medians, mads)
    reasons = outlier_reasons(z, 3.5)
    # Not always "dark": the faces' backgrounds spread their brightness widely. It is constant.
    assert {"constant", "low_contrast", "blurry", "saturated"} <= set(reasons)
    assert z["brightness"] < min(robust_z(v, medians, mads)["brightness"] for v in values)
    faces_flagged = [set(outlier_reasons(robust_z(v, medians, mads), 3.5)) for v in values]
    assert not any(flags & {"constant", "dark", "blurry", "saturated"} for flags in faces_flagged)


def test_a_face_smeared_along_one_axis_is_a_directional_blur_among_faces() -> None:
    values = [robust_values(quality(face(i))) for i in range(15)]
    medians = {name: float(np.median([v[name] for v in values])) for name in values[0]}
    mads = {name: float(np.median([abs(v[name] - medians[name]) for v in values])) for name in values[0]}
    for kernel in ((SIZE - 1, 1), (1, SIZE - 1)):  # a motion blur across the image, then down it
        smeared = robust_values(quality(cv2.blur(face(1), kernel)))
        assert "directional_blur" in outlier_reasons(robust_z(smeared, medians, mads), 3.5)
    faces_flagged = [outlier_reasons(robust_z(v, medians, mads), 3.5) for v in values]
    assert not any("directional_blur" in flags for flags in faces_flagged)


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
    assert list(bucket_pairs(same_hash, K)) == [(same_hash[0], same_hash[1])]  # no thumbnail check yet
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
                buckets.setdefault(band, []).append(_member(image_id, h))
        found = {(a.id, b.id) for bucket in buckets.values() for a, b in bucket_pairs(bucket, k)}
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


def _decoded(image_id: str, split: str, rgb: np.ndarray, content_hash: int) -> DecodedImage:
    return DecodedImage(image_id, 0, split, b"", content_hash, image_id, quality=quality(rgb))


def test_audit_in_beam_finds_exact_and_near_duplicates_and_leakage_across_splits() -> None:
    images = [_decoded(str(i), "train", face(i), i) for i in range(1, 9)]
    images += [
        _decoded("20", "test", face(1), 1),  # exact copy of 1 (same file bytes) in test
        _decoded("21", "train", cv2.convertScaleAbs(face(2), alpha=1.06, beta=4), 21),  # near copy of 2
        _decoded("22", "validation", np.zeros((SIZE, SIZE, 3), np.uint8), 22),  # black
    ]
    # Another face given face 3's hash: in its LSH buckets, but its thumbnail is not 3's.
    images.append(
        images[3]._replace(id="23", content_hash=23, quality=images[3].quality._replace(phash=images[2].quality.phash))
    )
    with offline_test_pipeline() as pipeline:
        audit = pipeline | beam.Create(images) | AuditQuality(threshold=3.5, distance=K, similarity=S)
        groups = audit["groups"] | "Brief" >> beam.Map(lambda g: (g["members"], g["kind"], g["leakage"]))
        assert_that(groups, equal_to([(["1", "20"], "exact", True), (["2", "21"], "near", False)]), label="groups")
        constant = (
            audit["images"] | beam.Filter(lambda line: "constant" in line["flags"]) | beam.Map(lambda line: line["id"])
        )
        assert_that(constant, equal_to(["22"]), label="constant")
        stats = audit["stats"] | beam.Filter(lambda kv: not kv[0].startswith("quality/outliers"))
        expected = [
            ("quality/groups/exact", 1),
            ("quality/groups/near", 1),
            ("quality/duplicate_images", 4),
            ("quality/leakage", 1),
            ("quality/leakage_groups", [{"members": ["1", "20"], "splits": ["train", "test"], "kind": "exact"}]),
        ]
        flagged = stats | beam.Filter(lambda kv: kv[0] != "quality/flagged_images")
        assert_that(flagged, equal_to(expected), label="stats")


def _faces_and_odd_ones(count: int) -> tuple[list[DecodedImage], set[str]]:
    """``count`` faces and three that are not like them: block-scrambled, warped, and noise."""
    rng = np.random.default_rng(5)
    odd = {
        "scrambled": demo_data._scramble(face(count + 1), rng),
        "warped": demo_data._warp(face(count + 2), rng),
        "noise": rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8),
    }
    images = [_decoded(str(i), "train", face(i), i) for i in range(1, count + 1)]
    images += [_decoded(name, "train", rgb, count + n) for n, (name, rgb) in enumerate(odd.items(), 1)]
    return images, set(odd)


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
    images, odd = _faces_and_odd_ones(160)
    moments: dict[int, PatchMoments] = {}
    for image in images:
        moments.setdefault(face_space_fold(image.content_hash), PatchMoments()).add(image.quality.patches)
    spaces = {fold: m.face_space() for fold, m in moments.items()}
    atypicality = {im.id: im.quality.atypicality for im in with_atypicality(images, spaces)}
    ranked = sorted(atypicality, key=atypicality.get, reverse=True)
    assert set(ranked[:3]) == odd


def test_audit_in_beam_finds_the_atypical_images() -> None:
    images, odd = _faces_and_odd_ones(160)
    with offline_test_pipeline() as pipeline:
        lines = pipeline | beam.Create(images) | AuditQuality(threshold=3.5, distance=K, similarity=S)
        most = (
            lines["images"]
            | beam.combiners.Top.Largest(3, key=lambda line: line["z"]["atypicality"])
            | beam.Map(lambda top: sorted(line["id"] for line in top))
        )
        assert_that(most, equal_to([sorted(odd)]))


def test_a_lone_image_has_no_atypicality_and_its_line_is_strict_json() -> None:
    with offline_test_pipeline() as pipeline:
        lines = (
            pipeline
            | beam.Create([_decoded("1", "train", face(1), 1)])
            | AuditQuality(threshold=3.5, distance=K, similarity=S)
        )
        keys = lines["images"] | beam.Map(lambda line: (sorted(line["stats"]), json.dumps(line, allow_nan=False)))
        assert_that(
            keys | beam.Map(lambda kv: "atypicality" in kv[0] or "thumbnail" in kv[0] or "patches" in kv[0]),
            equal_to([False]),
        )


def test_medians_are_exact_whatever_order_the_values_come_in() -> None:
    # 2001 values per key, in an order that pulled Beam's default 3-quantile sketch (error bound
    # a third of the ranks) off the middle: the audit's medians must not move with the order.
    values = np.random.default_rng(0).permutation(2001).tolist()
    ordered = [*values[::2], *values[1::2]]
    with offline_test_pipeline() as p:
        pairs = p | beam.Create([(name, float(v)) for v in ordered for name in ("a", "b")], reshuffle=False)
        assert_that(pairs | MedianPerKey(), equal_to([("a", 1000.0), ("b", 1000.0)]))


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


def test_the_quality_lines_are_the_same_to_the_last_bit_in_any_order_and_bundles() -> None:
    # The face spaces' sums are combined per bundle and merged across workers: the lines
    # (atypicality included) must not depend on how the images were bundled or ordered.
    images, _ = _faces_and_odd_ones(160)
    with offline_test_pipeline(bundles=3) as pipeline:
        runs = [
            pipeline
            | f"Create{name}" >> beam.Create(order, reshuffle=False)
            | f"Audit{name}" >> AuditQuality(threshold=3.5, distance=K, similarity=S)
            for name, order in (("InOrder", images), ("Reversed", images[::-1]))
        ]
        keyed = [
            run["images"] | f"ById{n}" >> beam.Map(lambda line: (line["id"], json.dumps(line, sort_keys=True)))
            for n, run in enumerate(runs)
        ]
        unequal = (
            keyed | beam.CoGroupByKey() | beam.Filter(lambda kv: len(set(kv[1][0]) | set(kv[1][1])) != 1) | beam.Keys()
        )
        assert_that(unequal, equal_to([]))
