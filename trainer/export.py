"""The serving SavedModel: encoded images or tf.Examples in, probability of class 1 out.

``serving_default`` repeats, in TensorFlow, what the preprocessing pipeline does to a raw
image file (decode, grayscale when the manifest says so, area resize to the manifest's
size, round to uint8 as stored) and then applies the very tf.Transform graph the trainer's
input pipeline applies, so served and trained images are normalised identically.
``serving_examples`` takes examples already in the pipeline's format (it parses what the model
takes: the pixels and/or the ``latent`` vector).

A model that takes the --numeric_columns vector (``latent_mlp``, ``image_latent``) is served
with the raw vector, float32 [B, N], which goes through the same tf.Transform layer (z-score
with the train split's statistics) as in training:
  latent_mlp     ``serving_default`` = ``serving_latent``(latent)
  image_latent   ``serving_default`` = ``serving_image_latent``(image_bytes, latent)
``read_serving_config(export_dir)`` says what the model takes, the vector's column names and
how a file name maps to an id (the manifest's id column and --file_pattern), for predict.

Outputs of both signatures:
  probability  float32 [B]   P(class 1)
  class        int64   [B]   1 when probability >= architectures.THRESHOLD (0.5)
  label        string  [B]   the class name from the manifest

The module also keeps the fingerprint of the data the model was trained on
(``data.DataDir.fingerprint``): ``read_data_fingerprint(export_dir)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf
import tensorflow_transform as tft

from pipelines import features
from trainer import architectures, data


class ServingModule(tf.Module):
    """Keras model + tf.Transform layer + image decoding, with its serving signatures (:meth:`signatures`).

    Args:
      model: The trained Keras model (takes the normalised image [B, H, W, C] float32, the
        normalised vector or both: ``architectures.input_names``).
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
        self._inputs = architectures.input_names(model)
        self._vector_length = features.vector_length(manifest)
        options = manifest.get("options", {})
        self._config = json.dumps(
            {
                "inputs": list(self._inputs),
                "vector_columns": list(manifest.get("vector", {}).get("columns", [])),
                "id_column": options.get("id_column") or "id",
                "file_pattern": options.get("file_pattern") or "{id}",
                "class_folders": bool(options.get("class_folders")),
                # The pipeline's bound on a side: predict refuses what preprocessing refused.
                "min_side": options.get("min_side", features.MIN_SIDE),
            }
        )
        # Only the functions of what the model takes: saving traces every tf.function attribute.
        image_bytes = tf.TensorSpec([None], tf.string, name="image_bytes")
        vector = tf.TensorSpec([None, self._vector_length], tf.float32, name=features.VECTOR_KEY)
        if self._inputs == (architectures.IMAGE_INPUT,):
            self.serve_images = tf.function(self._serve_images, input_signature=[image_bytes])
        elif self._inputs == (architectures.VECTOR_INPUT,):
            self.serve_vectors = tf.function(self._serve_vectors, input_signature=[vector])
        else:
            self.serve_images_and_vectors = tf.function(
                self._serve_images_and_vectors, input_signature=[image_bytes, vector]
            )

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

    def _predict_raw(self, raw: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """{image: [B] raw pixel strings, latent: [B, N]} (what the model takes) -> the serving outputs.

        Through the tf.Transform graph, which computes only the outputs of the inputs given.
        """
        batch = tf.shape(next(iter(raw.values())))[0]
        # The label input of the transform graph is passed through untouched; serving has none.
        transformed = self.tft_layer({**raw, features.LABEL_KEY: tf.zeros([batch], tf.int64)})
        model_input = data.model_inputs(
            transformed, self._inputs, image_shape=self._shape, vector_length=self._vector_length
        )
        probability = architectures.positive_probability(self.model(model_input, training=False))
        predicted = tf.cast(probability >= architectures.THRESHOLD, tf.int64)
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

    @tf.function(input_signature=[])
    def serving_config(self) -> tf.Tensor:
        return tf.constant(self._config)

    def _raw_images(self, image_bytes: tf.Tensor) -> tf.Tensor:
        pixels = tf.map_fn(
            self._decode, image_bytes, fn_output_signature=tf.TensorSpec(self._shape, tf.uint8)
        )  # [B, H, W, C] uint8: what the pipeline would have stored
        return self._to_raw_bytes(pixels)

    def _serve_images(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._predict_raw({features.IMAGE_KEY: self._raw_images(image_bytes)})

    def _serve_vectors(self, latent: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._predict_raw({features.VECTOR_KEY: latent})

    def _serve_images_and_vectors(self, image_bytes: tf.Tensor, latent: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._predict_raw({features.IMAGE_KEY: self._raw_images(image_bytes), features.VECTOR_KEY: latent})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        spec = features.raw_feature_spec(self._vector_length)
        parsed = tf.io.parse_example(examples, {key: spec[key] for key in self._inputs})
        return self._predict_raw(parsed)

    def signatures(self) -> dict[str, Any]:
        """The exported signatures by name; ``serving_default`` takes what the model takes."""
        served = {"serving_examples": self.serve_examples}
        if self._inputs == (architectures.IMAGE_INPUT,):
            return {"serving_default": self.serve_images, **served}
        if self._inputs == (architectures.VECTOR_INPUT,):
            return {"serving_default": self.serve_vectors, "serving_latent": self.serve_vectors, **served}
        return {
            "serving_default": self.serve_images_and_vectors,
            "serving_image_latent": self.serve_images_and_vectors,
            **served,
        }


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
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
    logging.info("exported serving SavedModel to %s", export_dir)
    return export_dir


def load_serving(export_dir: str):
    """The exported module's ``serving_default`` and ``serving_examples`` signatures."""
    loaded = tf.saved_model.load(export_dir)
    return loaded.signatures["serving_default"], loaded.signatures["serving_examples"]


def read_serving_config(export_dir: str) -> dict[str, Any]:
    """What the exported model takes: {inputs, vector_columns, id_column, file_pattern, class_folders}.

    An export from before the vector presets takes images only.
    """
    loaded = tf.saved_model.load(export_dir)
    if not hasattr(loaded, "serving_config"):
        return {"inputs": [architectures.IMAGE_INPUT], "vector_columns": [], "id_column": "id", "file_pattern": "{id}"}
    return json.loads(loaded.serving_config().numpy().decode("utf-8"))


def read_data_fingerprint(export_dir: str) -> str:
    """The fingerprint of the data the exported model was trained on ("" when not recorded)."""
    loaded = tf.saved_model.load(export_dir)
    if not hasattr(loaded, "data_fingerprint"):
        return ""  # An export from before the fingerprint was recorded.
    return loaded.data_fingerprint().numpy().decode("utf-8")
