"""Staging files: pixels and vectors leave the records at the decode and come back for the writer."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import staging
from pipelines.transforms import DecodedImage


def _image(index: int, vector: bytes = b"") -> DecodedImage:
    return DecodedImage(f"face-{index}é", index % 2, "train", bytes([index]) * 12, index, f"g{index}", vector)


def test_a_staging_record_round_trips():
    image = _image(3, vector=b"\1\2\3\4")
    assert staging.decode_staged(staging.encode_staged(image)) == (image.id, image.pixels, image.vector)
    assert staging.decode_staged(staging.encode_staged(_image(4))) == (_image(4).id, _image(4).pixels, b"")


def test_a_truncated_staging_record_is_an_error():
    with pytest.raises(ValueError, match="shorter"):
        staging.decode_staged(staging.encode_staged(_image(3, vector=b"\1\2\3\4"))[:-1])


def test_images_leave_without_pixels_and_the_kept_ones_come_back_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "IMAGES_PER_FILE", 3)  # 10 images: 4 files, the last one partly full
    images = [_image(i, vector=bytes([i]) * 8) for i in range(10)]
    kept = [image for image in images if image.label == 1]
    with TestPipeline() as p:
        staged = p | beam.Create(images) | "Stage" >> beam.ParDo(staging.StagePixels(str(tmp_path)))
        assert_that(
            staged | "Carried" >> beam.Map(lambda im: (im.id, im.pixels, im.vector, bool(im.staged))),
            equal_to([(image.id, b"", b"", True) for image in images]),
            label="NoPixels",
        )
        restored = staged | "KeepOdd" >> beam.Filter(lambda im: im.label == 1) | "Restore" >> staging.RestorePixels()
        assert_that(restored, equal_to(kept), label="Restored")
    assert len(list(tmp_path.glob("*.staged"))) == 4


def test_an_image_missing_from_its_staging_file_fails_loudly(tmp_path):
    with pytest.raises(Exception, match="lacks"), TestPipeline() as p:
        staged = p | beam.Create([_image(1)]) | "Stage" >> beam.ParDo(staging.StagePixels(str(tmp_path)))
        stranger = staged | "Rename" >> beam.Map(lambda im: im._replace(id="not-staged"))
        _ = stranger | "Restore" >> staging.RestorePixels()
