"""trainer/export.py: serving signatures, self-contained reload, training/serving skew."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from pipelines import features
from trainer import architectures, data, export, models

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _source_image(rng, *, height, width, bar: bool) -> np.ndarray:
    """A smooth-ish RGB uint8 image (as a camera might give), optionally with a bright bar."""
    image = cv2.GaussianBlur(rng.integers(0, 140, size=(height, width, 3), dtype=np.uint8), (5, 5), 0)
    if bar:
        image[height // 3 : height // 3 + height // 6] = (235, 225, 215)
    return image


def _png(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def _stored_pixels(rgb: np.ndarray, *, height: int, width: int, channels: int) -> np.ndarray:
    """What the pipeline stores for an image: cv2 grey conversion, INTER_AREA resize, uint8."""
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if channels == 1 else rgb
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image.reshape(height, width, channels).astype(np.uint8)


def _exported(tmp_path, data_dir, preset):
    """A (random-weight) model of ``preset`` and its export; skew does not need training."""
    manifest = features.read_manifest(data_dir)
    tf.keras.utils.set_random_seed(3)
    model = models.build_model(kt.HyperParameters(), preset=preset, input_shape=features.image_shape(manifest))
    export_dir = export.export_model(
        model,
        tft_output=data.load_transform(data_dir, manifest),
        manifest=manifest,
        export_dir=str(tmp_path / "export"),
    )
    return model, manifest, export_dir


def _trainer_path_probability(model, data_dir, manifest, pixels: np.ndarray) -> np.ndarray:
    """P(class 1) of stored pixels through the trainer's input path (parse + transform map)."""
    height, width, channels = features.image_shape(manifest)
    serialized = [
        features.encode_example(
            image=p.tobytes(), label=0, example_id=f"x{i}", height=height, width=width, channels=channels
        )
        for i, p in enumerate(pixels)
    ]
    fn = data.make_parse_and_transform(data.load_transform(data_dir, manifest), image_shape=(height, width, channels))
    image, _ = next(iter(tf.data.Dataset.from_tensor_slices(serialized).batch(len(serialized)).map(fn)))
    return np.asarray(architectures.positive_probability(model.predict_on_batch(image)))


@pytest.mark.parametrize(
    "name, channels, preset",
    [("rgb16", 3, models.GLASSES_CNN), ("gray24", 1, models.COMICS_CNN)],
    ids=["rgb", "grayscale"],
)
def test_serving_png_matches_the_trainer_input_path(make_data_dir, tmp_path, name, channels, preset):
    size = 16 if channels == 3 else 24
    data_dir = make_data_dir(
        name, height=size, width=size, channels=channels, n_per_class_split={"train": 24, "validation": 8, "test": 8}
    )
    model, manifest, export_dir = _exported(tmp_path, data_dir, preset)
    rng = np.random.default_rng(7)
    # Integer and non-integer shrink factors, landscape and portrait.
    sources = [
        _source_image(rng, height=h, width=w, bar=i % 2 == 1)
        for i, (h, w) in enumerate([(48, 48), (60, 41), (37, 90), (size * 5, size * 3)])
    ]
    stored = np.stack([_stored_pixels(s, height=size, width=size, channels=channels) for s in sources])

    # Pixels: the serving decode reproduces the pipeline's stored uint8 values (+-1 rounding).
    module = export.ServingModule(model, data.load_transform(data_dir, manifest), manifest)
    for source, expected in zip(sources, stored, strict=True):
        eager = module._decode(tf.constant(_png(source))).numpy()
        in_graph = tf.function(module._decode)(tf.constant(_png(source))).numpy()
        np.testing.assert_array_equal(eager, in_graph)
        assert np.abs(eager.astype(int) - expected.astype(int)).max() <= 1

    serving_default, serving_examples = export.load_serving(export_dir)
    served = serving_default(image_bytes=tf.constant([_png(s) for s in sources]))
    expected = _trainer_path_probability(model, data_dir, manifest, stored)
    np.testing.assert_allclose(served["probability"].numpy(), expected, atol=1e-2)
    np.testing.assert_array_equal(served["class"].numpy(), (served["probability"].numpy() >= 0.5).astype(np.int64))
    assert [label.decode() for label in served["label"].numpy()] == [
        manifest["classes"][c] for c in served["class"].numpy()
    ]

    # serving_examples on the very stored pixels: the trainer path exactly.
    examples = [
        features.encode_example(image=p.tobytes(), label=1, example_id="e", height=size, width=size, channels=channels)
        for p in stored
    ]
    np.testing.assert_allclose(
        serving_examples(examples=tf.constant(examples))["probability"].numpy(), expected, atol=1e-5
    )


def test_serving_decodes_16_bit_rgba_and_grey_files(make_data_dir, tmp_path):
    data_dir = make_data_dir(
        "rgb16", height=16, width=16, channels=3, n_per_class_split={"train": 24, "validation": 8, "test": 8}
    )
    model, manifest, _ = _exported(tmp_path, data_dir, models.GLASSES_CNN)
    module = export.ServingModule(model, data.load_transform(data_dir, manifest), manifest)
    rgb = _source_image(np.random.default_rng(1), height=32, width=32, bar=True)
    expected = _stored_pixels(rgb, height=16, width=16, channels=3)
    bgr16 = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    bgra = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    for encoded in (cv2.imencode(".png", bgr16)[1], cv2.imencode(".png", bgra)[1]):
        decoded = module._decode(tf.constant(encoded.tobytes())).numpy()
        assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    decoded = module._decode(tf.constant(cv2.imencode(".png", grey)[1].tobytes())).numpy()
    assert decoded.shape == (16, 16, 3) and np.array_equal(decoded[..., 0], decoded[..., 2])
    jpeg = module._decode(tf.constant(cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes())).numpy()
    assert np.abs(jpeg.astype(int) - expected.astype(int)).mean() < 4  # Lossy, but the same picture.


RELOAD_SCRIPT = r"""
import json, sys
import tensorflow as tf
from trainer import export
serving_default, serving_examples = export.load_serving(sys.argv[1])
images = [open(p, "rb").read() for p in json.loads(sys.argv[2])]
examples = [bytes.fromhex(h) for h in json.loads(sys.argv[3])]
print(json.dumps({
    "images": serving_default(image_bytes=tf.constant(images))["probability"].numpy().tolist(),
    "examples": serving_examples(examples=tf.constant(examples))["probability"].numpy().tolist(),
}))
"""


def test_export_reloads_in_a_fresh_process_without_the_data_dir(make_data_dir, tmp_path):
    original = make_data_dir(
        "rgb16", height=16, width=16, channels=3, n_per_class_split={"train": 24, "validation": 8, "test": 8}
    )
    data_dir = tmp_path / "data"
    shutil.copytree(original, data_dir)
    model, manifest, export_dir = _exported(tmp_path, str(data_dir), models.GLASSES_CNN)
    rng = np.random.default_rng(5)
    sources = [_source_image(rng, height=40, width=40, bar=b) for b in (False, True, True)]
    paths = []
    for i, source in enumerate(sources):
        paths.append(str(tmp_path / f"image{i}.png"))
        pathlib.Path(paths[-1]).write_bytes(_png(source))
    stored = np.stack([_stored_pixels(s, height=16, width=16, channels=3) for s in sources])
    examples = [
        features.encode_example(image=p.tobytes(), label=0, example_id="e", height=16, width=16, channels=3)
        for p in stored
    ]
    in_process = export.load_serving(export_dir)[0](image_bytes=tf.constant([_png(s) for s in sources]))[
        "probability"
    ].numpy()
    keras_path = _trainer_path_probability(model, str(data_dir), manifest, stored)

    shutil.rmtree(data_dir)  # The export must carry the transform graph and its constants.
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, export_dir, json.dumps(paths), json.dumps([e.hex() for e in examples])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reloaded = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(reloaded["images"], in_process, atol=1e-6)
    np.testing.assert_allclose(reloaded["examples"], keras_path, atol=1e-5)
    assert set(np.round(in_process, 3)) != {0.5} or len(set(in_process)) > 1  # Not a constant model.


def test_serving_the_raw_vector_matches_the_trainer_input_path(latent_dir, tmp_path):
    manifest = features.read_manifest(latent_dir)
    tft_output = data.load_transform(latent_dir, manifest)
    height, width, channels = features.image_shape(manifest)
    tf.keras.utils.set_random_seed(4)
    hp = models.fixed_hyperparameters(models.IMAGE_LATENT, {"width": 8, "blocks": 2, "units": 8})
    model = models.build_model(hp, preset=models.IMAGE_LATENT, input_shape=(height, width, channels), vector_length=4)
    export_dir = export.export_model(model, tft_output=tft_output, manifest=manifest, export_dir=str(tmp_path / "e"))
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(5, height, width, channels), dtype=np.uint8)
    vectors = (rng.normal(size=(5, 4)) * 20).astype(np.float32)  # Far from the train statistics too.
    serialized = [
        features.encode_example(
            image=p.tobytes(),
            label=0,
            example_id=f"x{i}",
            height=height,
            width=width,
            channels=channels,
            vector=v.tobytes(),
        )
        for i, (p, v) in enumerate(zip(pixels, vectors, strict=True))
    ]
    fn = data.make_parse_and_transform(
        tft_output, image_shape=(height, width, channels), vector_length=4, inputs=models.IMAGE_LATENT.inputs
    )
    inputs, _ = fn(tf.constant(serialized))
    expected = np.asarray(architectures.positive_probability(model.predict_on_batch(inputs)))
    loaded = tf.saved_model.load(export_dir)
    pngs = tf.constant([_png(p) for p in pixels])
    served = loaded.signatures["serving_image_latent"](image_bytes=pngs, latent=tf.constant(vectors))
    np.testing.assert_allclose(served["probability"].numpy(), expected, atol=1e-5)
    by_example = loaded.signatures["serving_examples"](examples=tf.constant(serialized))
    np.testing.assert_allclose(by_example["probability"].numpy(), expected, atol=1e-5)
