"""trainer/models.py: the presets build the seeds' exact layers from one build_model(hp)."""

from __future__ import annotations

import keras
import keras_tuner as kt
import numpy as np
import pytest

from trainer import models


def _layers(model):
    return [(type(layer).__name__, layer) for layer in model.layers]


def test_glasses_preset_builds_the_seed_architecture_with_its_best_values():
    model = models.build_model(kt.HyperParameters(), preset=models.GLASSES_CNN, input_shape=(50, 50, 3))
    kinds = [kind for kind, _ in _layers(model)]
    assert kinds == ["InputLayer", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"]
    _, conv, pool, _, dense, head = (layer for _, layer in _layers(model))
    assert model.input_shape == (None, 50, 50, 3)
    assert (conv.filters, conv.kernel_size, conv.activation.__name__) == (64, (3, 3), "relu")
    assert pool.pool_size == (2, 2)
    assert (dense.units, dense.activation.__name__) == (128, "relu")
    assert (head.units, head.activation.__name__) == (1, "sigmoid")
    assert model.loss == "binary_crossentropy"
    assert isinstance(model.optimizer, keras.optimizers.Adam)


def test_comics_preset_builds_the_seed_architecture_with_its_best_values():
    model = models.build_model(kt.HyperParameters(), preset=models.COMICS_CNN, input_shape=(128, 128, 1))
    kinds = [kind for kind, _ in _layers(model)]
    assert kinds == ["InputLayer", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dropout", "Dense"]
    _, conv1, pool1, conv2, pool2, _, dropout, head = (layer for _, layer in _layers(model))
    assert model.input_shape == (None, 128, 128, 1)
    assert (conv1.filters, conv1.kernel_size) == (100, (3, 3))
    assert (conv2.filters, conv2.kernel_size) == (50, (3, 3))
    assert pool1.pool_size == pool2.pool_size == (2, 2)
    assert dropout.rate == 0.5
    assert (head.units, head.activation.__name__) == (2, "softmax")
    assert model.loss == "sparse_categorical_crossentropy"
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert models.COMICS_CNN.defaults["epochs"] == 4
    assert models.GLASSES_CNN.defaults["batch_size"] == 64 and models.GLASSES_CNN.defaults["epochs"] == 3


def test_hyperparameters_drive_the_build():
    hp = models.fixed_hyperparameters(
        models.COMICS_CNN, {"filters_1": 200, "filters_2": 25, "dropout": 0.7, "learning_rate": 1e-2}
    )
    model = models.build_model(hp, preset=models.COMICS_CNN, input_shape=(24, 24, 1))
    assert [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)] == [200, 25]
    assert model.get_layer("dropout").rate == 0.7
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-2)

    hp = models.fixed_hyperparameters(
        models.GLASSES_CNN, {"filters": 32, "kernel_size": 5, "pool_size": 3, "units": 64}
    )
    model = models.build_model(hp, preset=models.GLASSES_CNN, input_shape=(16, 16, 3))
    assert model.get_layer("conv").kernel_size == (5, 5) and model.get_layer("pool").pool_size == (3, 3)
    assert model.get_layer("dense").units == 64


@pytest.mark.parametrize("preset", list(models.PRESETS.values()), ids=list(models.PRESETS))
def test_search_spaces(preset):
    small, full = preset.space("small"), preset.space("full")
    assert set(small) == set(full) == set(preset.defaults) >= {"batch_size", "epochs"}
    size = int(np.prod([len(v) for v in small.values()]))
    assert 2 <= size <= 4
    assert int(np.prod([len(v) for v in full.values()])) > size
    for name, values in full.items():
        assert preset.defaults[name] in values  # The best-found point is on the grid.
    # Registering the space makes the preset's best values the first grid point.
    hp = kt.HyperParameters()
    models.declare_hyperparameters(hp, full, preset.defaults)
    assert hp.values == dict(preset.defaults)
    with pytest.raises(ValueError, match="unknown search space"):
        preset.space("huge")


def test_comics_full_space_is_the_seed_grid():
    space = models.COMICS_CNN.space("full")
    assert space["filters_1"] == [100, 200] and space["filters_2"] == [25, 50]
    assert space["dropout"] == [0.5, 0.7] and sorted(space["learning_rate"]) == [1e-3, 1e-2]


def test_preset_choice_from_channels_and_flag():
    assert models.get_preset(None, channels=1) is models.COMICS_CNN
    assert models.get_preset(None, channels=3) is models.GLASSES_CNN
    assert models.get_preset("glasses_cnn", channels=1) is models.GLASSES_CNN  # The flag wins.
    with pytest.raises(ValueError, match="unknown model"):
        models.get_preset("resnet", channels=3)


def test_positive_probability_of_both_heads():
    np.testing.assert_allclose(models.positive_probability(np.array([[0.2], [0.9]])), [0.2, 0.9])
    np.testing.assert_allclose(models.positive_probability(np.array([[0.8, 0.2], [0.1, 0.9]])), [0.2, 0.9])
