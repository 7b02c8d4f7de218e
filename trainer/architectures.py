"""The architectures the presets build: the seeds' CNNs, face_cnn's and the vector's towers, and
their heads (trainer/models.py names them and gives their search spaces).

A model takes the normalised image (``image``), the normalised ``latent`` vector of
``--numeric_columns`` data, or both: an image-only model takes the image tensor; a model with
the vector takes a dict ``{name: tensor}``. Both heads give the probability of class 1 in their
last column (sigmoid [B, 1] or softmax [B, 2]): see :func:`positive_probability`.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import keras_tuner as kt

from pipelines import features
from trainer.layers import LocalContrastNormalization, local_contrast_window

# The decision rule of every head: class 1 when P(class 1) >= THRESHOLD (serving,
# evaluation and the multi-worker loop's accuracy alike).
THRESHOLD = 0.5
# Model input names: the normalised image and the normalised --numeric_columns vector.
IMAGE_INPUT = features.IMAGE_KEY
VECTOR_INPUT = features.VECTOR_KEY
# The moving statistics that BatchNormalization uses at inference follow the training batches'
# with this momentum. Keras' 0.99 needs ~500 steps to forget its initial 0 / 1; a face set of a
# few hundred to a few thousand images trains for that many steps in all, so at 0.99 the
# early-stopped model normalised with statistics it was never trained with and said one class
# for every test image (docs/benchmarks.md, section 9). 0.9 settles within ~50 steps.
BN_MOMENTUM = 0.9


def _require_two_classes(name: str, num_classes: int) -> None:
    if num_classes != 2:
        raise ValueError(f"{name} reports the probability of class 1 of 2 classes, the data has {num_classes}")


def _conv_pool(x, filters: int, kernel: int, pool: int, *, conv_name: str, pool_name: str):
    x = keras.layers.Conv2D(filters, (kernel, kernel), activation="relu", name=conv_name)(x)
    return keras.layers.MaxPooling2D((pool, pool), name=pool_name)(x)


def build_glasses_cnn(hp: kt.HyperParameters, shapes: Mapping[str, tuple[int, ...]], num_classes: int) -> keras.Model:
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


def build_comics_cnn(hp: kt.HyperParameters, shapes: Mapping[str, tuple[int, ...]], num_classes: int) -> keras.Model:
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


def build_face_cnn(hp: kt.HyperParameters, shapes: Mapping[str, tuple[int, ...]], num_classes: int) -> keras.Model:
    """:func:`_face_cnn_tower` -> Dense(1) sigmoid."""
    _require_two_classes("face_cnn", num_classes)
    inputs = keras.Input(shape=shapes[IMAGE_INPUT], name=IMAGE_INPUT)
    return keras.Model(inputs, _sigmoid_head(_face_cnn_tower(hp, inputs)), name="face_cnn")


def build_latent_mlp(hp: kt.HyperParameters, shapes: Mapping[str, tuple[int, ...]], num_classes: int) -> keras.Model:
    """:func:`_latent_tower` -> Dense(1) sigmoid: the --numeric_columns vector alone."""
    _require_two_classes("latent_mlp", num_classes)
    inputs = {VECTOR_INPUT: keras.Input(shape=shapes[VECTOR_INPUT], name=VECTOR_INPUT)}
    return keras.Model(inputs, _sigmoid_head(_latent_tower(hp, inputs[VECTOR_INPUT])), name="latent_mlp")


def build_image_latent(hp: kt.HyperParameters, shapes: Mapping[str, tuple[int, ...]], num_classes: int) -> keras.Model:
    """face_cnn's tower on the image and latent_mlp's on the vector, concatenated -> Dense(1) sigmoid.

    One ``dropout`` for both towers.
    """
    _require_two_classes("image_latent", num_classes)
    inputs = {name: keras.Input(shape=shapes[name], name=name) for name in (IMAGE_INPUT, VECTOR_INPUT)}
    x = keras.layers.Concatenate(name="towers")(
        [_face_cnn_tower(hp, inputs[IMAGE_INPUT]), _latent_tower(hp, inputs[VECTOR_INPUT])]
    )
    return keras.Model(inputs, _sigmoid_head(x), name="image_latent")


def input_names(model: keras.Model) -> tuple[str, ...]:
    """The names of what ``model`` takes (IMAGE_INPUT and/or VECTOR_INPUT), sorted."""
    return tuple(sorted(tensor.name for tensor in model.inputs))


def positive_probability(outputs):
    """Probability of class 1 from either head: the last column of [B, 1] or [B, 2]."""
    return outputs[:, -1]
