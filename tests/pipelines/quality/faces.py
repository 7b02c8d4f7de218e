"""Demo faces as the job writes them, and their audit records: the quality tests' data."""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.config import PreprocessConfig
from pipelines.demo import defects, faces, plan
from pipelines.quality.measures import image_quality
from pipelines.records import DecodedImage
from pipelines.transforms import decode_and_resize

SIZE = 128
K = PreprocessConfig.duplicate_distance  # the defaults the job runs with
S = PreprocessConfig.duplicate_similarity


def face(index: int) -> np.ndarray:
    _, traits = plan.face_latent(7, index, index % 2 == 0)
    rng = plan.image_rng(7, index, plan.GLASSES_STREAM)
    return faces.glasses_photo(rng, SIZE, traits, distorted=False)


def as_written(rgb: np.ndarray, ext: str = ".png", params: tuple[int, ...] = ()) -> np.ndarray:
    """Encoded and decoded as the pipeline does, resized to its 50x50."""
    _, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    return decode_and_resize(data.tobytes(), size=(50, 50), color_mode="rgb", max_pixels=10**9)


def quality(rgb: np.ndarray, **kwargs):
    return image_quality(as_written(rgb, **kwargs), (rgb.shape[1], rgb.shape[0]))


def decoded(image_id: str, split: str, rgb: np.ndarray, content_hash: int) -> DecodedImage:
    return DecodedImage(image_id, 0, split, b"", content_hash, image_id, quality=quality(rgb))


def faces_and_odd_ones(count: int) -> tuple[list[DecodedImage], set[str]]:
    """``count`` faces and three that are not like them: block-scrambled, warped, and noise."""
    rng = np.random.default_rng(5)
    odd = {
        "scrambled": defects._scramble(face(count + 1), rng),
        "warped": defects._warp(face(count + 2), rng),
        "noise": rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8),
    }
    images = [decoded(str(i), "train", face(i), i) for i in range(1, count + 1)]
    images += [decoded(name, "train", rgb, count + n) for n, (name, rgb) in enumerate(odd.items(), 1)]
    return images, set(odd)
