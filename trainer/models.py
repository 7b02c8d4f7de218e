"""Model presets and the one ``build_model(hp)`` that tuning and final training share.

A preset is a seed notebook's architecture (trainer/architectures.py), its search space and
its best-found values (the defaults). Every tunable value, batch size and epochs included, is
a keras-tuner hyperparameter, so the tuner's grid covers them and the final training reads
them from the same ``HyperParameters``. The input shape always comes from the data's
manifest. Which preset is the default for which data, and why: :data:`DEFAULT_MODELS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import keras_tuner as kt

from trainer.architectures import (
    IMAGE_INPUT,
    VECTOR_INPUT,
    build_comics_cnn,
    build_face_cnn,
    build_glasses_cnn,
    build_image_latent,
    build_latent_mlp,
)
from trainer.recipe import Recipe, make_optimizer

SEARCH_SPACES = ("small", "full", "wide")
# Hyperparameters read by the fit step (batch size, epochs) or the input pipeline
# (augmentation) rather than by the model builder.
FIT_HPARAMS = ("batch_size", "epochs", "augment")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named architecture with its search spaces.

    Attributes:
      name: The ``--model`` flag value.
      channels: The channel count the preset was made for (the seeds': 3 glasses_cnn, 1
        comics_cnn); 0: any. Not what picks the default: see :data:`DEFAULT_MODELS`.
      defaults: Best values found by the seed's search; the first grid point.
      spaces: {"small" | "full" | "wide": {hp name: candidate values}}; "small" is what
        ``tune`` searches by default (2-4 grid points: for face_cnn what cross-validation
        found decisive), "wide" is for Hyperband; names absent from a space are fixed at
        their default.
      build: ``fn(hp, shapes, num_classes) -> keras.Model`` (not compiled); ``shapes``:
        {input name: shape} of its ``inputs``.
      loss: The Keras loss of its head.
      inputs: What the model takes: (IMAGE_INPUT,), (VECTOR_INPUT,) or both.
    """

    name: str
    channels: int
    defaults: Mapping[str, Any]
    spaces: Mapping[str, Mapping[str, Sequence[Any]]]
    build: Callable[[kt.HyperParameters, Mapping[str, tuple[int, ...]], int], keras.Model]
    loss: str = "binary_crossentropy"
    inputs: tuple[str, ...] = (IMAGE_INPUT,)

    @property
    def needs_vector(self) -> bool:
        return VECTOR_INPUT in self.inputs

    def settled(self, values: Mapping[str, Any]) -> Preset:
        """This preset with ``values`` as its defaults, left out of its ``small`` space: what
        cross-validation settled for a task (:data:`DATASET_DEFAULTS`) is not searched again
        by default; the ``full`` and ``wide`` grids still search it."""
        small = {k: v for k, v in self.spaces["small"].items() if k not in values}
        return dataclasses.replace(self, defaults={**self.defaults, **values}, spaces={**self.spaces, "small": small})

    def space(self, name: str = "full") -> dict[str, list[Any]]:
        """Candidate values of every hyperparameter; one value means fixed."""
        if name not in SEARCH_SPACES:
            raise ValueError(f"unknown search space {name!r}, expected one of {SEARCH_SPACES}")
        chosen = self.spaces[name]
        return {key: list(chosen.get(key, [default])) for key, default in self.defaults.items()}


# Seed 003's future work, for Hyperband: first-layer filters, dropout, conv layers.
_WIDE_FILTERS = [50, 100, 150, 200, 250, 300]
_WIDE_DROPOUT = [0.1, 0.3, 0.5, 0.7]
GLASSES_CNN = Preset(
    name="glasses_cnn",
    channels=3,
    defaults={
        "filters": 64,
        "kernel_size": 3,
        "pool_size": 2,
        "units": 128,
        "conv_layers": 1,
        "dropout": 0.0,
        "learning_rate": 1e-3,
        "augment": "none",
        "batch_size": 64,
        "epochs": 3,
    },
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
        "wide": {
            "filters": _WIDE_FILTERS,
            "conv_layers": [1, 2, 3],
            "dropout": _WIDE_DROPOUT,
            "units": [64, 128, 256],
            "learning_rate": [1e-3, 3e-4],
            "augment": ["none", "light"],
            "epochs": [10],
        },
    },
    build=build_glasses_cnn,
)
COMICS_CNN = Preset(
    name="comics_cnn",
    channels=1,
    defaults={
        "filters_1": 100,
        "filters_2": 50,
        "conv_layers": 2,
        "dropout": 0.5,
        "learning_rate": 1e-3,
        "augment": "none",
        "batch_size": 32,
        "epochs": 4,
    },
    spaces={
        "full": {"filters_1": [100, 200], "filters_2": [25, 50], "dropout": [0.5, 0.7], "learning_rate": [1e-2, 1e-3]},
        "small": {"dropout": [0.5, 0.7], "learning_rate": [1e-2, 1e-3]},
        "wide": {
            "filters_1": _WIDE_FILTERS,
            "filters_2": [25, 50, 100],
            "conv_layers": [1, 2, 3],
            "dropout": _WIDE_DROPOUT,
            "learning_rate": [1e-2, 1e-3],
            "augment": ["none", "light"],
            "epochs": [10],
        },
    },
    build=build_comics_cnn,
    loss="sparse_categorical_crossentropy",
)
FACE_CNN = Preset(
    name="face_cnn",
    channels=0,  # Any: the default for grey and RGB images (DEFAULT_MODELS).
    defaults={
        "width": 32,
        "blocks": 4,
        "convs_per_block": 1,
        "dropout": 0.3,
        "learning_rate": 1e-3,
        "augment": "light",
        "batch_size": 32,
        "epochs": 30,
        # Local contrast normalisation: what cross-validation found best on both glasses sets
        # (ORL 0.975 vs 0.933; the demo set's out-of-fold accuracy 0.959-0.965 vs 0.914-0.924);
        # not on face2comics (0.954 vs 0.988): --dataset comics data takes none (DATASET_DEFAULTS).
        "input_norm": "local",
    },
    spaces={
        "full": {
            "width": [16, 32],
            "blocks": [3, 4],
            "convs_per_block": [1, 2],
            "dropout": [0.3, 0.5],
            "learning_rate": [3e-3, 1e-3],
            "augment": ["light", "strong", "none"],
            "input_norm": ["none", "local"],
        },
        # tune's default: local contrast normalisation or none, chosen by validation loss.
        # Cross-validated, it decides the most (ORL 0.975 with it vs 0.933; face2comics
        # 0.954 vs 0.988) and either way by the data: docs/benchmarks.md section 9. On
        # --dataset comics data it is settled (none), so this space has one point there.
        "small": {"input_norm": ["none", "local"]},
        "wide": {
            "width": [16, 24, 32],
            "blocks": [3, 4],
            "convs_per_block": [1, 2],
            "dropout": _WIDE_DROPOUT,
            "learning_rate": [3e-3, 1e-3, 3e-4],
            "augment": ["none", "light", "strong"],
            "input_norm": ["none", "local"],
            "epochs": [30],
        },
    },
    build=build_face_cnn,
)
LATENT_MLP = Preset(
    name="latent_mlp",
    channels=0,  # The default for a vector without images (DEFAULT_MODELS).
    defaults={
        "layers": 2,
        "units": 64,
        "dropout": 0.1,
        "learning_rate": 1e-3,
        "augment": "none",  # No image to augment.
        "batch_size": 32,
        "epochs": 20,
    },
    spaces={
        "full": {
            "layers": [1, 2, 3],
            "units": [32, 64, 128],
            "dropout": [0.1, 0.3],
            "learning_rate": [1e-3, 3e-3],
            "batch_size": [32, 64],
        },
        "small": {"units": [64, 32], "layers": [2, 1]},
        "wide": {
            "layers": [1, 2, 3, 4],
            "units": [32, 64, 128, 256],
            "dropout": _WIDE_DROPOUT,
            "learning_rate": [3e-3, 1e-3, 3e-4],
            "epochs": [40],
        },
    },
    build=build_latent_mlp,
    inputs=(VECTOR_INPUT,),
)
# face_cnn's hyperparameters and spaces, plus the latent tower's (its dropout is face_cnn's).
IMAGE_LATENT = Preset(
    name="image_latent",
    channels=0,
    defaults={**FACE_CNN.defaults, "layers": 1, "units": 64},
    spaces={
        "full": {**FACE_CNN.spaces["full"], "layers": [1, 2], "units": [64, 32, 128]},
        "small": {"input_norm": ["none", "local"]},  # face_cnn's: what its tower needs decided.
        "wide": {**FACE_CNN.spaces["wide"], "layers": [1, 2, 3], "units": [64, 128]},
    },
    build=build_image_latent,
    inputs=(IMAGE_INPUT, VECTOR_INPUT),
)
PRESETS: dict[str, Preset] = {
    preset.name: preset for preset in (GLASSES_CNN, COMICS_CNN, FACE_CNN, LATENT_MLP, IMAGE_LATENT)
}
# Why each default (docs/benchmarks.md sections 7-9): what cross-validation, or the vector
# bench, found for that data shape. Figures of people or pairs never seen in training.
_FACE_CNN_WHY = (
    "best under subject-grouped cross-validation on ORL glasses (0.975 with its default input_norm local; "
    "glasses_cnn 0.581), at ranking wrong labels (precision@N 0.815, glasses_cnn 0.333; with input_norm "
    "local 0.852-0.881 on three fresh demo sets) and on face2comics (0.988 with input_norm none, which "
    "--dataset comics data takes; comics_cnn 0.950)"
)
_IMAGE_LATENT_WHY = (
    "face_cnn's tower on the image beside an MLP on the vector: 0.999 under face-grouped 4-fold "
    "cross-validation on a demo glasses set with its vector, where face_cnn on the images alone gave 0.987"
)
# The default --model per data shape: (image channels, 0 for none; has a vector) -> (preset,
# why). The seeds' presets (glasses_cnn, comics_cnn) stay available by name.
DEFAULT_MODELS: dict[tuple[int, bool], tuple[str, str]] = {
    (1, False): ("face_cnn", _FACE_CNN_WHY),
    (3, False): ("face_cnn", _FACE_CNN_WHY),
    (1, True): ("image_latent", _IMAGE_LATENT_WHY),
    (3, True): ("image_latent", _IMAGE_LATENT_WHY),
    (0, True): ("latent_mlp", "the vector is all there is (demo set: 1.000 at 1/30 of an image CNN's epoch time)"),
}


# What cross-validation settled for a task known by name (the manifest's "dataset", from
# preprocess --dataset), over the default preset's own defaults: {dataset: (values, why)}.
DATASET_DEFAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "comics": (
        {"input_norm": "none"},
        "local contrast takes out the flat shading that tells a comic from a photo: pair-grouped "
        "cross-validation on face2comics 0.988 without it, 0.954 with it (grey, 3 seeds); chosen by tune per "
        "fold on 10-60 validation images, the same photo in 80 wrong on 3 seeds; settled, the README's colour "
        "recipe 0.993 over 5 seeds (docs/benchmarks.md section 9)",
    ),
}


def describe_data(shape: Sequence[int], vector_length: int) -> str:
    """ "50x50 RGB images with a 512-value vector", as the default's log line names the data."""
    height, width, channels = shape
    colour = {1: "grey", 3: "RGB"}.get(channels, f"{channels}-channel")
    images = f"{height}x{width} {colour} images" if channels else "no images"
    return images + (f" with a {vector_length}-value vector" if vector_length else "")


def default_preset(shape: Sequence[int], vector_length: int = 0, dataset: str | None = None) -> tuple[Preset, str]:
    """The preset cross-validation found best for data of this (height, width, channels) and
    vector, with what it settled for the named ``dataset`` (:data:`DATASET_DEFAULTS`), and a
    line saying why (``"default for 50x50 RGB images: ..."``)."""
    key = (shape[2], bool(vector_length))
    if key not in DEFAULT_MODELS:
        raise ValueError(f"no default model for {describe_data(shape, vector_length)}; pass --model")
    name, why = DEFAULT_MODELS[key]
    preset, why = PRESETS[name], f"default for {describe_data(shape, vector_length)}: {why}"
    values, task_why = DATASET_DEFAULTS.get(dataset or "", ({}, ""))
    values = {k: v for k, v in values.items() if k in preset.defaults}
    if values:
        settings = ", ".join(f"{k} {v}" for k, v in values.items())
        preset, why = preset.settled(values), f"{why}; for the {dataset} data set {settings}: {task_why}"
    return preset, why


def get_preset(
    name: str | None, *, shape: Sequence[int], vector_length: int = 0, dataset: str | None = None
) -> tuple[Preset, str]:
    """The named preset (``--model``, its own defaults), or :func:`default_preset` for the data;
    and why it was chosen."""
    if name:
        if name not in PRESETS:
            raise ValueError(f"unknown model {name!r}, expected one of {sorted(PRESETS)}")
        return PRESETS[name], "--model"
    return default_preset(shape, vector_length, dataset)


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
    recipe: Recipe | None = None,
    steps_per_epoch: int | None = None,
    vector_length: int = 0,
) -> keras.Model:
    """The compiled model for ``hp`` (call under ``strategy.scope()``).

    ``vector_length``: the data's ``features.vector_length(manifest)``; presets that take the
    vector need it > 0 (ValueError otherwise).

    ``space`` (a space name or {hp name: values}) only matters for names ``hp`` does not
    hold yet: they are registered first, so that a fresh ``HyperParameters()`` builds the
    preset's default model and a tuner's trial builds its grid point. ``recipe`` (with
    ``steps_per_epoch``, for the schedule over ``hp["epochs"]``) is the shared optimizer
    recipe; None compiles the seeds' constant-rate Adam. The optimizer is the model's, so
    the multi-worker loop follows the same schedule.
    """
    if isinstance(space, str):
        space = preset.space(space)
    declare_hyperparameters(hp, space, preset.defaults)
    if preset.needs_vector and vector_length <= 0:
        raise ValueError(f"{preset.name} takes the --numeric_columns vector; the data has none")
    shapes = {IMAGE_INPUT: tuple(input_shape), VECTOR_INPUT: (int(vector_length),)}
    model = preset.build(hp, {name: shapes[name] for name in preset.inputs}, num_classes)
    optimizer = make_optimizer(
        hp.get("learning_rate"), recipe=recipe, steps_per_epoch=steps_per_epoch, epochs=hp.get("epochs")
    )
    model.compile(optimizer=optimizer, loss=preset.loss, metrics=["accuracy"])
    return model
