"""trainer/augmentation.py: the training dataset's images change, its examples and the others' do not."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from trainer import data


def test_augmentation_changes_training_inputs_only(rgb_dir):
    data_dir = data.DataDir.read(rgb_dir)
    common = dict(manifest=data_dir.manifest, tft_output=data_dir.tft_output, global_batch_size=8, seed=1)
    plain = next(iter(data.make_dataset(rgb_dir, "train", training=True, **common)))
    augmented = next(iter(data.make_dataset(rgb_dir, "train", training=True, augment="strong", **common)))
    np.testing.assert_array_equal(plain[1], augmented[1])  # Same examples, same order...
    assert augmented[0].shape == plain[0].shape
    assert float(tf.reduce_mean(tf.abs(augmented[0] - plain[0]))) > 0.05  # ...different pixels.
    with pytest.raises(ValueError, match="training dataset only"):
        data.make_dataset(rgb_dir, "validation", training=False, augment="light", **common)
