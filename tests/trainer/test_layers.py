"""trainer/layers.py: LocalContrastNormalization."""

from __future__ import annotations

import numpy as np

from trainer import layers


def test_local_contrast_normalisation_takes_out_each_windows_shade_and_keeps_edges():
    layer = layers.LocalContrastNormalization(5)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 24, 20, 1)).astype("float32")
    # A face's shade: a smooth ramp from dark to light, and a global brightness and contrast.
    shade = np.linspace(-3, 3, 20, dtype="float32")[None, None, :, None]
    out = layer(image).numpy()
    np.testing.assert_allclose(layer(image + 4.0).numpy(), out, atol=1e-4)
    # Three times the contrast: nearly the same output (epsilon keeps it from being exactly so).
    assert np.corrcoef(layer(3.0 * image).numpy().ravel(), out.ravel())[0, 1] > 0.99
    # A ramp is all shade, no edge: nothing left of it away from the image's border.
    assert np.abs(layer(shade * np.ones_like(image)).numpy()[:, :, 2:-2]).max() < 1e-4

    # By hand at an inner pixel (10, 8): its 5x5 window's mean, and the mean over that window of
    # each pixel's own centred value squared.
    def centred(row, col):
        return image[0, row, col, 0] - image[0, row - 2 : row + 3, col - 2 : col + 3, 0].mean()

    variance = np.mean([centred(r, c) ** 2 for r in range(8, 13) for c in range(6, 11)])
    np.testing.assert_allclose(out[0, 10, 8, 0], centred(10, 8) / np.sqrt(variance + 0.1), rtol=1e-4)
    assert layers.local_contrast_window((112, 92)) == 11 and layers.local_contrast_window((16, 16)) == 3
