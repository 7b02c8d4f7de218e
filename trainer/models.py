"""Model presets and the one ``build_model(hp)`` that tuning and final training share.

A preset is a seed notebook's architecture, its search space and its best-found values
(the defaults). Every tunable value, batch size and epochs included, is a keras-tuner
hyperparameter, so the tuner's grid covers them and the final training reads them from the
same ``HyperParameters``. The input shape always comes from the data's manifest.

A preset's ``inputs`` say what its model takes: the normalised image (``image``), the
normalised ``latent`` vector of ``--numeric_columns`` data, or both. An image-only model
takes the image tensor; a model with the vector takes a dict ``{name: tensor}``.

Both heads give the probability of class 1 in their last column (sigmoid [B, 1] or
softmax [B, 2]): see :func:`positive_probability`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import keras_tuner as kt

from pipelines import features

SEARCH_SPACES = ("small", "full", "wide")
# Hyperparameters read by the fit step (batch size, epochs) or the input pipeline
# (augmentation) rather than by the model builder.
FIT_HPARAMS = ("batch_size", "epochs", "augment")
# Strengths of the training-only augmentation (trainer/data.py), the "augment" hyperparameter.
AUGMENT_LEVELS = ("none", "light", "strong")
# After the warm-up: cosine decay to 0 at the last step, or constant.
LR_SCHEDULES = ("cosine", "constant")
# What BatchNormalization normalises with at inference: statistics measured on clean
# training batches before every validation and the export (trainer/batch_norm.py), or
# Keras' moving averages of the (augmented) training batches.
BN_STATISTICS = ("precise", "moving")
# The decision rule of every head: class 1 when P(class 1) >= THRESHOLD (serving,
# evaluation and the multi-worker loop's accuracy alike).
THRESHOLD = 0.5
# Model input names: the normalised image and the normalised --numeric_columns vector.
IMAGE_INPUT = features.IMAGE_KEY
VECTOR_INPUT = features.VECTOR_KEY


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The training recipe every preset shares (tune and train flags): optimizer and BatchNormalization.

    Why: with a constant Adam step of lr from the first batch, every one of the glasses
    seed's 36 864 x 128 Dense weights moves by ~lr per step whatever its gradient, and the
    first epoch's loss blows up. A linear warm-up from 0 keeps the first steps small
    (synthetic 50x50 data, 2 epochs: first-epoch loss 4.3 without, 1.5 with it at 1e-3,
    0.8 at a 3e-4 peak). It did not lower the share of dead Dense units there (70% without,
    66-87% with), so a lower peak rate for the wide Dense layer is still a tuning question.
    Clipping bounds the step only where a gradient spikes (Adam normalises its scale).

    Attributes:
      warmup_epochs: Linear warm-up from 0 to the learning rate over this many epochs.
      schedule: After the warm-up, "cosine" decay to 0 at the last step or "constant".
      clipnorm: Clip each gradient to this L2 norm; 0 or None: no clipping.
      bn_statistics: One of BN_STATISTICS; only models with BatchNormalization layers see it.
    """

    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    clipnorm: float | None = 1.0
    bn_statistics: str = "precise"

    def __post_init__(self):
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.schedule!r}, expected one of {LR_SCHEDULES}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.bn_statistics not in BN_STATISTICS:
            raise ValueError(f"unknown bn_statistics {self.bn_statistics!r}, expected one of {BN_STATISTICS}")

    @property
    def precise_batch_norm(self) -> bool:
        """Whether BatchNormalization statistics are re-measured on clean batches (trainer/batch_norm.py)."""
        return self.bn_statistics == "precise"


# What train and tune use unless told otherwise (the flags' defaults).
DEFAULT_RECIPE = Recipe()


def learning_rate_schedule(
    learning_rate: float, *, recipe: Recipe, steps_per_epoch: int, epochs: int
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from 0 over ``recipe.warmup_epochs``, then cosine decay (or constant)."""
    total = max(1, int(steps_per_epoch) * int(epochs))
    warmup = min(total, round(recipe.warmup_epochs * steps_per_epoch))
    alpha = 0.0 if recipe.schedule == "cosine" else 1.0  # alpha=1: CosineDecay stays constant.
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, total - warmup), alpha=alpha, warmup_target=learning_rate, warmup_steps=warmup
    )


def make_optimizer(
    learning_rate: float, *, recipe: Recipe | None, steps_per_epoch: int | None = None, epochs: int | None = None
) -> keras.optimizers.Optimizer:
    """Adam with ``recipe``'s schedule and clipping; ``recipe=None``: the seeds' constant Adam."""
    if recipe is None:
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if not steps_per_epoch or not epochs:
        raise ValueError("a training recipe needs steps_per_epoch and epochs for its schedule")
    schedule = learning_rate_schedule(learning_rate, recipe=recipe, steps_per_epoch=steps_per_epoch, epochs=epochs)
    return keras.optimizers.Adam(learning_rate=schedule, clipnorm=recipe.clipnorm or None)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named architecture with its search spaces.

    Attributes:
      name: The ``--model`` flag value.
      channels: Channel count this preset is the manifest default for (0: none).
      defaults: Best values found by the seed's search; the first grid point.
      spaces: {"small" | "full" | "wide": {hp name: candidate values}}; "small" keeps tests
        and the demo cheap (2-4 grid points), "wide" is for Hyperband; names absent from
        a space are fixed at their default.
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

    def space(self, name: str = "full") -> dict[str, list[Any]]:
        """Candidate values of every hyperparameter; one value means fixed."""
        if name not in SEARCH_SPACES:
            raise ValueError(f"unknown search space {name!r}, expected one of {SEARCH_SPACES}")
        chosen = self.spaces[name]
        return {key: list(chosen.get(key, [default])) for key, default in self.defaults.items()}


def _require_two_classes(name: str, num_classes: int) -> None:
    if num_classes != 2:
        raise ValueError(f"{name} reports the probability of class 1 of 2 classes, the data has {num_classes}")


def _conv_pool(x, filters: int, kernel: int, pool: int, *, conv_name: str, pool_name: str):
    x = keras.layers.Conv2D(filters, (kernel, kernel), activation="relu", name=conv_name)(x)
    return keras.layers.MaxPooling2D((pool, pool), name=pool_name)(x)


def _build_glasses_cnn(hp: kt.HyperParameters, shapes: Mapping[str, tuple[int, ...]], num_classes: int) -> keras.Model:
    """(Conv -> MaxPool) x conv_layers -> Flatten -> Dense relu [-> Dropout] -> Dense(1) sigmoid (the glasses seed)."""
    _require_two_classes("glasses_cnn", num_classes)
    kernel, pool = hp.get("kernel_size"), hp.get("pool_size")
    inputs = keras.Input(shape=shapes[IMAGE_INPUT], name=IMAGE_INPUT)
    x = _conv_pool(inputs, hp.get("filters"), kernel, pool, conv_name="conv", pool_name="pool")
    for i in range(2, hp.get("conv_layers") + 1):  # Seed 003's future work; the seed has one.
        x = _conv_pool(x, hp.get("filters"), kernel, pool, conv_name=f"conv_{i}", pool_name=f"pool_{i}")
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(hp.get("units"), activation="relu", name="dense")(x)
    if hp.get("dropout"):
        x = keras.layers.Dropout(hp.get("dropout"), name="dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    return keras.Model(inputs, outputs, name="glasses_cnn")


def _build_comics_cnn(hp: kt.HyperParameters, shapes: Mapping[str, tuple[int, ...]], num_classes: int) -> keras.Model:
    """(Conv -> MaxPool) x conv_layers -> Flatten -> Dropout -> Dense softmax (the comics seed: 2 layers)."""
    _require_two_classes("comics_cnn", num_classes)
    inputs = keras.Input(shape=shapes[IMAGE_INPUT], name=IMAGE_INPUT)
    x = inputs
    for i in range(1, hp.get("conv_layers") + 1):
        x = _conv_pool(
            x, hp.get("filters_1" if i == 1 else "filters_2"), 3, 2, conv_name=f"conv_{i}", pool_name=f"pool_{i}"
        )
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(hp.get("dropout"), name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probability")(x)
    return keras.Model(inputs, outputs, name="comics_cnn")


# The moving statistics that BatchNormalization uses at inference follow the training batches'
# with this momentum. Keras' 0.99 needs ~500 steps to forget its initial 0 / 1; a face set of a
# few hundred to a few thousand images trains for that many steps in all, so at 0.99 the
# early-stopped model normalised with statistics it was never trained with and said one class
# for every test image (docs/benchmarks.md, section 9). 0.9 settles within ~50 steps.
BN_MOMENTUM = 0.9


def local_contrast_window(image_size: Sequence[int]) -> int:
    """The window of :class:`LocalContrastNormalization`: an eighth of the shorter side, odd, at least 3
    (11 at 92x112: about an eye's width, so a frame's edges stay and a cheek's shade goes)."""
    return max(3, (min(image_size) // 8) | 1)


@keras.saving.register_keras_serializable(package="facepipe")
class LocalContrastNormalization(keras.layers.Layer):
    """Each pixel minus the mean of its ``size`` x ``size`` window, over that window's sd; no weights.

    Why (face_cnn's ``input_norm`` "local"): what tells glasses from no glasses is thin edges,
    not how light or dark a face is. On ORL the models called the one dark-skinned person
    "glasses" on 9-10 of his 10 photos whatever the recipe, global brightness and contrast
    jitter and per-image standardisation included; with the skin's shade taken out window
    by window, on 1-2 of 10 (docs/benchmarks.md section 9). It also takes out what tells a
    flat-shaded comic from a photo: face2comics does worse with it, hence opt-in.
    ``epsilon`` (in the normalised image's variance units) keeps flat regions from being
    blown up to noise.
    """

    def __init__(self, size: int, epsilon: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.size, self.epsilon = size, epsilon

    def call(self, x):
        def window_mean(t):
            # "same" padding averages over the pixels inside the image only (TensorFlow's avg_pool).
            return keras.ops.average_pool(t, self.size, strides=1, padding="same")

        centred = x - window_mean(x)
        return centred / keras.ops.sqrt(window_mean(centred * centred) + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "epsilon": self.epsilon}


def _face_cnn_tower(hp: kt.HyperParameters, image):
    """[LocalContrastNormalization ->] (Conv-BN-ReLU x convs_per_block -> MaxPool) x blocks -> GAP -> Dropout.

    Image features; the first layer only with ``input_norm`` "local". Block i has width x 2^i filters, capped at 4 x width (the parameter budget: under 1M
    at width 32, 4 blocks of 2 convs); "same" padding, so any input size from 2^blocks up.
    """
    width = hp.get("width")
    x = image
    if hp.get("input_norm") == "local":
        x = LocalContrastNormalization(local_contrast_window(image.shape[1:3]), name="local_contrast")(x)
    for block in range(1, hp.get("blocks") + 1):
        filters = width * min(2 ** (block - 1), 4)
        for conv in range(1, hp.get("convs_per_block") + 1):
            name = f"block{block}_conv{conv}"
            # No bias: the BatchNormalization after it has its own shift.
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
            # synchronized: under a multi-worker strategy every replica normalises with the
            # global batch's statistics and keeps the same moving averages (else they drift apart).
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, synchronized=True, name=f"{name}_bn")(x)
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.layers.Dropout(hp.get("dropout"), name="dropout")(x)


def _latent_tower(hp: kt.HyperParameters, latent):
    """(Dense relu -> Dropout) x layers on the normalised vector: vector features."""
    x = latent
    for i in range(1, hp.get("layers") + 1):
        x = keras.layers.Dense(hp.get("units"), activation="relu", name=f"latent_dense_{i}")(x)
        x = keras.layers.Dropout(hp.get("dropout"), name=f"latent_dropout_{i}")(x)
    return x


def _sigmoid_head(x):
    return keras.layers.Dense(1, activation="sigmoid", name="probability")(x)


def _build_face_cnn(hp: kt.HyperParameters, shapes: Mapping[str, tuple[int, ...]], num_classes: int) -> keras.Model:
    """:func:`_face_cnn_tower` -> Dense(1) sigmoid."""
    _require_two_classes("face_cnn", num_classes)
    inputs = keras.Input(shape=shapes[IMAGE_INPUT], name=IMAGE_INPUT)
    return keras.Model(inputs, _sigmoid_head(_face_cnn_tower(hp, inputs)), name="face_cnn")


def _build_latent_mlp(hp: kt.HyperParameters, shapes: Mapping[str, tuple[int, ...]], num_classes: int) -> keras.Model:
    """:func:`_latent_tower` -> Dense(1) sigmoid: the --numeric_columns vector alone."""
    _require_two_classes("latent_mlp", num_classes)
    inputs = {VECTOR_INPUT: keras.Input(shape=shapes[VECTOR_INPUT], name=VECTOR_INPUT)}
    return keras.Model(inputs, _sigmoid_head(_latent_tower(hp, inputs[VECTOR_INPUT])), name="latent_mlp")


def _build_image_latent(hp: kt.HyperParameters, shapes: Mapping[str, tuple[int, ...]], num_classes: int) -> keras.Model:
    """face_cnn's tower on the image and latent_mlp's on the vector, concatenated -> Dense(1) sigmoid.

    One ``dropout`` for both towers.
    """
    _require_two_classes("image_latent", num_classes)
    inputs = {name: keras.Input(shape=shapes[name], name=name) for name in (IMAGE_INPUT, VECTOR_INPUT)}
    x = keras.layers.Concatenate(name="towers")(
        [_face_cnn_tower(hp, inputs[IMAGE_INPUT]), _latent_tower(hp, inputs[VECTOR_INPUT])]
    )
    return keras.Model(inputs, _sigmoid_head(x), name="image_latent")


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
    build=_build_glasses_cnn,
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
    build=_build_comics_cnn,
    loss="sparse_categorical_crossentropy",
)

FACE_CNN = Preset(
    name="face_cnn",
    channels=0,  # Not a manifest default: chosen with --model (or by the demo).
    defaults={
        "width": 32,
        "blocks": 4,
        "convs_per_block": 1,
        "dropout": 0.3,
        "learning_rate": 1e-3,
        "augment": "light",
        "batch_size": 32,
        "epochs": 30,
        "input_norm": "none",
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
        "small": {"width": [32, 16]},
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
    build=_build_face_cnn,
)

LATENT_MLP = Preset(
    name="latent_mlp",
    channels=0,  # Chosen with --model, on data preprocessed with --numeric_columns.
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
    build=_build_latent_mlp,
    inputs=(VECTOR_INPUT,),
)

# face_cnn's hyperparameters and spaces, plus the latent tower's (its dropout is face_cnn's).
IMAGE_LATENT = Preset(
    name="image_latent",
    channels=0,
    defaults={**FACE_CNN.defaults, "layers": 1, "units": 64},
    spaces={
        "full": {**FACE_CNN.spaces["full"], "layers": [1, 2], "units": [64, 32, 128]},
        "small": {"width": [32, 16], "units": [64, 32]},
        "wide": {**FACE_CNN.spaces["wide"], "layers": [1, 2, 3], "units": [64, 128]},
    },
    build=_build_image_latent,
    inputs=(IMAGE_INPUT, VECTOR_INPUT),
)

PRESETS: dict[str, Preset] = {
    preset.name: preset for preset in (GLASSES_CNN, COMICS_CNN, FACE_CNN, LATENT_MLP, IMAGE_LATENT)
}


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


# The last layer of an :func:`average_ensemble`: the mean of its members' outputs.
ENSEMBLE_OUTPUT = "ensemble_mean"


def average_ensemble(members: Sequence[keras.Model]) -> keras.Model:
    """One model whose output is the mean of ``members``' outputs (same inputs, same head).

    The members are renamed ``member_0``, ``member_1``, ... (a saved model needs unique
    layer names); each keeps its own weights and BatchNormalization statistics.
    """
    first, name = members[0], f"{members[0].name}_ensemble"
    inputs = {t.name: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name) for t in first.inputs}
    # A member built on a dict of inputs takes the dict; one built on a single Input, the tensor.
    called = inputs if isinstance(first.input, dict) else inputs[first.inputs[0].name]
    outputs = []
    for k, member in enumerate(members):
        if input_names(member) != input_names(first):
            raise ValueError(f"ensemble members take different inputs: {input_names(member)} vs {input_names(first)}")
        member.name = f"member_{k}"
        outputs.append(member(called))
    mean = keras.layers.Average(name=ENSEMBLE_OUTPUT)(outputs)
    return keras.Model(inputs if isinstance(first.input, dict) else called, mean, name=name)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The members of an :func:`average_ensemble`; [] for any other model."""
    if not model.layers or model.layers[-1].name != ENSEMBLE_OUTPUT:
        return []
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def input_names(model: keras.Model) -> tuple[str, ...]:
    """The names of what ``model`` takes (IMAGE_INPUT and/or VECTOR_INPUT), sorted."""
    return tuple(sorted(tensor.name for tensor in model.inputs))


def positive_probability(outputs):
    """Probability of class 1 from either head: the last column of [B, 1] or [B, 2]."""
    return outputs[:, -1]
