"""Small image files for tests, written into a tmp dir (never real data)."""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline


def offline_test_pipeline(*, bundles: int = 1) -> TestPipeline:
    """A TestPipeline on the FnApiRunner: the DirectRunner would first try to download Prism.

    ``bundles``: each stage runs in that many bundles on as many threads (the runner splits a
    stage's input evenly over them: as many bundles as elements gives bundles of one).
    """
    if bundles == 1:
        return TestPipeline(runner="FnApiRunner")
    options = PipelineOptions(direct_num_workers=bundles, direct_running_mode="multi_threading")
    return TestPipeline(runner="FnApiRunner", options=options)


def labelled_image(label: int, index: int, *, height: int = 60, width: int = 48, channels: int = 3) -> np.ndarray:
    """A [height, width, channels] uint8 image whose class is visible at any size: class 1 has
    a bright horizontal band. The same (label, index) always gives the same image."""
    rng = np.random.default_rng([label, index])
    image = rng.integers(0, 120, size=(height, width, channels), dtype=np.uint8)
    if label == 1:
        image[height // 3 : height // 2] = 230
    return image


def write_glasses_like(
    directory: pathlib.Path, labels: list[int], *, start_id: int = 1, extension: str = "png"
) -> pathlib.Path:
    """Writes ``face-<id>.<ext>`` images and ``labels.csv`` (id,label); returns the images dir."""
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["id,label"]
    for offset, label in enumerate(labels):
        image_id = start_id + offset
        cv2.imwrite(str(images / f"face-{image_id}.{extension}"), labelled_image(label, image_id))
        rows.append(f"{image_id},{label}")
    (directory / "labels.csv").write_text("\n".join(rows) + "\n")
    return images


def bad_image_corpus() -> dict[str, tuple[bytes, str]]:
    """{file name: (bytes, the pipeline's dead-letter reason)}: files every reader must refuse alike."""
    image = labelled_image(1, 3, height=64, width=64)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    png = cv2.imencode(".png", image)[1].tobytes()
    return {
        "empty.png": (b"", "zero_bytes"),
        "text.png": (b"this is text, not an image", "not_an_image"),
        "half.png": (png[: len(png) // 2], "truncated"),
        "half.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        # A whole PNG with bytes after its IEND chunk (a download glued to another file).
        "trailing.png": (png + bytes(64), "undecodable"),
        # Half a JPEG with its end marker glued on: OpenCV, PIL and TensorFlow decode it (the
        # missing rows grey, a libjpeg warning on stderr naming no file).
        "half_with_end.jpg": (jpeg[: len(jpeg) // 2] + b"\xff\xd9", "corrupt_jpeg"),
        "tiny.png": (cv2.imencode(".png", image[:4, :4])[1].tobytes(), "too_small"),
    }
