"""Decode/resize, colour conversions, split assignment and balancing."""

from __future__ import annotations

import io
from collections import Counter

import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.windowed_value import WindowedValue
from PIL import Image

from pipelines import transforms
from pipelines.config import PreprocessConfig
from pipelines.dead_letters import DEAD_LETTER
from pipelines.quality.measures import image_quality
from pipelines.records import NO_LABEL, DecodedImage, LabelledImage
from pipelines.transforms import (
    BatchImages,
    DecodeAndResize,
    DownsampleToSmallestClass,
    UndecodableImage,
    assign_split,
    balance_priority,
    decode_and_resize,
)
from tests.image_files import labelled_image, offline_test_pipeline


def _png(array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", array)
    assert ok
    return encoded.tobytes()


def _pil_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _decode(data: bytes, *, size=(4, 4), color_mode="rgb", max_pixels=10**8) -> np.ndarray:
    return decode_and_resize(data, size=size, color_mode=color_mode, max_pixels=max_pixels)


class TestDecodeAndResize:
    def test_bgr_png_becomes_rgb_and_area_resized(self):
        bgr = np.zeros((8, 8, 3), np.uint8)
        bgr[:, :4] = (255, 0, 0)  # blue on the left half (OpenCV's BGR order)
        out = _decode(_png(bgr), size=(2, 2))
        assert out.shape == (2, 2, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out[0, 0], [0, 0, 255])  # RGB: blue is last
        np.testing.assert_array_equal(out[0, 1], [0, 0, 0])

    def test_non_square_size_is_width_height(self):
        out = _decode(_png(np.zeros((20, 30, 3), np.uint8)), size=(6, 4))
        assert out.shape == (4, 6, 3)

    def test_grayscale_input_to_rgb_repeats_the_grey(self):
        out = _decode(_png(np.full((8, 8), 77, np.uint8)))
        assert out.shape == (4, 4, 3)
        assert (out == 77).all()

    def test_rgb_to_grayscale_uses_luma_weights(self):
        out = _decode(_png(np.full((8, 8, 3), (0, 0, 255), np.uint8)), color_mode="grayscale")  # pure red
        assert out.shape == (4, 4, 1)
        assert abs(int(out[0, 0, 0]) - round(0.299 * 255)) <= 1

    def test_rgba_drops_alpha(self):
        rgba = np.zeros((8, 8, 4), np.uint8)
        rgba[..., 2] = 200  # red in BGRA
        rgba[..., 3] = 0  # fully transparent: the colour is kept, as tf.io.decode_image does
        out = _decode(_png(rgba))
        np.testing.assert_array_equal(out[0, 0], [200, 0, 0])

    def test_palette_png(self):
        rgb = np.zeros((8, 8, 3), np.uint8)
        rgb[:4] = (10, 200, 30)
        rgb[4:] = (250, 5, 120)
        palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        out = _decode(_pil_png(palette), size=(8, 8))
        np.testing.assert_array_equal(out, np.asarray(palette.convert("RGB")))

    def test_grey_alpha_png(self):
        out = _decode(_pil_png(Image.fromarray(np.full((8, 8), 90, np.uint8)).convert("LA")), color_mode="grayscale")
        assert out.shape == (4, 4, 1) and (out == 90).all()

    def test_16_bit_png_scaled_to_8_bit(self):
        out = _decode(_png(np.full((8, 8, 3), 257 * 100, np.uint16)))
        assert out.dtype == np.uint8 and (out == 100).all()

    def test_reduced_jpeg_decode_matches_full_decode(self):
        rng = np.random.default_rng(0)
        smooth = cv2.GaussianBlur(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8), (31, 31), 8)
        _, jpeg = cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_QUALITY, 95])
        reduced = _decode(jpeg.tobytes(), size=(50, 50))
        full = cv2.resize(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), (50, 50), interpolation=cv2.INTER_AREA)
        full = cv2.cvtColor(full, cv2.COLOR_BGR2RGB)
        assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 2.0

    @pytest.mark.parametrize("color_mode", ["rgb", "grayscale"])
    def test_truncated_jpeg_with_an_end_marker_is_corrupt_jpeg(self, color_mode):
        # libjpeg fills the missing rows with grey and only warns: without the strict decoder
        # this image would go into the training data two thirds flat grey.
        rng = np.random.default_rng(0)
        photo = cv2.GaussianBlur(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), (9, 9), 3)
        _, jpeg = cv2.imencode(".jpg", photo)
        whole = jpeg.tobytes()
        assert _decode(whole, size=(50, 50), color_mode=color_mode).shape[:2] == (50, 50)
        with pytest.raises(UndecodableImage) as raised:
            _decode(whole[: len(whole) // 3] + b"\xff\xd9", size=(50, 50), color_mode=color_mode)
        assert raised.value.reason == "corrupt_jpeg"

    @pytest.mark.parametrize(
        "data, reason",
        [
            (b"", "zero_bytes"),
            (b"hello, not an image", "not_an_image"),
            (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "truncated"),
            (b"\xff\xd8\xff\xe0" + b"\0" * 40, "truncated"),
        ],
    )
    def test_bad_bytes_raise_with_reason(self, data, reason):
        with pytest.raises(UndecodableImage) as error:
            _decode(data)
        assert error.value.reason == reason

    def test_truncated_png_body(self):
        data = _png(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        with pytest.raises(UndecodableImage) as error:
            _decode(data[: len(data) // 2])
        assert error.value.reason == "truncated"

    def test_decompression_bomb_refused_before_decoding(self):
        # 4000x4000 zeros compress to a few KB; the header alone says it is too large.
        data = _png(np.zeros((4000, 4000), np.uint8))
        with pytest.raises(UndecodableImage) as error:
            _decode(data, max_pixels=1_000_000)
        assert error.value.reason == "too_large"


def _image(image_id: str, group: str = "", source_split: str = "") -> LabelledImage:
    return LabelledImage(image_id, f"/x/{image_id}.png", 1, 0, group or image_id, source_split, False)


class TestAssignSplit:
    def test_fractions_and_determinism(self):
        config = PreprocessConfig(image_globs=(), output_dir="", classes=("a", "b"), seed=3)
        splits = [assign_split(_image(str(i)), config) for i in range(5000)]
        counts = Counter(splits)
        assert abs(counts["train"] / 5000 - 0.8) < 0.03
        assert abs(counts["validation"] / 5000 - 0.1) < 0.02
        assert splits == [assign_split(_image(str(i)), config) for i in range(5000)]
        other_seed = PreprocessConfig(image_globs=(), output_dir="", classes=("a", "b"), seed=4)
        assert splits != [assign_split(_image(str(i)), other_seed) for i in range(5000)]

    def test_group_never_spans_two_splits(self):
        config = PreprocessConfig(image_globs=(), output_dir="", classes=("a", "b"))
        by_group: dict[str, set[str]] = {}
        for i in range(2000):
            group = f"subject{i % 40}"
            by_group.setdefault(group, set()).add(assign_split(_image(str(i), group), config))
        assert all(len(splits) == 1 for splits in by_group.values())
        assert len({s for splits in by_group.values() for s in splits}) == 3

    def test_from_source_keeps_test_and_carves_validation_from_train(self):
        config = PreprocessConfig(image_globs=(), output_dir="", classes=("a", "b"), splits=None)
        assert {assign_split(_image(str(i), source_split="test"), config) for i in range(200)} == {"test"}
        train = Counter(assign_split(_image(str(i), source_split="train"), config) for i in range(2000))
        assert set(train) == {"train", "validation"}
        assert abs(train["validation"] / 2000 - 0.1) < 0.03


def _labelled_files(tmp_path, count: int) -> tuple[list, list, list]:
    """``count`` (split, LabelledImage) of PNGs, unlabelled and broken ones among them; the
    expected (id, quality) of the labelled and the unlabelled decodable ones."""
    images, expected, expected_unlabelled = [], [], []
    for i in range(count):
        path = tmp_path / f"{i}.png"
        if i % 29 == 0:
            path.write_bytes(b"not a png")
        else:
            path.write_bytes(_png(labelled_image(i % 2, i, height=12, width=10)))
        label = NO_LABEL if i % 7 == 0 else i % 2
        images.append(("train", LabelledImage(str(i), str(path), path.stat().st_size, label, str(i), "", False)))
        if i % 29:
            pixels = _decode(path.read_bytes(), size=(6, 6))
            row = (str(i), image_quality(pixels, (10, 12))._replace(atypicality=None))  # NaN != NaN
            (expected_unlabelled if label == NO_LABEL else expected).append(row)
    return images, expected, expected_unlabelled


class TestBatchImages:
    def test_a_batch_ends_at_its_image_count_or_its_bytes_and_a_large_file_goes_alone(self, monkeypatch):
        monkeypatch.setattr(transforms, "BATCH_IMAGES", 3)
        monkeypatch.setattr(transforms, "BATCH_BYTES", 100)
        sizes = [10, 10, 10, 10, 60, 50, 500, 1, 1]
        batcher = BatchImages()
        batcher.start_bundle()
        elements = [("train", _image(str(i))._replace(size=size)) for i, size in enumerate(sizes)]
        out = [batch for element in elements for batch in batcher.process(element)]
        out += list(batcher.finish_bundle())
        batches = [[image.size for _, image in windowed.value] for windowed in out]
        assert batches == [[10, 10, 10], [10, 60], [50], [500], [1, 1]]

    @pytest.mark.parametrize("workers", [1, 5, "one per image"])
    def test_every_image_leaves_once_with_its_own_audit_in_bundles_of_any_size(self, tmp_path, monkeypatch, workers):
        # Batches of 4 over bundles of every image (1 worker), of 8 or 9 images (5 workers: a
        # batch cut by its bundle's end) and of one image; unlabelled and broken files among
        # them: each decodable image comes out once, with the audit of its own pixels, the rest
        # as dead letters, whatever the batches and bundles.
        monkeypatch.setattr(transforms, "BATCH_IMAGES", 4)
        count = 43
        images, expected, expected_unlabelled = _labelled_files(tmp_path, count)
        workers = count if workers == "one per image" else workers
        config = PreprocessConfig(
            image_globs=(), output_dir="", classes=("a", "b"), image_size=(6, 6), decode_threads=3
        )
        with offline_test_pipeline(bundles=workers) as p:
            batches = p | beam.Create(images) | beam.ParDo(BatchImages())
            out = batches | beam.ParDo(DecodeAndResize(config)).with_outputs(DEAD_LETTER, main="batches")
            decoded = out.batches | "Images" >> beam.FlatMap(lambda batch: batch)
            by_id = lambda image: (image.id, image.quality._replace(atypicality=None))  # noqa: E731
            labelled = decoded | "Labelled" >> beam.Filter(lambda image: image.label is not None and image.pixels)
            # Unlabelled images come out beside them, without pixels (never written).
            unlabelled = decoded | "Unlabelled" >> beam.Filter(lambda image: image.label is None and not image.pixels)
            assert_that(labelled | "LabelledIds" >> beam.Map(by_id), equal_to(expected), label="LabelledOut")
            assert_that(unlabelled | "UnlabelledIds" >> beam.Map(by_id), equal_to(expected_unlabelled), label="Unl")
            reasons = out[DEAD_LETTER] | beam.Map(lambda letter: letter["reason"])
            # Unlabelled broken files have their own ("unlabelled") letter from the sources: none here.
            broken = [i for i in range(0, count, 29) if i % 7]
            assert_that(reasons, equal_to(["not_an_image"] * len(broken)), label="DeadLetters")
            # The bundles are what the test says: with one image each, every batch holds one.
            largest = batches | "Sizes" >> beam.Map(len) | beam.CombineGlobally(max)
            assert_that(largest, equal_to([1 if workers == count else 4]), label="LargestBatch")

    def test_a_batch_leaves_batches_ahead_late_in_order_and_the_last_at_the_bundles_end(self, tmp_path):
        # The pool decodes batches while the one before them goes downstream: process() yields
        # the batch BATCHES_AHEAD before (its images and dead letters, in order), finish_bundle the last one
        # with their window; nothing is lost or repeated, and a new bundle starts empty.
        images, expected, _ = _labelled_files(tmp_path, 30)
        config = PreprocessConfig(
            image_globs=(), output_dir="", classes=("a", "b"), image_size=(6, 6), decode_threads=2
        )
        batches = [images[:8], images[8:16], images[16:24], images[24:]]
        assert len(batches) > transforms.BATCHES_AHEAD
        decoder = DecodeAndResize(config)
        decoder.setup()
        try:
            for _ in range(2):  # Two bundles: the second starts with nothing in flight.
                decoder.start_bundle()
                per_call = [list(decoder.process(batch)) for batch in batches]
                last = list(decoder.finish_bundle())
                assert per_call[: transforms.BATCHES_AHEAD] == [[]] * transforms.BATCHES_AHEAD
                assert all(per_call[transforms.BATCHES_AHEAD :])
                tagged = beam.pvalue.TaggedOutput
                windowed = [o.value if isinstance(o, tagged) else o for o in last]
                assert all(isinstance(w, WindowedValue) for w in windowed)
                last = [
                    tagged(o.tag, w.value) if isinstance(o, tagged) else w.value
                    for o, w in zip(last, windowed, strict=True)
                ]
                outputs = [o for call in per_call for o in call] + last
                letters = [o.value for o in outputs if isinstance(o, beam.pvalue.TaggedOutput)]
                decoded = [o for o in outputs if not isinstance(o, beam.pvalue.TaggedOutput)]
                assert [len(batch) for batch in decoded] == [7, 8, 8, 5]  # 0 and 29 do not decode
                assert [letter["id"] for letter in letters] == ["29"]
                by_id = [
                    (im.id, im.quality._replace(atypicality=None)) for b in decoded for im in b if im.label is not None
                ]
                assert by_id == expected
                assert [im.id for b in decoded for im in b] == [
                    image.id for batch in batches for _, image in batch if image.id not in ("0", "29")
                ]
        finally:
            decoder.teardown()


def _decoded(image_id: str, label: int, split: str = "train") -> DecodedImage:
    return DecodedImage(image_id, label, split, b"\0", 0, image_id)


def _batches(images: list[DecodedImage], size: int) -> list[list[DecodedImage]]:
    """Batches of ``size`` images, each image's ``staged`` naming its batch (as StagePixels' file)."""
    return [[im._replace(staged=f"batch{i}") for im in images[i : i + size]] for i in range(0, len(images), size)]


class TestDownsampleToSmallestClass:
    @pytest.mark.parametrize("bundles", [1, "one per batch"])
    def test_each_split_keeps_smallest_class_count_of_lowest_priority_ids(self, bundles):
        images = [_decoded(f"a{i}", 0) for i in range(300)] + [_decoded(f"b{i}", 1) for i in range(120)]
        images += [_decoded(f"v{i}", i % 2, "validation") for i in range(31)]
        batches = _batches(images, 7)
        expected_train_0 = sorted((f"a{i}" for i in range(300)), key=lambda i: (balance_priority(i, 7), i))[:120]
        with offline_test_pipeline(bundles=len(batches) if bundles == "one per batch" else bundles) as p:
            result = p | beam.Create(batches) | DownsampleToSmallestClass(seed=7)
            kept_images = result["kept"] | "Images" >> beam.FlatMap(lambda batch: batch)
            kept = kept_images | "Key" >> beam.Map(lambda im: (im.split, im.label))
            counts = kept | beam.combiners.Count.PerElement()
            assert_that(
                counts,
                equal_to([(("train", 0), 120), (("train", 1), 120), (("validation", 0), 15), (("validation", 1), 15)]),
                label="BalancedCounts",
            )
            train_0 = (
                kept_images | beam.Filter(lambda im: im.split == "train" and im.label == 0) | beam.Map(lambda im: im.id)
            )
            assert_that(train_0, equal_to(expected_train_0), label="LowestPriorityKept")
            dropped = (
                result["dead_letter"]
                | beam.Map(lambda r: r["reason"])
                | "CountDropped" >> beam.combiners.Count.PerElement()
            )
            assert_that(dropped, equal_to([("balanced_out", 180 + 1)]), label="DroppedAccounted")

    def test_a_kept_image_stays_in_its_batch_and_a_batch_with_none_kept_leaves_none(self):
        # Class 0 has 40 images, class 1 has 4: most batches lose every image, some keep a few.
        images = [_decoded(f"a{i}", 0) for i in range(40)] + [_decoded(f"b{i}", 1) for i in range(4)]
        batches = _batches(images, 3)
        survivors = set(sorted((f"a{i}" for i in range(40)), key=lambda i: (balance_priority(i, 7), i))[:4])
        survivors |= {f"b{i}" for i in range(4)}
        expected = [(batch[0].staged, ids) for batch in batches if (ids := sorted(survivors & {im.id for im in batch}))]
        assert len(expected) < len(batches)
        with offline_test_pipeline() as p:
            result = p | beam.Create(batches) | DownsampleToSmallestClass(seed=7)
            parts = result["kept"] | beam.Map(lambda batch: (batch[0].staged, sorted(im.id for im in batch)))
            assert_that(parts, equal_to(expected))
