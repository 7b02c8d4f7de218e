"""The TFRecord contract: the feature spec, the example encoding and the vector's place in both."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipelines import features

BASE_KEYS = {"image", "label", "id", "group", "height", "width", "channels"}


def _example(**extra) -> bytes:
    return features.encode_example(image=b"\1\2\3", label=1, example_id="e", height=1, width=1, channels=3, **extra)


def test_without_a_vector_the_spec_and_the_example_are_as_before():
    assert set(features.raw_feature_spec()) == set(features.raw_feature_spec(0)) == BASE_KEYS
    assert set(tf.train.Example.FromString(_example()).features.feature) == BASE_KEYS
    assert features.transform_input_keys() == (features.IMAGE_KEY, features.LABEL_KEY)
    assert set(features.feature_spec_description()) == BASE_KEYS
    assert features.vector_length({"image": {}}) == 0  # a manifest written before vectors existed


def test_the_vector_comes_back_bit_for_bit_from_an_example():
    tiny = np.finfo(np.float32).smallest_subnormal
    values = np.array([0.1, -0.0, 3.4028235e38, tiny, -1e-30, 1 / 3], np.float32)
    spec = features.raw_feature_spec(len(values))
    assert spec[features.VECTOR_KEY] == tf.io.FixedLenFeature([6], tf.float32)
    parsed = tf.io.parse_single_example(_example(vector=values.tobytes()), spec)
    assert parsed[features.VECTOR_KEY].numpy().tobytes() == values.tobytes()
    assert features.transform_input_keys(6) == (features.IMAGE_KEY, features.LABEL_KEY, features.VECTOR_KEY)
    assert features.feature_spec_description(6)[features.VECTOR_KEY].startswith("float32[6]: ")


def test_vector_length_reads_the_manifest_section():
    assert features.vector_length({"vector": {"key": "latent", "length": 512, "columns": []}}) == 512
