"""trainer/training.py's recipe: class weights, early stopping (also across a resume), augmentation, face_cnn, ensembles."""

from __future__ import annotations

import json
import logging

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import data, evaluation, export, job_layout, models, multiworker, training


def _manifest(train_counts: dict[str, int]) -> dict:
    return {"counts": {"written": {"train": train_counts}}}


def test_class_weights_from_unequal_train_counts():
    weights = training.class_weights(_manifest({"0": 30, "1": 10}))
    assert weights == pytest.approx({0: 40 / 60, 1: 40 / 20})
    assert 30 * weights[0] == pytest.approx(10 * weights[1])  # Each class weighs the same in total.
    assert training.class_weights(_manifest({"0": 12, "1": 12})) is None
    with pytest.raises(ValueError, match="no example of class"):
        training.class_weights(_manifest({"0": 12, "1": 0}))


def _diverging_problem():
    """A Dense(1) from zero weights: training moves it towards y = x, validation wants y = -x.

    Every epoch lowers the training loss and raises val_loss, so the best epoch is the first.
    """
    x = np.linspace(-1, 1, 32, dtype="float32").reshape(-1, 1)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model, x


class _EpochWeights(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights()[0].copy())


def test_early_stopping_restores_the_best_epochs_weights():
    model, x = _diverging_problem()
    recorder = _EpochWeights()
    stopping = training.ResumableEarlyStopping(patience=2, start_fraction=0)
    history = model.fit(x, x, validation_data=(x, -x), epochs=10, verbose=0, callbacks=[recorder, stopping])
    val = history.history["val_loss"]
    assert len(val) == 3 and val[0] < val[1] < val[2]  # Stopped after 2 epochs without improving.
    np.testing.assert_array_equal(model.get_weights()[0], recorder.weights[0])
    assert not np.array_equal(recorder.weights[0], recorder.weights[2])


@pytest.mark.parametrize("stopping_class", [training.ScheduledEarlyStopping, training.ResumableEarlyStopping])
def test_early_stopping_watches_only_the_later_half_of_the_epochs(stopping_class):
    model, x = _diverging_problem()
    recorder = _EpochWeights()
    stopping = stopping_class(patience=2)  # The default start: half of the fit's epochs.
    history = model.fit(x, x, validation_data=(x, -x), epochs=10, verbose=0, callbacks=[recorder, stopping])
    # Epochs 0-4 are not watched although epoch 0 is the best; epoch 5 is the first watched
    # one, hence the best, and 2 worse epochs after it stop the fit.
    assert stopping.start_from_epoch == 5
    assert len(history.history["val_loss"]) == 8
    np.testing.assert_array_equal(model.get_weights()[0], recorder.weights[5])


def test_early_stopping_after_a_resume_restores_the_best_epoch_from_its_checkpoint(tmp_path):
    model, x = _diverging_problem()
    model.fit(x, x, epochs=1, verbose=0)
    best = model.get_weights()[0].copy()
    # The killed run: epoch 0 was its best and is checkpointed; epoch 1 was worse.
    model.save_weights(str(tmp_path / job_layout.EPOCH_WEIGHTS_FILE.format(epoch=1)))
    earlier = [{"epoch": 0, "val_loss": 0.5}, {"epoch": 1, "val_loss": 0.9}]
    model.fit(x, x, epochs=2, verbose=0)  # Its weights moved on before the kill.
    stopping = training.ResumableEarlyStopping(
        patience=2, history=earlier, checkpoint_dir=str(tmp_path), start_fraction=0
    )
    history = model.fit(x, x, validation_data=(x, -x), initial_epoch=2, epochs=10, verbose=0, callbacks=[stopping])
    assert len(history.history["val_loss"]) == 1  # Patience counts the killed run's epochs too.
    np.testing.assert_array_equal(model.get_weights()[0], best)


def test_early_stopping_after_a_resume_keeps_the_last_weights_when_the_best_checkpoint_is_bad(tmp_path, caplog):
    model, x = _diverging_problem()
    # The killed run's best epoch 0 left a 0-byte checkpoint (killed as it was written).
    (tmp_path / job_layout.EPOCH_WEIGHTS_FILE.format(epoch=1)).write_bytes(b"")
    earlier = [{"epoch": 0, "val_loss": 0.01}, {"epoch": 1, "val_loss": 0.02}]  # Better than any epoch to come.
    stopping = training.ResumableEarlyStopping(
        patience=2, history=earlier, checkpoint_dir=str(tmp_path), start_fraction=0
    )
    recorder = _EpochWeights()
    with caplog.at_level(logging.WARNING):
        model.fit(x, x, validation_data=(x, -x), initial_epoch=2, epochs=10, verbose=0, callbacks=[recorder, stopping])
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("skipping the best epoch's") for m in messages) == 1, messages
    np.testing.assert_array_equal(model.get_weights()[0], recorder.weights[-1])  # No crash: the last epoch's.


def test_a_resumed_early_stopping_ignores_the_killed_runs_unwatched_epochs(tmp_path):
    model, x = _diverging_problem()
    # Epoch 0 (the killed run's best) is before the watched half of 4 epochs: not a candidate.
    earlier = [{"epoch": 0, "val_loss": 0.1}, {"epoch": 1, "val_loss": 0.9}]
    recorder = _EpochWeights()
    stopping = training.ResumableEarlyStopping(patience=2, history=earlier, checkpoint_dir=str(tmp_path))
    model.fit(x, x, validation_data=(x, -x), initial_epoch=2, epochs=4, verbose=0, callbacks=[recorder, stopping])
    assert stopping.best_epoch == 2  # No checkpoint of epoch 0 was looked for (there is none).
    np.testing.assert_array_equal(model.get_weights()[0], recorder.weights[0])


def _multi_worker_fit(model, x, y, validation_y, tmp_path, **kwargs) -> list[dict[str, float]]:
    """The multi-worker loop under the default strategy (one replica, in this process)."""
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    validation = tf.data.Dataset.from_tensor_slices((x, validation_y)).batch(8)
    return multiworker.fit_multi_worker(
        model,
        strategy=tf.distribute.get_strategy(),
        train_ds=train,
        validation_ds=validation,
        steps_per_epoch=4,
        global_batch_size=8,
        job_dir=str(tmp_path),
        config={},
        **kwargs,
    )


def test_the_multi_worker_loop_stops_early_and_restores_the_best_epoch(tmp_path):
    model, x = _diverging_problem()
    history = _multi_worker_fit(model, x, x[:, 0], -x[:, 0], tmp_path, epochs=10, patience=2, watch_from_epoch=1)
    val = [row["val_loss"] for row in history]
    # Epoch 0 is not watched; epoch 1 is the best watched one, and 2 worse epochs stop the loop.
    assert len(val) == 4 and val[0] < val[1] < val[2] < val[3]
    best = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    tf.train.Checkpoint(model=best).restore(str(tmp_path / job_layout.CHECKPOINT_DIR / "epoch-2")).expect_partial()
    np.testing.assert_array_equal(model.get_weights()[0], best.get_weights()[0])
    assert not np.array_equal(model.get_weights()[0], np.zeros((1, 1)))


def test_the_multi_worker_loop_weighs_the_loss_by_class(tmp_path):
    x = np.linspace(-1, 1, 32, dtype="float32").reshape(-1, 1)
    y = (x[:, 0] > 0.5).astype("int64")  # 8 of 32 in class 1

    def loss(class_weight, name):
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, "sigmoid", kernel_initializer="ones")])
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="binary_crossentropy")  # No step moves it.
        history = _multi_worker_fit(model, x, y, y, tmp_path / name, epochs=1, class_weight=class_weight)
        return history[0]["loss"], history[0]["val_loss"]

    plain, weighted = loss(None, "plain"), loss({0: 1.0, 1: 3.0}, "weighted")
    model_loss = keras.losses.binary_crossentropy(y[:, None].astype("float32"), keras.activations.sigmoid(x))
    per_example = np.asarray(model_loss)
    np.testing.assert_allclose(plain[0], per_example.mean(), rtol=1e-5)
    np.testing.assert_allclose(weighted[0], np.where(y == 1, 3.0, 1.0).dot(per_example) / 32, rtol=1e-5)
    assert weighted[1] == plain[1]  # Validation is never weighted.


def test_augmentation_changes_training_inputs_only(rgb_dir):
    data_dir = data.DataDir.read(rgb_dir)
    common = dict(manifest=data_dir.manifest, tft_output=data_dir.tft_output, global_batch_size=8, seed=1)
    plain = next(iter(data.make_dataset(rgb_dir, "train", training=True, **common)))
    augmented = next(iter(data.make_dataset(rgb_dir, "train", training=True, augment="strong", **common)))
    np.testing.assert_array_equal(plain[1], augmented[1])  # Same examples, same order...
    assert augmented[0].shape == plain[0].shape
    assert float(tf.reduce_mean(tf.abs(augmented[0] - plain[0]))) > 0.05  # ...different pixels.
    with pytest.raises(ValueError, match="training dataset only"):
        data.make_dataset(rgb_dir, "validation", training=False, augment="light", **common)


@pytest.mark.parametrize("bn_statistics", models.BN_STATISTICS)
def test_face_cnn_trains_with_augmentation_and_its_export_is_deterministic(rgb_dir, tmp_path, bn_statistics):
    data_dir = data.DataDir.read(rgb_dir)
    job_dir = str(tmp_path / "job")
    model = training.train(
        data_dir=data_dir,
        job_dir=job_dir,
        preset=models.FACE_CNN,
        hyperparameters={"width": 8, "blocks": 2, "batch_size": 16, "augment": "strong"},
        epochs=2,
        verbose=0,
        recipe=models.Recipe(bn_statistics=bn_statistics),
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
    arguments = dict(
        members=2,
        data_dir=data_dir,
        job_dir=str(job_dir),
        preset=models.FACE_CNN,
        hyperparameters={"width": 8, "blocks": 2, "batch_size": 16},
        epochs=1,
        seed=3,
        verbose=0,
    )
    training.train_ensemble(**arguments)
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
    assert [m.name for m in models.ensemble_members(saved)] == ["member_0", "member_1"]
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
    np.testing.assert_allclose(first, models.positive_probability(saved(images, training=False)), rtol=1e-5, atol=1e-6)
    assert {name.split("/")[0] for name in result["unit_max"]} == {"member_0", "member_1"}

    # Run again: both members are reused, not retrained; other hyperparameters retrain them.
    written = [path.stat().st_mtime_ns for path in member_paths]
    training.train_ensemble(**arguments)
    assert [path.stat().st_mtime_ns for path in member_paths] == written
    training.train_ensemble(**{**arguments, "hyperparameters": {"width": 4, "blocks": 2, "batch_size": 16}})
    assert all(path.stat().st_mtime_ns != before for path, before in zip(member_paths, written, strict=True))
