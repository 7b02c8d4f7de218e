"""Staging files: pixels and vectors leave the records at the decode and come back for the writer."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import staging
from pipelines.records import DecodedImage, LabelRow


def _image(index: int, vector: bytes = b"") -> DecodedImage:
    return DecodedImage(f"face-{index}é", index % 2, "train", bytes([index]) * 12, index, f"g{index}", vector)


def test_a_staging_record_round_trips():
    image = _image(3)
    assert staging.decode_staged(staging.encode_staged(image)) == (image.id, image.pixels)
    empty = image._replace(pixels=b"")
    assert staging.decode_staged(staging.encode_staged(empty)) == (image.id, b"")


def test_a_truncated_staging_record_is_an_error():
    with pytest.raises(ValueError, match="shorter"):
        staging.decode_staged(staging.encode_staged(_image(3))[:-1])


def test_images_leave_without_pixels_and_the_kept_ones_come_back_whole(tmp_path):
    # A vector StageVectors did not take (none does in the job) stays on the image.
    images = [_image(i, vector=bytes([i]) * 8) for i in range(10)]
    batches = [images[0:3], images[3:6], images[6:9], images[9:]]  # 4 files, the last one with one image
    kept = [image for image in images if image.label == 1]
    with TestPipeline() as p:
        staged = p | beam.Create(batches) | "Stage" >> beam.ParDo(staging.StagePixels(str(tmp_path)))
        assert_that(
            staged
            | "Images" >> beam.FlatMap(lambda batch: batch)
            | "Carried" >> beam.Map(lambda im: (im.id, im.pixels, im.vector, bool(im.staged))),
            equal_to([(image.id, b"", image.vector, True) for image in images]),
            label="NoPixels",
        )
        # A part of a batch (as the class balance keeps): one read of its file for the part.
        restored = (
            staged
            | "KeepOdd" >> beam.Map(lambda batch: [im for im in batch if im.label == 1])
            | "Restore" >> staging.RestorePixels()
        )
        assert_that(restored, equal_to(kept), label="Restored")
        # A batch as it left the staging: one read of its file.
        whole = staged | "RestoreBatches" >> staging.RestorePixels()
        assert_that(whole, equal_to(images), label="RestoredBatches")
    assert len(list(tmp_path.glob("*.staged"))) == 4


def test_an_image_missing_from_its_staging_file_fails_loudly(tmp_path):
    with pytest.raises(Exception, match="lacks"), TestPipeline() as p:
        staged = p | beam.Create([[_image(1)]]) | "Stage" >> beam.ParDo(staging.StagePixels(str(tmp_path)))
        stranger = staged | "Rename" >> beam.Map(lambda batch: [im._replace(id="not-staged") for im in batch])
        _ = stranger | "Restore" >> staging.RestorePixels()


def test_a_batch_of_two_staging_files_fails_loudly(tmp_path):
    with pytest.raises(Exception, match="two staging files"), TestPipeline() as p:
        staged = p | beam.Create([[_image(1)], [_image(2)]]) | "Stage" >> beam.ParDo(staging.StagePixels(str(tmp_path)))
        merged = staged | beam.FlatMap(lambda batch: batch) | beam.combiners.ToList()
        _ = merged | "Restore" >> staging.RestorePixels()


def _stage_vectors(tmp_path, rows):
    """Runs StageVectors over (id, LabelRow) rows as one bundle; returns its outputs."""
    stage = staging.StageVectors(str(tmp_path))
    stage.start_bundle()
    out = [staged for row in rows for staged in stage.process(row)]
    stage.finish_bundle()
    return out


def test_vectors_wait_in_files_from_the_parse_and_come_back_by_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "VECTORS_PER_FILE", 2)  # 5 vectors: 3 files
    vectors = [bytes([i]) * 8 for i in range(5)]
    rows = [(f"id{i}", LabelRow(i % 2, "train", "", "", vector)) for i, vector in enumerate(vectors)]
    staged = _stage_vectors(tmp_path, [*rows, ("novector", LabelRow(0, "train", "", ""))])
    assert staged[-1] == ("novector", LabelRow(0, "train", "", ""))
    assert len({row.vector_location.path for _, row in staged[:-1]}) == 3
    # What the join carries: a 16-byte digest, equal for equal vectors, and where the vector is.
    assert all(len(row.vector) == staging.DIGEST_BYTES for _, row in staged[:-1])
    again = _stage_vectors(tmp_path, rows[:1])
    assert again[0][1].vector == staged[0][1].vector and again[0][1].vector_location != staged[0][1].vector_location
    images = [
        _image(i)._replace(vector=b"", vector_location=row.vector_location) for i, (_, row) in enumerate(staged[:-1])
    ]
    restored = list(staging._with_vectors([_image(9), *reversed(images)]))
    assert sorted((im.id, im.vector, im.vector_location) for im in restored) == sorted(
        [(_image(9).id, b"", None), *((_image(i).id, vector, None) for i, vector in enumerate(vectors))]
    )


def test_a_damaged_vector_record_fails_loudly(tmp_path):
    ((_, row),) = _stage_vectors(tmp_path, [("a", LabelRow(0, "train", "", "", b"\1" * 8))])
    path = row.vector_location.path
    with open(path, "r+b") as f:
        f.seek(row.vector_location.offset + staging.DIGEST_BYTES)
        f.write(b"\2")
    with pytest.raises(ValueError, match="no intact vector"):
        list(staging._with_vectors([_image(1)._replace(vector_location=row.vector_location)]))
