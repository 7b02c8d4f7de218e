"""trainer/batch_norm.py: BatchNormalization statistics measured on clean training batches."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import batch_norm


def _normalising_model(momentum: float = 0.99) -> keras.Model:
    inputs = keras.Input((2,))
    outputs = keras.layers.BatchNormalization(momentum=momentum, name="bn")(inputs)
    return keras.Model(inputs, outputs)


def _batches(count: int, size: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    # Each batch its own offset: the mean of the batch statistics is not any one batch's.
    return [
        (rng.normal(loc=[3.0 + i, -2.0], scale=[1.0 + i, 0.5], size=(size, 2)).astype("float32"), np.zeros(size))
        for i in range(count)
    ]


def test_recalibrate_sets_the_mean_of_the_batch_statistics_and_restores_the_momentum():
    model = _normalising_model(momentum=0.99)
    batches = _batches(5)
    assert batch_norm.recalibrate(model, iter(batches), max_batches=3) == 3  # Stops at max_batches.
    used = np.stack([x for x, _ in batches[:3]])
    layer = model.get_layer("bn")
    np.testing.assert_allclose(layer.moving_mean.numpy(), used.mean(axis=1).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), used.var(axis=1).mean(axis=0), rtol=1e-5)
    assert layer.momentum == 0.99
    np.testing.assert_array_equal(layer.gamma.numpy(), [1.0, 1.0])  # No weight is trained.
    np.testing.assert_array_equal(layer.beta.numpy(), [0.0, 0.0])


def test_recalibrate_finds_layers_in_nested_models_and_leaves_a_model_without_any_alone():
    outer = keras.Sequential([keras.Input((2,)), _normalising_model(), keras.layers.Dense(1)])
    assert [layer.name for layer in batch_norm.batch_norm_layers(outer)] == ["bn"]
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    before = [w.copy() for w in plain.get_weights()]
    assert batch_norm.recalibrate(plain, iter(_batches(2))) == 0
    for a, b in zip(before, plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_validation_validates_the_recalibrated_model_once_an_epoch():
    # Inputs far from 0 / 1 and a slow momentum: after one short epoch Keras' moving averages
    # are still near their start, and the model validates badly with them.
    x = np.random.default_rng(1).normal(loc=50.0, scale=5.0, size=(64, 2)).astype("float32")
    y = (x[:, 0] > 50.0).astype("float32")
    calibration = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    passes = tf.Variable(0)

    def counted(images, labels):
        passes.assign_add(1)  # Once per validation batch read, whoever reads it.
        return images, labels

    validation = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).map(counted)

    def fitted(calibration):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((2,))
        hidden = keras.layers.BatchNormalization(momentum=0.99)(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy", metrics=["accuracy"])
        validation_data, first = batch_norm.fit_validation(model, calibration, validation, batches=4)
        passes.assign(0)
        history = model.fit(x, y, batch_size=16, epochs=2, validation_data=validation_data, verbose=0, callbacks=first)
        return model, history.history

    model, history = fitted(calibration)
    assert int(passes.numpy()) == 2 * 4  # Two epochs, four validation batches each: one pass an epoch.
    _, moving = fitted(None)
    assert int(passes.numpy()) == 2 * 4
    # What every later callback and the history saw is the recalibrated model's validation.
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(validation, verbose=0)[0], rel=1e-5)
    assert history["val_loss"][0] < moving["val_loss"][0] / 2
    bn = batch_norm.batch_norm_layers(model)[0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), x.mean(axis=0), rtol=1e-4)


def test_fit_validation_leaves_a_model_without_batch_normalization_to_keras():
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    validation = tf.data.Dataset.from_tensor_slices((np.zeros((4, 2)), np.zeros(4))).batch(2)
    assert batch_norm.fit_validation(plain, validation.repeat(), validation, batches=2) == (validation, [])
