"""Tests of pipelines/quality/audit.py: the audit in Beam."""

from __future__ import annotations

import json

import apache_beam as beam
import cv2
import numpy as np
import pytest
import threadpoolctl
from apache_beam.testing.util import assert_that, equal_to

from pipelines.quality.audit import AuditQuality, MedianPerKey, _packed_end, _unpacked_end, one_blas_thread
from pipelines.quality.duplicates import Member
from pipelines.quality.stash import AuditedImage, Stashed
from tests.image_files import offline_test_pipeline
from tests.pipelines.quality.faces import SIZE, K, S, decoded, face, faces_and_odd_ones


# 12 bundles of the 12 images: a bundle of one each, every thumbnail in a stash file of its own.
@pytest.mark.parametrize("bundles", [1, 12])
def test_audit_in_beam_finds_exact_and_near_duplicates_and_leakage_across_splits(tmp_path, bundles) -> None:
    images = [decoded(str(i), "train", face(i), i) for i in range(1, 9)]
    images += [
        decoded("20", "test", face(1), 1),  # exact copy of 1 (same file bytes) in test
        decoded("21", "train", cv2.convertScaleAbs(face(2), alpha=1.06, beta=4), 21),  # near copy of 2
        decoded("22", "validation", np.zeros((SIZE, SIZE, 3), np.uint8), 22),  # black
    ]
    # Another face given face 3's hash: in its LSH buckets, but its thumbnail is not 3's.
    images.append(
        images[3]._replace(id="23", content_hash=23, quality=images[3].quality._replace(phash=images[2].quality.phash))
    )
    with offline_test_pipeline(bundles=bundles) as pipeline:
        audit = (
            pipeline
            | beam.Create(images, reshuffle=False)
            | AuditQuality(stash_dir=str(tmp_path), threshold=3.5, distance=K, similarity=S)
        )
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


def test_audit_in_beam_finds_the_atypical_images(tmp_path) -> None:
    images, odd = faces_and_odd_ones(160)
    with offline_test_pipeline() as pipeline:
        lines = (
            pipeline
            | beam.Create(images)
            | AuditQuality(stash_dir=str(tmp_path), threshold=3.5, distance=K, similarity=S)
        )
        most = (
            lines["images"]
            | beam.combiners.Top.Largest(3, key=lambda line: line["z"]["atypicality"])
            | beam.Map(lambda top: sorted(line["id"] for line in top))
        )
        assert_that(most, equal_to([sorted(odd)]))


def test_a_lone_image_has_no_atypicality_and_its_line_is_strict_json(tmp_path) -> None:
    with offline_test_pipeline() as pipeline:
        lines = (
            pipeline
            | beam.Create([decoded("1", "train", face(1), 1)])
            | AuditQuality(stash_dir=str(tmp_path), threshold=3.5, distance=K, similarity=S)
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


def test_the_quality_lines_are_the_same_to_the_last_bit_in_any_order_and_bundles(tmp_path) -> None:
    # The face spaces' sums are combined per bundle and merged across workers: the lines
    # (atypicality included) must not depend on how the images were bundled or ordered.
    images, _ = faces_and_odd_ones(160)
    with offline_test_pipeline(bundles=3) as pipeline:
        runs = [
            pipeline
            | f"Create{name}" >> beam.Create(order, reshuffle=False)
            | f"Audit{name}" >> AuditQuality(stash_dir=str(tmp_path), threshold=3.5, distance=K, similarity=S)
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


def test_the_audit_runs_blas_on_one_thread_beside_the_decode_threads() -> None:
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        blas = [pool for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 2 for pool in blas)
        one_blas_thread()
        assert all(pool["num_threads"] == 1 for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas")


def test_a_candidate_pair_end_packs_and_unpacks_whole() -> None:
    image = decoded("visage-10é", "validation", face(1), 2**256 - 3)
    audited = AuditedImage(
        image.id, image.split, 0, image.content_hash, image.quality, Stashed("f" * 32 + ".audit", 2**40, 1300)
    )
    packed = _packed_end(audited)
    member = Member("visage-10é", "validation", 2**256 - 3, image.quality.phash)
    assert _unpacked_end(packed) == (member, audited.stashed)
    with pytest.raises(ValueError, match="does not match its lengths"):
        _unpacked_end(packed + b"x")
