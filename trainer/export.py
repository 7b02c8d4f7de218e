"""The serving SavedModel: encoded images or tf.Examples in, probability of class 1 out.

``serving_default`` repeats, in TensorFlow, what the preprocessing pipeline does to a raw
image file (decode, grayscale when the manifest says so, area resize to the manifest's
size, round to uint8 as stored) and then applies the very tf.Transform graph the trainer's
input pipeline applies, so served and trained images are normalised identically.
``serving_examples`` takes examples already in the pipeline's format.

Outputs of both signatures:
  probability  float32 [B]   P(class 1)
  class        int64   [B]   1 when probability >= models.THRESHOLD (0.5)
  label        string  [B]   the class name from the manifest

The module also keeps the fingerprint of the data the model was trained on
(``data.DataDir.fingerprint``): ``read_data_fingerprint(export_dir)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf
import tensorflow_transform as tft

from pipelines import features
from trainer import models


class ServingModule(tf.Module):
    """Keras model + tf.Transform layer + image decoding, with two serving signatures.

    Args:
      model: The trained Keras model (takes normalised [B, H, W, C] float32).
      tft_output: The pipeline's transform output (its graph and assets are exported too).
      manifest: The data manifest: image size, colour mode, class names.
      data_fingerprint: The training data's fingerprint ("" when not known).
    """

    def __init__(
        self,
        model: keras.Model,
        tft_output: tft.TFTransformOutput,
        manifest: Mapping[str, Any],
        data_fingerprint: str = "",
    ):
        super().__init__(name="facepipe_serving")
        self.model = model
        self._data_fingerprint = data_fingerprint
        self.tft_layer = tft_output.transform_features_layer()
        self._shape = features.image_shape(manifest)
        self._grayscale = manifest["image"].get("color_mode", "rgb") == "grayscale" or self._shape[2] == 1
        self._class_names = [str(c) for c in manifest["classes"]]
        # tf.Transform takes the pixels as the raw byte string the pipeline stores; no TF op
        # turns a uint8 tensor into its bytes, so each value is looked up as a 1-byte string
        # and the bytes of an image are joined.
        self._byte_strings = [bytes([i]) for i in range(256)]

    def _decode(self, encoded: tf.Tensor) -> tf.Tensor:
        """One PNG/JPEG/BMP/GIF (any size, 8 or 16 bit, grey/RGB/RGBA) -> [H, W, C] uint8."""
        height, width, channels = self._shape
        # dtype=float32 scales 8-bit and 16-bit files alike to [0, 1].
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.float32, expand_animations=False)
        if self._grayscale:
            image = tf.image.rgb_to_grayscale(image)
        # Area averaging is what the pipeline's cv2.resize(INTER_AREA) does when shrinking.
        image = tf.image.resize(image, [height, width], method="area", antialias=True)
        image = tf.round(tf.clip_by_value(image * 255.0, 0.0, 255.0))
        return tf.ensure_shape(tf.cast(image, tf.uint8), [height, width, channels])

    def _to_raw_bytes(self, pixels: tf.Tensor) -> tf.Tensor:
        """[B, H, W, C] uint8 -> [B] strings, row-major bytes as in the TFRecords."""
        flat = tf.reshape(tf.cast(pixels, tf.int32), [tf.shape(pixels)[0], -1])
        return tf.strings.reduce_join(tf.gather(tf.constant(self._byte_strings), flat), axis=-1)

    def _predict_raw(self, raw_image: tf.Tensor) -> dict[str, tf.Tensor]:
        """[B] raw pixel strings -> the serving outputs, through the tf.Transform graph."""
        batch = tf.shape(raw_image)[0]
        # The label input of the transform graph is passed through untouched; serving has none.
        transformed = self.tft_layer({features.IMAGE_KEY: raw_image, features.LABEL_KEY: tf.zeros([batch], tf.int64)})
        image = tf.reshape(transformed[features.NORMALIZED_IMAGE_KEY], [-1, *self._shape])
        probability = models.positive_probability(self.model(image, training=False))
        predicted = tf.cast(probability >= models.THRESHOLD, tf.int64)
        return {
            "probability": probability,
            "class": predicted,
            "label": tf.gather(tf.constant(self._class_names), predicted),
        }

    # A function, not a variable or a signature: saved as a constant of the graph, read back
    # by ``read_data_fingerprint``, and no new serving signature for clients to see.
    @tf.function(input_signature=[])
    def data_fingerprint(self) -> tf.Tensor:
        return tf.constant(self._data_fingerprint)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_images(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.map_fn(
            self._decode, image_bytes, fn_output_signature=tf.TensorSpec(self._shape, tf.uint8)
        )  # [B, H, W, C] uint8: what the pipeline would have stored
        return self._predict_raw(self._to_raw_bytes(pixels))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(examples, {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
        return self._predict_raw(parsed[features.IMAGE_KEY])


def export_model(
    model: keras.Model,
    *,
    tft_output: tft.TFTransformOutput,
    manifest: Mapping[str, Any],
    export_dir: str,
    data_fingerprint: str = "",
) -> str:
    """Saves the serving SavedModel to ``export_dir`` (replacing an older export)."""
    module = ServingModule(model, tft_output, manifest, data_fingerprint)
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={"serving_default": module.serve_images, "serving_examples": module.serve_examples},
    )
    logging.info("exported serving SavedModel to %s", export_dir)
    return export_dir


def load_serving(export_dir: str):
    """The exported module's ``serving_default`` and ``serving_examples`` signatures."""
    loaded = tf.saved_model.load(export_dir)
    return loaded.signatures["serving_default"], loaded.signatures["serving_examples"]


def read_data_fingerprint(export_dir: str) -> str:
    """The fingerprint of the data the exported model was trained on ("" when not recorded)."""
    loaded = tf.saved_model.load(export_dir)
    if not hasattr(loaded, "data_fingerprint"):
        return ""  # An export from before the fingerprint was recorded.
    return loaded.data_fingerprint().numpy().decode("utf-8")
