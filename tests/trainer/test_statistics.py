"""trainer/statistics.py against hand computations and brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import statistics


def test_wilson_interval_matches_hand_computation():
    # 90/100: centre (0.9 + 1.96^2/200) / (1 + 1.96^2/100), half-width 1.96 sqrt(0.0009 + 1.96^2/40000) / same.
    low, high = statistics.wilson_interval(90, 100)
    assert (round(low, 3), round(high, 3)) == (0.826, 0.945)
    # 0/10: the interval is [0, z^2/n / (1 + z^2/n)], not the Wald interval's point [0, 0].
    low, high = statistics.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1.959964**2 / 10 / (1 + 1.959964**2 / 10), rel=1e-6)
    assert np.isnan(statistics.wilson_interval(0, 0)).all()


def test_auc_interval_matches_hand_computation():
    # AUC 0.75; positive placements (0.5, 1), negative placements (1, 0.5): variance 0.125/2 + 0.125/2.
    low, high = statistics.auc_interval(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert low == pytest.approx(0.75 - 1.959964 * np.sqrt(0.125), rel=1e-5) and high == 1.0


def test_auc_interval_agrees_with_pairwise_delong():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 120)
    scores = np.round(rng.random(120) + 0.3 * labels, 1)  # Informative, with many ties.
    pos, neg = scores[labels == 1], scores[labels == 0]
    kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc = kernel.mean()
    variance = kernel.mean(axis=1).var(ddof=1) / len(pos) + kernel.mean(axis=0).var(ddof=1) / len(neg)
    low, high = statistics.auc_interval(labels, scores)
    assert low == pytest.approx(auc - 1.959964 * np.sqrt(variance), rel=1e-5)
    assert high == pytest.approx(min(1.0, auc + 1.959964 * np.sqrt(variance)), rel=1e-5)
    assert np.isnan(statistics.auc_interval(np.ones(5), np.arange(5.0))).all()


def test_mcnemar_exact():
    correct = np.array([True] * 10 + [True, False] * 5)
    baseline = np.array([False] * 10 + [True, False] * 5)
    result = statistics.mcnemar_exact(correct, baseline)
    assert (result["b"], result["c"]) == (10, 0)
    assert result["p_value"] == pytest.approx(2 * 0.5**10) and result["significant"]
    same = statistics.mcnemar_exact(correct, correct)
    assert (same["b"], same["c"], same["p_value"], same["significant"]) == (0, 0, 1.0, False)
    balanced = statistics.mcnemar_exact(
        [True, True, True, False, False, False], [False, False, False, True, True, True]
    )
    assert balanced["p_value"] == pytest.approx(1.0) and not balanced["significant"]
