"""Ensembles: one model whose output is the mean of its members' (train --ensemble)."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from trainer.architectures import input_names

# The last layer of an :func:`average_ensemble`: the mean of its members' outputs.
ENSEMBLE_OUTPUT = "ensemble_mean"


def average_ensemble(members: Sequence[keras.Model]) -> keras.Model:
    """One model whose output is the mean of ``members``' outputs (same inputs, same head).

    The members are renamed ``member_0``, ``member_1``, ... (a saved model needs unique
    layer names); each keeps its own weights and BatchNormalization statistics.
    """
    first, name = members[0], f"{members[0].name}_ensemble"
    inputs = {t.name: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name) for t in first.inputs}
    # A member built on a dict of inputs takes the dict; one built on a single Input, the tensor.
    called = inputs if isinstance(first.input, dict) else inputs[first.inputs[0].name]
    outputs = []
    for k, member in enumerate(members):
        if input_names(member) != input_names(first):
            raise ValueError(f"ensemble members take different inputs: {input_names(member)} vs {input_names(first)}")
        member.name = f"member_{k}"
        outputs.append(member(called))
    mean = keras.layers.Average(name=ENSEMBLE_OUTPUT)(outputs)
    return keras.Model(inputs if isinstance(first.input, dict) else called, mean, name=name)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The members of an :func:`average_ensemble`; [] for any other model."""
    if not model.layers or model.layers[-1].name != ENSEMBLE_OUTPUT:
        return []
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]
