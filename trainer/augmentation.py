"""Training-only augmentation: random flips, shifts, zoom, rotation, brightness and contrast.

A map on the training dataset (trainer/data.py's ``make_dataset``, ``augment``), after the
tf.Transform normalisation: evaluation, validation and the exported serving graph never see
it, and it covers model.fit and the multi-worker loop alike. Only the image is augmented,
never the --numeric_columns vector. Its strength is the "augment" hyperparameter (LEVELS).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from pipelines import features

# Strength -> (max translation and zoom as a fraction of the side, max rotation as a
# fraction of a full turn, max brightness shift in normalised units (sd), max contrast
# factor change). Faces: small geometric changes keep them faces; flips are left-right.
AUGMENTATIONS = {
    "light": {"translation": 0.05, "zoom": 0.05, "rotation": 0.03, "brightness": 0.1, "contrast": 0.1},
    "strong": {"translation": 0.1, "zoom": 0.15, "rotation": 0.08, "brightness": 0.25, "contrast": 0.25},
}
# The "augment" hyperparameter's values (--augment): no augmentation or one of AUGMENTATIONS.
LEVELS = ("none", *AUGMENTATIONS)


def make_augment(strength: str, *, seed: int = 0) -> Callable[[tf.Tensor], tf.Tensor] | None:
    """``fn(images [B, H, W, C]) -> images``: random flip, translation, zoom, rotation, brightness, contrast.

    None for "none". Works on normalised images (mean ~0, sd ~1 per channel): brightness
    adds one offset per image, contrast scales each image about its own mean.
    """
    if strength == "none":
        return None
    if strength not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {strength!r}, expected none or one of {sorted(AUGMENTATIONS)}")
    import keras  # Here: only augmenting pipelines need the layers.

    p = AUGMENTATIONS[strength]
    # Keras' random preprocessing layers run as TensorFlow ops inside tf.data.
    geometric = [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomTranslation(p["translation"], p["translation"], fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom(p["zoom"], p["zoom"], fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomRotation(p["rotation"], fill_mode="reflect", seed=seed + 3),
    ]
    generator = tf.random.Generator.from_seed(seed + 4)

    def augment(images: tf.Tensor) -> tf.Tensor:
        for layer in geometric:
            images = layer(images, training=True)
        batch = tf.shape(images)[0]
        brightness = generator.uniform([batch, 1, 1, 1], -p["brightness"], p["brightness"])
        contrast = generator.uniform([batch, 1, 1, 1], 1.0 - p["contrast"], 1.0 + p["contrast"])
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        return (images - mean) * contrast + mean + brightness

    return augment


def augment_batches(ds: tf.data.Dataset, augment: str, *, seed: int = 0) -> tf.data.Dataset:
    """``ds`` of (inputs, label [B]) batches with the image augmented by ``make_augment(augment)``.

    ``ds`` itself for "none". Only the image is augmented, never the vector of a dict input.
    """
    augment_fn = make_augment(augment, seed=seed)
    if augment_fn is None:
        return ds

    def augment_image(model_input, label):
        if isinstance(model_input, dict):
            return {**model_input, features.IMAGE_KEY: augment_fn(model_input[features.IMAGE_KEY])}, label
        return augment_fn(model_input), label

    # Sequential: the random layers and generator hold state a parallel map would share.
    return ds.map(augment_image)
