"""Tests of pipelines/quality/measures.py: one image's statistics."""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.quality.measures import image_quality
from tests.pipelines.quality.faces import face, quality


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
