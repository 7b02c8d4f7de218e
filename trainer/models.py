"""Model presets and the one ``build_model(hp)`` that tuning and final training share.

A preset is a seed notebook's architecture, its search space and its best-found values
(the defaults). Every tunable value, batch size and epochs included, is a keras-tuner
hyperparameter, so the tuner's grid covers them and the final training reads them from the
same ``HyperParameters``. The input shape always comes from the data's manifest.

Both heads give the probability of class 1 in their last column (sigmoid [B, 1] or
softmax [B, 2]): see :func:`positive_probability`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import keras_tuner as kt

SEARCH_SPACES = ("small", "full")
# Hyperparameters read by the fit step rather than by the model builder.
FIT_HPARAMS = ("batch_size", "epochs")
# The decision rule of every head: class 1 when P(class 1) >= THRESHOLD (serving,
# evaluation and the multi-worker loop's accuracy alike).
THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named architecture with its search spaces.

    Attributes:
      name: The ``--model`` flag value.
      channels: Channel count this preset is the manifest default for.
      defaults: Best values found by the seed's search; the first grid point.
      spaces: {"small" | "full": {hp name: candidate values}}; "small" keeps tests and the
        demo cheap (2-4 grid points), names absent from it are fixed at their default.
      build: ``fn(hp, input_shape, num_classes) -> compiled keras.Model``.
    """

    name: str
    channels: int
    defaults: Mapping[str, Any]
    spaces: Mapping[str, Mapping[str, Sequence[Any]]]
    build: Callable[[kt.HyperParameters, tuple[int, int, int], int], keras.Model]

    def space(self, name: str = "full") -> dict[str, list[Any]]:
        """Candidate values of every hyperparameter; one value means fixed."""
        if name not in SEARCH_SPACES:
            raise ValueError(f"unknown search space {name!r}, expected one of {SEARCH_SPACES}")
        chosen = self.spaces[name]
        return {key: list(chosen.get(key, [default])) for key, default in self.defaults.items()}


def _build_glasses_cnn(hp: kt.HyperParameters, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Conv -> MaxPool -> Flatten -> Dense relu -> Dense(1) sigmoid (the glasses seed)."""
    if num_classes != 2:
        raise ValueError(f"glasses_cnn has a sigmoid head for 2 classes, the data has {num_classes}")
    kernel, pool = hp.get("kernel_size"), hp.get("pool_size")
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(hp.get("filters"), (kernel, kernel), activation="relu", name="conv")(inputs)
    x = keras.layers.MaxPooling2D((pool, pool), name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(hp.get("units"), activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    model = keras.Model(inputs, outputs, name="glasses_cnn")
    model.compile(optimizer=keras.optimizers.Adam(), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def _build_comics_cnn(hp: kt.HyperParameters, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Conv -> MaxPool -> Conv -> MaxPool -> Flatten -> Dropout -> Dense softmax (the comics seed)."""
    if num_classes != 2:
        raise ValueError(f"comics_cnn reports the probability of class 1 of 2 classes, the data has {num_classes}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Conv2D(hp.get("filters_1"), (3, 3), activation="relu", name="conv_1")(inputs)
    x = keras.layers.MaxPooling2D((2, 2), name="pool_1")(x)
    x = keras.layers.Conv2D(hp.get("filters_2"), (3, 3), activation="relu", name="conv_2")(x)
    x = keras.layers.MaxPooling2D((2, 2), name="pool_2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(hp.get("dropout"), name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probability")(x)
    model = keras.Model(inputs, outputs, name="comics_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=hp.get("learning_rate")),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


GLASSES_CNN = Preset(
    name="glasses_cnn",
    channels=3,
    defaults={"filters": 64, "kernel_size": 3, "pool_size": 2, "units": 128, "batch_size": 64, "epochs": 3},
    spaces={
        "full": {
            "filters": [32, 64, 128],
            "kernel_size": [3, 5],
            "pool_size": [2, 3],
            "units": [64, 128, 256],
            "batch_size": [32, 64, 128],
            "epochs": [3, 5, 10],
        },
        "small": {"filters": [32, 64], "units": [64, 128]},
    },
    build=_build_glasses_cnn,
)

COMICS_CNN = Preset(
    name="comics_cnn",
    channels=1,
    defaults={"filters_1": 100, "filters_2": 50, "dropout": 0.5, "learning_rate": 1e-3, "batch_size": 32, "epochs": 4},
    spaces={
        "full": {"filters_1": [100, 200], "filters_2": [25, 50], "dropout": [0.5, 0.7], "learning_rate": [1e-2, 1e-3]},
        "small": {"dropout": [0.5, 0.7], "learning_rate": [1e-2, 1e-3]},
    },
    build=_build_comics_cnn,
)

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (GLASSES_CNN, COMICS_CNN)}


def get_preset(name: str | None, *, channels: int) -> Preset:
    """The named preset, or the one made for ``channels`` (1: comics_cnn, 3: glasses_cnn)."""
    if name:
        if name not in PRESETS:
            raise ValueError(f"unknown model {name!r}, expected one of {sorted(PRESETS)}")
        return PRESETS[name]
    for preset in PRESETS.values():
        if preset.channels == channels:
            return preset
    raise ValueError(f"no preset for {channels}-channel images; pass --model")


def declare_hyperparameters(
    hp: kt.HyperParameters, space: Mapping[str, Sequence[Any]], defaults: Mapping[str, Any]
) -> None:
    """Registers every hyperparameter of ``space`` not yet in ``hp``.

    Several values: a Choice whose default (the first grid point) is the preset's best;
    one value: Fixed. Names already registered keep their value, which is how final
    training fixes the tuned values before calling :func:`build_model`.
    """
    for name, values in space.items():
        if name in hp:
            continue
        values = list(values)
        if len(values) == 1:
            hp.Fixed(name, values[0])
        else:
            default = defaults[name] if defaults[name] in values else values[0]
            hp.Choice(name, values, default=default)


def fixed_hyperparameters(preset: Preset, values: Mapping[str, Any] | None = None) -> kt.HyperParameters:
    """HyperParameters holding the preset's defaults, overridden by ``values``."""
    hp = kt.HyperParameters()
    chosen = {**preset.defaults, **{k: v for k, v in (values or {}).items() if k in preset.defaults}}
    for name, value in chosen.items():
        hp.Fixed(name, value)
    return hp


def build_model(
    hp: kt.HyperParameters,
    *,
    preset: Preset,
    input_shape: tuple[int, int, int],
    num_classes: int = 2,
    space: str | Mapping[str, Sequence[Any]] = "full",
) -> keras.Model:
    """The compiled model for ``hp`` (call under ``strategy.scope()``).

    ``space`` (a space name or {hp name: values}) only matters for names ``hp`` does not
    hold yet: they are registered first, so that a fresh ``HyperParameters()`` builds the
    preset's default model and a tuner's trial builds its grid point.
    """
    if isinstance(space, str):
        space = preset.space(space)
    declare_hyperparameters(hp, space, preset.defaults)
    return preset.build(hp, tuple(input_shape), num_classes)


def positive_probability(outputs):
    """Probability of class 1 from either head: the last column of [B, 1] or [B, 2]."""
    return outputs[:, -1]


class FaceHyperModel(kt.HyperModel):
    """A preset bound to the data: builds with :func:`build_model`, fits with hp batch size and epochs.

    Args:
      preset: The architecture and its search space.
      input_shape: (height, width, channels) from the manifest.
      make_datasets: ``fn(per_replica_batch_size) -> (train_ds, validation_ds, steps_per_epoch)``.
      space: "small" or "full". Defaults to "full".
      overrides: {hp name: values} replacing the preset's candidates (e.g. --epochs).
      num_classes: Defaults to 2.
    """

    def __init__(
        self, preset: Preset, *, input_shape, make_datasets, space: str = "full", overrides=None, num_classes: int = 2
    ):
        super().__init__(name=preset.name, tunable=True)
        self.preset = preset
        self.input_shape = tuple(input_shape)
        self.make_datasets = make_datasets
        self.num_classes = num_classes
        self.space = {**preset.space(space), **{k: list(v) for k, v in (overrides or {}).items()}}

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        declare_hyperparameters(hp, self.space, self.preset.defaults)

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        return build_model(
            hp, preset=self.preset, input_shape=self.input_shape, num_classes=self.num_classes, space=self.space
        )

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args, **kwargs):
        if args:
            raise TypeError("FaceHyperModel.fit makes its own datasets: call tuner.search() without data")
        # Hyperband passes its own epoch budget; every other tuner takes it from hp.
        epochs = kwargs.pop("epochs", None) or hp.get("epochs")
        # One line per fit: what resumed searches are audited with (no trial runs twice).
        logging.info("trial fit start: %s", json.dumps(hp.values, sort_keys=True))
        train_ds, validation_ds, steps = self.make_datasets(hp.get("batch_size"))
        return model.fit(
            train_ds,
            validation_data=validation_ds,
            epochs=epochs,
            steps_per_epoch=steps,
            **{"shuffle": False, **kwargs},  # The dataset shuffles; Keras cannot shuffle tf.data.
        )
