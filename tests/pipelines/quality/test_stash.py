"""Tests of pipelines/quality/stash.py: the audit's thumbnails and patches wait on disk."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines.quality.stash import Stashed, StashPixels, decode_stashed, encode_stashed, read_stashed
from tests.image_files import offline_test_pipeline
from tests.pipelines.quality.faces import decoded, face


def test_a_stash_record_round_trips_and_a_truncated_one_is_an_error() -> None:
    record = encode_stashed("face-3é", b"t" * 256, b"p" * 1024)
    assert decode_stashed(record) == ("face-3é", b"t" * 256, b"p" * 1024)
    with pytest.raises(ValueError, match="does not match its lengths"):
        decode_stashed(record[:-1])


@pytest.mark.parametrize("bundles", [1, 6])  # 6 bundles of 6 images: a bundle of one each
def test_the_records_leave_without_pixels_and_read_them_back_by_where_they_wait(tmp_path, bundles) -> None:
    images = [decoded(str(i), "train", face(i), i) for i in range(1, 7)]
    pixels = {im.id: (im.quality.thumbnail, im.quality.patches) for im in images}
    with offline_test_pipeline(bundles=bundles) as pipeline:
        audited = pipeline | beam.Create(images, reshuffle=False) | beam.ParDo(StashPixels(str(tmp_path)))
        slim = audited | "Slim" >> beam.Map(lambda im: (im.id, im.quality.thumbnail, im.quality.patches, im.split))
        assert_that(slim, equal_to([(im.id, b"", b"", "train") for im in images]), label="slim")
        back = (
            audited
            | beam.combiners.ToList()
            | beam.FlatMap(
                lambda ims: [(im.id, read_stashed(str(tmp_path), [(im.id, im.stashed)])[im.stashed]) for im in ims]
            )
        )
        assert_that(back, equal_to(sorted(pixels.items())), label="back")


def test_a_stash_record_of_another_id_is_an_error(tmp_path) -> None:
    (tmp_path / "a.audit").write_bytes(encode_stashed("1", b"t", b"p"))
    length = len(encode_stashed("1", b"t", b"p"))
    assert read_stashed(str(tmp_path), [("1", Stashed("a.audit", 0, length))]) == {
        Stashed("a.audit", 0, length): (b"t", b"p")
    }
    with pytest.raises(ValueError, match="no record of '2'"):
        read_stashed(str(tmp_path), [("2", Stashed("a.audit", 0, length))])
