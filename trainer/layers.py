"""facepipe's own Keras layer, registered for saving and loading (package "facepipe")."""

from __future__ import annotations

from collections.abc import Sequence

import keras


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
