"""trainer/predict.py: one bad file does not stop a batch, and image bombs are refused unread."""

from __future__ import annotations

import csv
import io
import os
import pathlib
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines import features
from tests.image_files import bad_image_corpus
from trainer import data, errors, export, models, predict


def _fake_serving(image_bytes):
    """The serving signature's contract: decodes every image (InvalidArgumentError on a bad one)."""
    means = tf.map_fn(
        lambda b: tf.reduce_mean(tf.cast(tf.io.decode_image(b, channels=3, expand_animations=False), tf.float32)),
        image_bytes,
        fn_output_signature=tf.float32,
    )
    probability = means / 255.0
    return {"probability": probability, "label": tf.where(probability >= 0.5, b"yes", b"no")}


@pytest.fixture(autouse=True)
def _serving(monkeypatch):
    monkeypatch.setattr(export, "load_serving", lambda export_dir: (_fake_serving, None))
    monkeypatch.setattr(export, "read_serving_config", lambda export_dir: {"inputs": ["image"], "min_side": 8})


def _png_bomb(side: int) -> bytes:
    """A valid PNG header declaring side x side pixels, with next to no data (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = side.to_bytes(4, "big") + side.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # The IHDR chunk's CRC.
    return bytes(data)


def test_unreadable_files_are_listed_and_the_others_predicted(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_dark.png"), np.full((8, 8, 3), 20, np.uint8))
    cv2.imwrite(str(folder / "d_light.png"), np.full((8, 8, 3), 240, np.uint8))
    (folder / "b_text.png").write_text("not an image")
    good = (folder / "a_dark.png").read_bytes()
    (folder / "c_truncated.png").write_bytes(good[: len(good) // 2])  # A header, half the data.
    (folder / "e_bomb.png").write_bytes(_png_bomb(7900))
    output = tmp_path / "predictions.csv"

    rows = predict.predict("export", [str(folder)], output=str(output), batch_size=8, max_pixels=1000)

    by_name = {row.path.rsplit("/", 1)[1]: row for row in rows}
    assert sorted(by_name) == ["a_dark.png", "b_text.png", "c_truncated.png", "d_light.png", "e_bomb.png"]
    assert by_name["a_dark.png"].label == "no" and by_name["d_light.png"].label == "yes"
    assert by_name["b_text.png"].error.startswith("not_an_image: ")  # The pipeline's dead-letter reason.
    assert by_name["c_truncated.png"].probability is None and by_name["c_truncated.png"].error
    assert by_name["e_bomb.png"].error == "too_large: 7900x7900 > 1000 pixels"
    # One line per unreadable file (log lines of the libraries may come too).
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped ")]
    assert sorted(line.split(":")[0] for line in err) == [
        f"skipped {folder}/{name}" for name in ("b_text.png", "c_truncated.png", "e_bomb.png")
    ]
    with open(output) as f:
        written = list(csv.DictReader(f))
    assert [r["error"] == "" for r in written] == [not by_name[r["path"].rsplit("/", 1)[1]].error for r in written]


def test_a_small_png_bomb_is_refused_at_the_default_cap(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bomb(9000))
    assert bomb.stat().st_size < 20_000
    with pytest.raises(errors.DataError, match="none of the 1 input file"):
        predict.predict("export", [str(bomb)])
    assert f"too_large: 9000x9000 > {features.MAX_PIXELS} pixels" in capsys.readouterr().err


def test_predict_refuses_exactly_what_the_pipeline_refuses_with_its_reason(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, (content, _) in bad_image_corpus().items():
        (folder / name).write_bytes(content)
    os.mkfifo(folder / "pipe.png")  # Reading it would block forever.
    os.symlink(tmp_path / "gone.png", folder / "dangling.png")
    cv2.imwrite(str(folder / "good.jpg"), np.full((16, 16, 3), 200, np.uint8))
    rows = predict.predict("export", [str(folder)])
    by_name = {row.path.rsplit("/", 1)[1]: row for row in rows}
    assert by_name.pop("good.jpg").label == "yes"
    expected = {name: reason for name, (_, reason) in bad_image_corpus().items()}
    expected.update({"pipe.png": "not_a_regular_file", "dangling.png": "dangling_link"})
    assert sorted(by_name) == sorted(expected)
    for name, reason in expected.items():
        assert by_name[name].probability is None and by_name[name].error.split(":")[0] == reason, name


_REAL_LOAD_SERVING = export.load_serving
_REAL_READ_SERVING_CONFIG = export.read_serving_config


def _vector_export(tmp_path, data_dir, preset) -> str:
    """A random-weight ``preset`` model on ``data_dir`` (with a vector), exported."""
    manifest = features.read_manifest(data_dir)
    tf.keras.utils.set_random_seed(5)
    hp = models.fixed_hyperparameters(preset, {"width": 8, "blocks": 2, "units": 8})
    model = models.build_model(
        hp, preset=preset, input_shape=features.image_shape(manifest), vector_length=features.vector_length(manifest)
    )
    return export.export_model(
        model, tft_output=data.load_transform(data_dir, manifest), manifest=manifest, export_dir=str(tmp_path / "x")
    )


def test_vectors_csv_alone_predicts_every_row_and_lists_bad_ones(latent_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "load_serving", _REAL_LOAD_SERVING)
    monkeypatch.setattr(export, "read_serving_config", _REAL_READ_SERVING_CONFIG)
    export_dir = _vector_export(tmp_path, latent_dir, models.LATENT_MLP)
    lines = (pathlib.Path(latent_dir).parent / "test.csv").read_text().splitlines()
    vectors_csv = tmp_path / "vectors.csv"
    vectors_csv.write_text("\n".join([*lines, "broken,0,1.0,x,3.0,4.0"]) + "\n")

    rows = predict.predict(export_dir, [], vectors_csv=str(vectors_csv), output=str(tmp_path / "out.csv"))

    assert [row.id for row in rows] == [line.split(",")[0] for line in lines[1:]] + ["broken"]
    raw = np.array([line.split(",")[2:] for line in lines[1:]], np.float32)
    served = export.load_serving(export_dir)[0](latent=tf.constant(raw))["probability"].numpy()
    np.testing.assert_allclose([row.probability for row in rows[:-1]], served, atol=1e-6)
    assert rows[-1].probability is None and "bad vector" in rows[-1].error
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped ")] == [
        f"skipped broken: {rows[-1].error}"
    ]
    with open(tmp_path / "out.csv") as f:
        assert next(iter(csv.DictReader(f))).keys() == {"id", "path", "probability", "label", "error"}
    with pytest.raises(errors.UsageError, match="--vectors_csv FILE: the model"):
        predict.predict(export_dir, [])


def test_images_with_vectors_by_id_and_an_id_without_a_vector(latent_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "load_serving", _REAL_LOAD_SERVING)
    monkeypatch.setattr(export, "read_serving_config", _REAL_READ_SERVING_CONFIG)
    export_dir = _vector_export(tmp_path, latent_dir, models.IMAGE_LATENT)
    root = pathlib.Path(latent_dir).parent
    lines = (root / "test.csv").read_text().splitlines()
    missing = lines[-1].split(",")[0]
    vectors_csv = tmp_path / "vectors.csv"
    vectors_csv.write_text("\n".join(lines[:-1]) + "\n")  # The last image's row left out.
    ids = [line.split(",")[0] for line in lines[1:]]
    images = [str(root / "images" / f"{i}.png") for i in ids]

    rows = predict.predict(export_dir, images, vectors_csv=str(vectors_csv))

    assert [row.id for row in rows] == ids
    assert (
        rows[-1].probability is None and rows[-1].error == f"no vector for id {missing} in --vectors_csv {vectors_csv}"
    )
    assert f"skipped {images[-1]}: {rows[-1].error}" in capsys.readouterr().err.splitlines()
    raw = np.array([line.split(",")[2:] for line in lines[1:-1]], np.float32)
    served = export.load_serving(export_dir)[0](
        image_bytes=tf.constant([pathlib.Path(p).read_bytes() for p in images[:-1]]), latent=tf.constant(raw)
    )["probability"].numpy()
    np.testing.assert_allclose([row.probability for row in rows[:-1]], served, atol=1e-6)
    with pytest.raises(errors.UsageError, match="takes images; name image files"):
        predict.predict(export_dir, [], vectors_csv=str(vectors_csv))
