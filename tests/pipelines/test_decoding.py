"""pipelines/decoding.py: the one decoder; the pipeline, the review's thumbnails and predict refuse alike."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines import decoding, features
from pipelines.review.thumbnails import make_thumbnail
from tests.image_files import bad_image_corpus

CORPUS = bad_image_corpus()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_pipeline_the_thumbnails_and_the_check_refuse_with_the_same_reason(name):
    data, reason = CORPUS[name]
    readers = {
        "pipeline": lambda: decoding.decode_with_size(
            data, size=(16, 16), color_mode="rgb", max_pixels=features.MAX_PIXELS, min_side=features.MIN_SIDE
        ),
        "thumbnail": lambda: make_thumbnail(data, side=32, max_pixels=features.MAX_PIXELS, min_side=features.MIN_SIDE),
        "check": lambda: decoding.check_image(data, max_pixels=features.MAX_PIXELS, min_side=features.MIN_SIDE),
    }
    for reader, read in readers.items():
        with pytest.raises(decoding.UndecodableImage) as refused:
            read()
        assert refused.value.reason == reason, reader


def test_a_png_with_bytes_after_its_end_is_not_called_truncated():
    data, _ = CORPUS["trailing.png"]
    with pytest.raises(decoding.UndecodableImage) as refused:
        decoding.check_container(data)
    assert refused.value.detail == "64 bytes after the PNG's IEND chunk"
    with pytest.raises(decoding.UndecodableImage) as cut:
        decoding.check_container(data[:-100])
    assert (cut.value.reason, cut.value.detail) == ("truncated", "PNG without IEND chunk")


def _jpeg_rotated_by_exif(width: int, height: int) -> bytes:
    """A width x height JPEG (a bright top row) whose EXIF says: rotate 90 degrees to display."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW.
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def test_exif_orientation_is_ignored_alike_by_the_pipeline_the_thumbnails_and_the_serving_decoder():
    data = _jpeg_rotated_by_exif(64, 32)
    decoded = decoding.decode_with_size(data, size=(64, 32), color_mode="rgb", max_pixels=features.MAX_PIXELS)
    assert decoded.original_size == (64, 32) and decoded.pixels.shape == (32, 64, 3)
    assert decoded.pixels[:4].mean() > 200 and decoded.pixels[-4:].mean() < 50  # As stored: bright top rows.
    thumbnail = Image.open(io.BytesIO(make_thumbnail(data, side=64, max_pixels=features.MAX_PIXELS)))
    assert thumbnail.size == (64, 32) and not thumbnail.getexif()  # No EXIF for the browser to rotate by.
    served = tf.io.decode_image(data, channels=3).numpy()
    assert served.shape == (32, 64, 3)
    np.testing.assert_allclose(served.astype(float), decoded.pixels.astype(float), atol=3)


@pytest.mark.parametrize("shape", [(61, 97), (64, 64), (30, 20), (50, 50), (1024, 1024)])
def test_a_colour_png_resized_before_its_channels_are_swapped_has_the_pixels_of_the_swap_then_resize(shape):
    # Noise: every channel and every pixel differ, so a channel resized with another's weights shows.
    bgr = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    data = cv2.imencode(".png", bgr)[1].tobytes()
    swapped_then_resized = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (50, 50), interpolation=cv2.INTER_AREA)
    decoded = decoding.decode_with_size(data, size=(50, 50), color_mode="rgb", max_pixels=features.MAX_PIXELS)
    assert decoded.original_size == (shape[1], shape[0])
    assert decoded.pixels.shape == (50, 50, 3) and decoded.pixels.flags.c_contiguous
    np.testing.assert_array_equal(decoded.pixels, swapped_then_resized)
