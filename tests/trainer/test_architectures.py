"""trainer/architectures.py: the heads' probability of class 1."""

from __future__ import annotations

import numpy as np

from trainer import architectures


def test_positive_probability_of_both_heads():
    np.testing.assert_allclose(architectures.positive_probability(np.array([[0.2], [0.9]])), [0.2, 0.9])
    np.testing.assert_allclose(architectures.positive_probability(np.array([[0.8, 0.2], [0.1, 0.9]])), [0.2, 0.9])
