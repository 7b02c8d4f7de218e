"""Confidence intervals and paired tests for evaluation metrics (numpy/scipy only).

wilson_interval   a proportion's 95% score interval (accuracy, precision, recall, error rates)
auc_interval      ROC AUC with DeLong's variance (normal approximation, clipped to [0, 1])
mcnemar_exact     two classifiers on the same examples: binomial test on the discordant pairs
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

# Two-sided 95%.
Z_95 = float(stats.norm.ppf(0.975))


def wilson_interval(successes: int, n: int, *, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of ``successes / n``; (nan, nan) when ``n`` is 0.

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not collapse to a
    point at 0/n or n/n, which matters on the small test sets faces often come in.
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _placements(scores: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each score, the share of ``others`` below it, ties counting half."""
    others = np.sort(others)
    below = np.searchsorted(others, scores, side="left")
    not_above = np.searchsorted(others, scores, side="right")
    return (below + 0.5 * (not_above - below)) / len(others)


def auc_interval(labels: np.ndarray, scores: np.ndarray, *, z: float = Z_95) -> tuple[float, float]:
    """DeLong's interval of the ROC AUC; (nan, nan) without both classes.

    The AUC is the mean placement of the positives among the negatives; DeLong's variance
    is var(positive placements) / n_pos + var(negative placements) / n_neg (DeLong et al.
    1988). O(n log n) and memory linear in n, unlike a pairwise or bootstrap computation.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = scores[labels], scores[~labels]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan"), float("nan")
    v10 = _placements(positives, negatives)  # P(negative < this positive)
    v01 = 1.0 - _placements(negatives, positives)  # P(positive > this negative)
    auc = float(v10.mean())
    variance = 0.0
    if len(positives) > 1:
        variance += v10.var(ddof=1) / len(positives)
    if len(negatives) > 1:
        variance += v01.var(ddof=1) / len(negatives)
    half = z * math.sqrt(variance)
    return max(0.0, auc - half), min(1.0, auc + half)


def mcnemar_exact(correct: np.ndarray, baseline_correct: np.ndarray, *, alpha: float = 0.05) -> dict[str, Any]:
    """Exact McNemar test of two classifiers' per-example correctness (same examples, same order).

    ``b``: examples only the model gets right, ``c``: only the baseline. Under "equally
    accurate" each discordant example is a fair coin, so p is the two-sided binomial test of
    b successes in b + c trials (1.0 when there is no discordant pair).
    """
    correct = np.asarray(correct, dtype=bool)
    baseline_correct = np.asarray(baseline_correct, dtype=bool)
    b = int((correct & ~baseline_correct).sum())
    c = int((~correct & baseline_correct).sum())
    p_value = float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return {"b": b, "c": c, "p_value": p_value, "alpha": alpha, "significant": p_value < alpha}
