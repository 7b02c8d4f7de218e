"""trainer/eval_metrics.py: the metrics on known values, ROC AUC by brute force, errors per group."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import eval_metrics, statistics


def brute_force_auc(labels, scores):
    """P(score of a positive > score of a negative), ties half, over every pair (tests/trainer/test_evaluation.py too)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_compute_metrics_on_known_values():
    labels = np.array([0, 0, 1, 1, 1, 0])
    probs = np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.6])
    metrics = eval_metrics.compute_metrics(labels, probs, class_names=["a", "b"], ids=list("uvwxyz"))
    assert metrics["confusion_matrix"] == [[1, 2], [1, 2]]
    assert metrics["precision"] == pytest.approx(0.5) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(4 / 7)
    assert metrics["roc_auc"] == pytest.approx(brute_force_auc(labels, probs))  # 0.1, 0.6 x2 ties
    assert metrics["errors_per_class"] == [
        {
            "class": "a",
            "count": 3,
            "errors": 2,
            "error_rate": pytest.approx(2 / 3),
            "error_rate_ci95": pytest.approx([0.2077, 0.9385], abs=1e-4),  # Wilson 2/3 by hand.
        },
        {
            "class": "b",
            "count": 3,
            "errors": 1,
            "error_rate": pytest.approx(1 / 3),
            "error_rate_ci95": pytest.approx([0.0615, 0.7923], abs=1e-4),
        },
    ]
    assert metrics["accuracy_ci95"] == pytest.approx([0.1876, 0.8124], abs=1e-4)  # Wilson 3/6.
    assert metrics["precision_ci95"] == pytest.approx(list(statistics.wilson_interval(2, 4)))
    assert metrics["recall_ci95"] == pytest.approx(list(statistics.wilson_interval(2, 3)))
    assert metrics["roc_auc_ci95"] == pytest.approx(list(statistics.auc_interval(labels, probs)))
    assert [m["id"] for m in metrics["misclassified"]] == ["v", "x", "z"]
    assert metrics["misclassified"][1] == {"id": "x", "label": "b", "predicted": "a", "probability": 0.4}
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 200), np.round(rng.random(200), 1)  # Many ties.
    assert eval_metrics.roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))


def test_errors_per_group_from_the_examples_groups():
    groups = eval_metrics.example_groups(list("uvwxyz"), ["s1", "s1", "s2", "s2", "s3", "s3"])
    assert groups == {"u": "s1", "v": "s1", "w": "s2", "x": "s2", "y": "s3", "z": "s3"}
    metrics = eval_metrics.compute_metrics(
        [0, 0, 1, 1, 1, 0], [0.1, 0.6, 0.8, 0.4, 0.3, 0.6], class_names=["a", "b"], ids=list("uvwxyz"), groups=groups
    )
    assert metrics["errors_per_group"] == [  # Most errors first, then by name.
        {"group": "s3", "count": 2, "errors": 2, "error_rate": 1.0},
        {"group": "s1", "count": 2, "errors": 1, "error_rate": 0.5},
        {"group": "s2", "count": 2, "errors": 1, "error_rate": 0.5},
    ]
    # Every example its own group (no --group_by), or shards without groups: nothing to report.
    assert eval_metrics.example_groups(["u", "v"], ["u", "v"]) is None
    assert eval_metrics.example_groups(["u", "v"], ["", ""]) is None
