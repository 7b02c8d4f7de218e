"""Tests of pipelines/quality/outliers.py: robust z-scores and the reasons they give."""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.quality.measures import image_quality
from pipelines.quality.outliers import outlier_reasons, robust_values, robust_z
from tests.pipelines.quality.faces import SIZE, face, quality


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
