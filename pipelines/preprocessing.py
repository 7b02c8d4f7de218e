"""tf.Transform's preprocessing_fn: full-pass per-channel pixel statistics, and the z-score of
the --numeric_columns vector when there is one.

The pipeline analyses the train split only, and writes the resulting transform graph;
the trainer applies that graph in its tf.data map and the exported model applies it to
served images, so training and serving normalise with the very same constants.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from pipelines import features

# Keeps the division finite for a channel that is constant over the whole train split.
_MIN_STDDEV = 1e-6


def raw_metadata(*, channels: int, vector_length: int = 0) -> dataset_metadata.DatasetMetadata:
    """The schema of the preprocessing_fn's inputs: the pixels, the label, the per-image
    channel statistics that its analysers read and, when ``vector_length``, the vector."""
    spec = {
        features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        features.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        features.PIXEL_MEAN_KEY: tf.io.FixedLenFeature([channels], tf.float32),
        features.PIXEL_MEAN_SQUARE_KEY: tf.io.FixedLenFeature([channels], tf.float32),
    }
    if vector_length:
        spec[features.VECTOR_KEY] = tf.io.FixedLenFeature([vector_length], tf.float32)
    return dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))


def decode_pixels(image_bytes: tf.Tensor, *, height: int, width: int, channels: int) -> tf.Tensor:
    """[batch] uint8-pixel strings -> [batch, height, width, channels] float32 in [0, 1]."""
    pixels = tf.io.decode_raw(image_bytes, tf.uint8)
    pixels = tf.reshape(pixels, [-1, height, width, channels])
    return tf.cast(pixels, tf.float32) / 255.0


def make_preprocessing_fn(*, height: int, width: int, channels: int, vector_length: int = 0) -> Callable[[dict], dict]:
    """Returns the preprocessing_fn for images of the given shape (and vectors of ``vector_length``).

    Its analysers read the per-image channel statistics that the pipeline computed on the
    workers (``pixel_mean``, ``pixel_mean_square``), not the pixels: tf.Transform's analysis
    then moves a few floats per image instead of the image, so its memory does not grow with
    the image size. The transform it writes takes ``image`` alone; TFT fills the analysis-only
    inputs with zeros when a reader (trainer, exported model) leaves them out.

    With a vector, ``latent_normalized`` is ``latent`` z-scored per component with the train
    split's mean and (population) variance; a reader must pass ``latent`` for it to mean anything.
    """

    def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = decode_pixels(inputs[features.IMAGE_KEY], height=height, width=width, channels=channels)
        # Every image has the same number of pixels, so the mean over images of the
        # per-image channel means is the channel mean over all pixels of the split.
        mean = tft.mean(inputs[features.PIXEL_MEAN_KEY], reduce_instance_dims=False)  # [channels]
        mean_square = tft.mean(inputs[features.PIXEL_MEAN_SQUARE_KEY], reduce_instance_dims=False)  # [channels]
        stddev = tf.sqrt(tf.maximum(mean_square - tf.square(mean), 0.0))
        stddev = tf.maximum(stddev, _MIN_STDDEV)
        outputs = {
            features.NORMALIZED_IMAGE_KEY: (image - mean) / stddev,
            features.LABEL_KEY: inputs[features.LABEL_KEY],
        }
        if vector_length:
            # A component that is constant on train is only centred (tft leaves var 0 unscaled).
            outputs[features.NORMALIZED_VECTOR_KEY] = tft.scale_to_z_score(
                inputs[features.VECTOR_KEY], elementwise=True
            )
        return outputs

    return preprocessing_fn
