"""trainer/fitting.py: the run specification, class weights, early stopping (also across a resume), both backends."""

from __future__ import annotations

import dataclasses
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import data, fitting, folds, job_layout, models, multiworker


def _train_counts(train_counts: dict[str, int]) -> dict[int, int]:
    return data.class_counts({"counts": {"written": {"train": train_counts}}}, "train")


def test_class_weights_from_unequal_train_counts():
    weights = fitting.class_weights(_train_counts({"0": 30, "1": 10}))
    assert weights == pytest.approx({0: 40 / 60, 1: 40 / 20})
    assert 30 * weights[0] == pytest.approx(10 * weights[1])  # Each class weighs the same in total.
    assert fitting.class_weights(_train_counts({"0": 12, "1": 12})) is None
    with pytest.raises(ValueError, match="no example of class"):
        fitting.class_weights(_train_counts({"0": 12, "1": 0}))


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
    stopping = fitting.ResumableEarlyStopping(patience=2, start_fraction=0)
    history = model.fit(x, x, validation_data=(x, -x), epochs=10, verbose=0, callbacks=[recorder, stopping])
    val = history.history["val_loss"]
    assert len(val) == 3 and val[0] < val[1] < val[2]  # Stopped after 2 epochs without improving.
    np.testing.assert_array_equal(model.get_weights()[0], recorder.weights[0])
    assert not np.array_equal(recorder.weights[0], recorder.weights[2])


@pytest.mark.parametrize("stopping_class", [fitting.ScheduledEarlyStopping, fitting.ResumableEarlyStopping])
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
    stopping = fitting.ResumableEarlyStopping(
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
    stopping = fitting.ResumableEarlyStopping(
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
    stopping = fitting.ResumableEarlyStopping(patience=2, history=earlier, checkpoint_dir=str(tmp_path))
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


def test_a_subset_reads_exactly_its_examples_from_every_split(rgb_dir):
    data_dir = data.DataDir.read(rgb_dir)
    examples = folds.read_examples(data_dir)
    keep = np.arange(len(examples.ids)) % 3 == 0  # A third of every split.
    assert set(examples.splits[keep]) == {"train", "validation", "test"}
    subset = data.Subset("some", examples.ids[keep], examples.labels[keep])
    common = dict(manifest=data_dir.manifest, tft_output=data_dir.tft_output, global_batch_size=16, training=False)
    read = [b["id"].numpy().astype(str) for b in data.make_dataset(rgb_dir, subset, with_metadata=True, **common)]
    assert sorted(np.concatenate(read)) == sorted(examples.ids[keep])
    # Its size is the contract, as a split's manifest count is: an id not in the shards fails the pass.
    missing = data.Subset("missing", np.append(examples.ids[keep], "no_such_id"), np.append(examples.labels[keep], 0))
    with pytest.raises(tf.errors.OpError, match="expected to contain"):
        list(data.make_dataset(rgb_dir, missing, **common))


def test_a_fold_trains_on_the_other_folds_and_validates_on_their_validation_split():
    splits = np.array(["train", "validation", "test"] * 4)
    examples = folds.Examples(
        ids=np.array([f"id{i}" for i in range(12)]),
        labels=np.arange(12) % 2,
        groups=np.array([f"g{i}" for i in range(12)]),
        splits=splits,
    )
    fold_of = np.arange(12) // 6  # Fold 0: ids 0-5; fold 1: ids 6-11.
    chosen = folds.fold_examples(examples, fold_of, 0, 2)
    assert list(chosen.train.ids) == ["id6", "id8", "id9", "id11"]
    assert list(chosen.validation.ids) == ["id7", "id10"]
    # No validation example outside the held-out fold: no validation (and no early stopping).
    examples = dataclasses.replace(examples, splits=np.where(fold_of == 0, splits, "train"))
    assert folds.fold_examples(examples, fold_of, 0, 2).validation is None


def test_pooled_folds_validate_every_pooled_example_once_and_never_read_the_other_splits():
    splits = np.array(["train", "validation", "test"] * 6)
    examples = folds.Examples(
        ids=np.array([f"id{i}" for i in range(18)]),
        labels=np.arange(18) % 2,
        groups=np.array([f"person{i // 2}" for i in range(18)]),  # Two photos a person.
        splits=splits,
    )
    chosen = folds.pooled_folds(examples, ("train", "validation"), 3, "tune")
    pooled = set(examples.ids[splits != "test"])
    validated = [i for fold in chosen for i in fold.validation.ids]
    assert sorted(validated) == sorted(pooled)  # Each pooled example validates exactly once.
    group_of = dict(zip(examples.ids, examples.groups, strict=True))
    for fold in chosen:
        assert set(fold.train.ids) | set(fold.validation.ids) == pooled
        assert not {group_of[i] for i in fold.train.ids} & {group_of[i] for i in fold.validation.ids}
        label_of = dict(zip(examples.ids, examples.labels, strict=True))
        assert [label_of[i] for i in fold.train.ids] == list(fold.train.labels)
    assert chosen[0].validation.name == "tune fold 1/3 validation"


def test_class_weights_follow_the_runs_training_examples(rgb_dir):
    data_dir = data.DataDir.read(rgb_dir)
    assert fitting.Run(data_dir=data_dir, preset=models.GLASSES_CNN).class_weights is None  # 24 + 24 train images.
    ids, labels = np.array(["a", "b", "c", "d"]), np.array([0, 0, 0, 1])
    unequal = data.FitExamples(train=data.Subset("fold", ids, labels), validation=None)
    run = fitting.Run(data_dir=data_dir, preset=models.GLASSES_CNN, examples=unequal)
    assert run.class_weights == pytest.approx({0: 4 / 6, 1: 2.0})
    assert dataclasses.replace(run, class_weight="none").class_weights is None
    assert fitting.config(run)["class_weight"] == run.class_weights
    with pytest.raises(ValueError, match="class_weight"):
        fitting.Run(data_dir=data_dir, preset=models.GLASSES_CNN, class_weight="balanced")


def test_a_fold_fit_validates_and_stops_early_like_train(rgb_dir, monkeypatch):
    made = []

    class Recorded(fitting.ScheduledEarlyStopping):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(fitting, "ScheduledEarlyStopping", Recorded)
    data_dir = data.DataDir.read(rgb_dir)
    examples = folds.read_examples(data_dir)
    chosen = folds.fold_examples(examples, np.arange(len(examples.ids)) % 2, 0, 2)
    run = fitting.Run(
        data_dir=data_dir,
        preset=models.GLASSES_CNN,
        hyperparameters={"filters": 4, "units": 8, "batch_size": 8, "epochs": 2},
        examples=chosen,
        patience=1,
        verbose=0,
    )
    fitted = fitting.fit(run)
    assert {"val_loss", "val_accuracy"} <= set(fitted.history.history)
    assert [stopping.patience for stopping in made] == [1]
    steps = data.steps_per_epoch(len(chosen.train.ids), 8)
    assert run.steps_per_epoch == steps and int(fitted.model.optimizer.iterations.numpy()) == 2 * steps
