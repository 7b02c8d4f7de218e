"""trainer/training.py: face_cnn trained (with augmentation) and exported, ensembles."""

from __future__ import annotations

import dataclasses
import json

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import architectures, data, ensembles, evaluation, export, fitting, job_layout, models, training
from trainer.recipe import BN_STATISTICS, Recipe


@pytest.mark.parametrize("bn_statistics", BN_STATISTICS)
def test_face_cnn_trains_with_augmentation_and_its_export_is_deterministic(rgb_dir, tmp_path, bn_statistics):
    data_dir = data.DataDir.read(rgb_dir)
    job_dir = str(tmp_path / "job")
    model = training.train(
        fitting.Run(
            data_dir=data_dir,
            job_dir=job_dir,
            preset=models.FACE_CNN,
            hyperparameters={"width": 8, "blocks": 2, "batch_size": 16, "augment": "strong", "epochs": 2},
            verbose=0,
            recipe=Recipe(bn_statistics=bn_statistics),
        )
    )
    with open(f"{job_dir}/{job_layout.CONFIG_FILE}") as f:
        config = json.load(f)
    assert config["model"] == "face_cnn" and config["hyperparameters"]["augment"] == "strong"
    recipe = {"warmup_epochs": 1.0, "schedule": "cosine", "clipnorm": 1.0, "bn_statistics": bn_statistics}
    assert config["recipe"] == recipe
    # The first BatchNormalization's input is the first convolution's output (no bias): its
    # mean over the 48 clean training images is what "precise" keeps (3 batches of 16), not
    # what the moving averages of the augmented batches hold.
    saved = keras.saving.load_model(f"{job_dir}/{job_layout.MODEL_FILE}")
    conv = keras.Model(saved.inputs, saved.get_layer("block1_conv1").output)
    common = dict(manifest=data_dir.manifest, tft_output=data_dir.tft_output, global_batch_size=48)
    images, _ = next(iter(data.make_dataset(rgb_dir, "train", training=False, **common)))
    clean_mean = conv(images).numpy().mean(axis=(0, 1, 2))
    kept = saved.get_layer("block1_conv1_bn").moving_mean.numpy()
    assert np.allclose(kept, clean_mean, atol=1e-4) == (bn_statistics == "precise")
    assert config["class_weight"] is None and config["early_stopping_patience"] == 3
    assert int(model.optimizer.iterations.numpy()) == 2 * 3  # 48 train images / batch 16, 2 epochs.
    serve, _ = export.load_serving(f"{job_dir}/{job_layout.EXPORT_DIR}")
    rng = np.random.default_rng(0)
    ok, png = cv2.imencode(".png", rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8))
    assert ok
    image = tf.constant([png.tobytes()] * 2)
    first, second = serve(image_bytes=image)["probability"].numpy(), serve(image_bytes=image)["probability"].numpy()
    np.testing.assert_array_equal(first, second)
    assert first[0] == first[1]  # No random layer in the serving graph.


def test_an_ensemble_exports_the_mean_of_its_members_and_reuses_those_already_trained(rgb_dir, tmp_path):
    data_dir = data.DataDir.read(rgb_dir)
    job_dir = tmp_path / "job"
    (job_dir).mkdir()
    (job_dir / job_layout.HISTORY_FILE).write_text("epoch,loss\n0,1.0\n")  # An earlier single run's.
    run = fitting.Run(
        data_dir=data_dir,
        job_dir=str(job_dir),
        preset=models.FACE_CNN,
        hyperparameters={"width": 8, "blocks": 2, "batch_size": 16, "epochs": 1},
        seed=3,
        verbose=0,
    )
    training.train_ensemble(run, members=2)
    with open(job_dir / job_layout.CONFIG_FILE) as f:
        config = json.load(f)
    assert config["ensemble"] == {
        "members": 2,
        "seeds": [3, 4],
        "member_dirs": ["members/member-0", "members/member-1"],
    }
    assert config["data_fingerprint"] == data_dir.fingerprint and config["model"] == "face_cnn"
    assert not (job_dir / job_layout.HISTORY_FILE).exists()  # Not this model's curves.
    member_paths = [job_dir / job_layout.member_dir(k) / job_layout.MODEL_FILE for k in range(2)]
    for k in range(2):
        with open(job_dir / job_layout.member_dir(k) / job_layout.CONFIG_FILE) as f:
            assert json.load(f)["seed"] == 3 + k
        assert not (job_dir / job_layout.member_dir(k) / job_layout.EXPORT_DIR).exists()
    saved = keras.saving.load_model(job_dir / job_layout.MODEL_FILE)
    members = [keras.saving.load_model(path) for path in member_paths]
    assert [m.name for m in ensembles.ensemble_members(saved)] == ["member_0", "member_1"]
    common = dict(manifest=data_dir.manifest, tft_output=data_dir.tft_output, global_batch_size=16)
    images, _ = next(iter(data.make_dataset(rgb_dir, "test", training=False, **common)))
    each = [m(images, training=False).numpy() for m in members]
    assert not np.allclose(each[0], each[1])  # Two seeds, two models.
    np.testing.assert_allclose(saved(images, training=False).numpy(), (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-6)
    serve, _ = export.load_serving(str(job_dir / job_layout.EXPORT_DIR))
    assert serve is not None

    # Evaluation runs the members one by one: the same probabilities, each member's units probed.
    result = evaluation.predict_split(saved, data_dir, "test", batch_size=16)
    first = result["probability"][:16]
    np.testing.assert_allclose(
        first, architectures.positive_probability(saved(images, training=False)), rtol=1e-5, atol=1e-6
    )
    assert {name.split("/")[0] for name in result["unit_max"]} == {"member_0", "member_1"}

    # Run again: both members are reused, not retrained; other hyperparameters retrain them.
    written = [path.stat().st_mtime_ns for path in member_paths]
    training.train_ensemble(run, members=2)
    assert [path.stat().st_mtime_ns for path in member_paths] == written
    other = {"width": 4, "blocks": 2, "batch_size": 16, "epochs": 1}
    training.train_ensemble(dataclasses.replace(run, hyperparameters=other), members=2)
    assert all(path.stat().st_mtime_ns != before for path, before in zip(member_paths, written, strict=True))
