"""Precise BatchNormalization statistics: measured on clean training batches, not averaged while training.

Why: a BatchNormalization layer normalises with its batch's statistics while training and
with its moving averages at inference. Those averages follow the last few dozen training
batches (momentum 0.9), and those batches are augmented (brightness, contrast, zoom), so
the network that validates, is kept by early stopping and is exported is not quite the
one that was trained. On ORL (subject-grouped folds, face_cnn) validation accuracy jumped
between 0.36 and 0.96 from one epoch to the next while training accuracy stayed at
0.95-1.0, and the kept models ranked the test people almost perfectly (ROC AUC 0.99-1.0)
but called 14-17 of the 65 photos without glasses "glasses": a shifted decision boundary.
Re-measuring the statistics as the mean of the batch statistics over one clean pass of
the training set ("precise BN", Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021)
before every validation and before saving fixes what inference sees (docs/benchmarks.md §9).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras
import tensorflow as tf

# At most this many batches measure the statistics: the whole training set of a few
# thousand images, a sample of a larger one (the estimate's error shrinks as 1/sqrt(batches)).
MAX_BATCHES = 100


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The trainable BatchNormalization layers of ``model``, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += batch_norm_layers(layer)
        elif isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            found.append(layer)
    return found


class Recalibrator:
    """Sets every BatchNormalization layer of a model to the mean of its batch statistics over clean batches.

    Call it with (inputs, labels) batches of clean (never augmented) training examples. The
    model runs them in training mode, as it was trained, with each layer's momentum at 0
    so that its moving statistics hold the last batch's; their mean over the batches is
    then what the layers keep. No weight is trained. The forward pass is one tf.function,
    traced on the first call and reused by later ones (one per epoch).
    """

    def __init__(self, model: keras.Model):
        self.layers = batch_norm_layers(model)
        self._forward = tf.function(lambda inputs: model(inputs, training=True))

    def __call__(self, batches: Iterable[tuple[Any, Any]], *, max_batches: int = MAX_BATCHES) -> int:
        """Recalibrates from up to ``max_batches`` (at most MAX_BATCHES) of ``batches``; the number used (0: no layer, not run).

        Callers pass an epoch's steps: a small training set is measured whole, a large one sampled.
        """
        max_batches = min(max_batches, MAX_BATCHES)
        if not self.layers:
            return 0
        momenta = [layer.momentum for layer in self.layers]
        sums = [[tf.zeros_like(layer.moving_mean), tf.zeros_like(layer.moving_variance)] for layer in self.layers]
        count = 0
        try:
            for layer in self.layers:
                layer.momentum = 0.0  # Read when the forward pass is traced.
            for inputs, _ in batches:
                self._forward(inputs)
                for total, layer in zip(sums, self.layers, strict=True):
                    total[0] += layer.moving_mean
                    total[1] += layer.moving_variance
                count += 1
                if count == max_batches:
                    break
        finally:
            for layer, momentum in zip(self.layers, momenta, strict=True):
                layer.momentum = momentum
        if count:
            for (mean, variance), layer in zip(sums, self.layers, strict=True):
                layer.moving_mean.assign(mean / count)
                layer.moving_variance.assign(variance / count)
        return count


def recalibrate(model: keras.Model, batches: Iterable[tuple[Any, Any]], *, max_batches: int = MAX_BATCHES) -> int:
    """``Recalibrator(model)(batches, max_batches=...)``: once, for a model that trained without validation."""
    return Recalibrator(model)(batches, max_batches=max_batches)


class PreciseBatchNorm(keras.callbacks.Callback):
    """At the end of every epoch, :func:`recalibrate` the model, then validate it.

    Place it first among a fit's callbacks and give the fit no validation data
    (:func:`fit_validation` does both): it writes the epoch's ``val_*`` figures into ``logs``
    before early stopping, the CSV history, TensorBoard, checkpoints and keras-tuner read
    them, and the validation set is run once an epoch, with the statistics the model keeps.

    Args:
      calibration: (inputs, labels) batches of clean training examples, repeated
        (:func:`recalibrate` takes ``batches`` of them per epoch).
      validation: The validation dataset, or None (no ``val_*`` figures).
      batches: Batches per recalibration (an epoch's steps; at most MAX_BATCHES are read).
    """

    def __init__(self, calibration, validation=None, *, batches: int):
        super().__init__()
        self.calibration = calibration
        self.validation = validation
        self.batches = batches
        self._iterator = None
        self._recalibrate = None

    def on_train_begin(self, logs=None):
        self._iterator = iter(self.calibration)
        self._recalibrate = Recalibrator(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self._recalibrate(self._iterator, max_batches=self.batches)
        if self.validation is not None and logs is not None:
            results = self.model.evaluate(self.validation, verbose=0, return_dict=True)
            logs.update({f"val_{name}": value for name, value in results.items()})


def fit_validation(
    model: keras.Model, calibration, validation, *, batches: int
) -> tuple[Any, list[keras.callbacks.Callback]]:
    """(``validation_data`` for ``model.fit``, the callbacks to put first among its callbacks).

    ``calibration`` None (Keras' moving averages) or a model without BatchNormalization:
    Keras validates, no callback. Otherwise :class:`PreciseBatchNorm` recalibrates and
    validates, and Keras does not (its figures would be the moving averages', thrown away).
    """
    if calibration is None or not batch_norm_layers(model):
        return validation, []
    return None, [PreciseBatchNorm(calibration, validation, batches=batches)]
