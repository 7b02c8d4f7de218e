"""The evaluation's figures, from labels and P(class 1) alone (numpy; the maths in statistics.py).

Binary classification metrics with 95% intervals (Wilson; DeLong for roc_auc), errors per
class and per group, the misclassified examples, and the signs of a collapsed model: the
share of identical outputs and the ReLU units never active. trainer/evaluation.py computes
them on a split and writes them to eval/metrics.json.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trainer import architectures, statistics

# Keras clips probabilities to [eps, 1 - eps] in its cross-entropy; the same here.
_EPSILON = 1e-7
# A model above either share has collapsed (or is about to): evaluate says so loudly.
MAX_IDENTICAL_OUTPUTS = 0.2
MAX_DEAD_UNITS = 0.5
# Outputs equal to within this count as identical.
IDENTICAL_DECIMALS = 6


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count half."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U from average ranks (ties get the mean of their ranks).
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def compute_metrics(
    labels: Sequence[int],
    probabilities: Sequence[float],
    *,
    class_names: Sequence[str],
    ids: Sequence[str] | None = None,
    threshold: float = architectures.THRESHOLD,
    groups: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Binary classification metrics of P(class 1) against 0/1 labels, with 95% intervals.

    ``groups`` ({id: group}, e.g. the subject) adds errors per group.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(labels))]
    predicted = (probabilities >= threshold).astype(np.int64)
    n = len(labels)
    confusion = np.zeros((2, 2), dtype=np.int64)  # [true, predicted]
    np.add.at(confusion, (labels, predicted), 1)
    tp, fp, fn = confusion[1, 1], confusion[0, 1], confusion[1, 0]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    p_true = np.clip(np.where(labels == 1, probabilities, 1.0 - probabilities), _EPSILON, 1.0 - _EPSILON)
    per_class = []
    for index, name in enumerate(class_names):
        count = int((labels == index).sum())
        errors = int(((labels == index) & (predicted != index)).sum())
        per_class.append(
            {
                "class": name,
                "count": count,
                "errors": errors,
                "error_rate": errors / count if count else float("nan"),
                "error_rate_ci95": list(statistics.wilson_interval(errors, count)),
            }
        )
    wrong = np.flatnonzero(predicted != labels)
    correct = int((predicted == labels).sum())
    group_rows = {} if groups is None else {"errors_per_group": errors_per_group(ids, predicted != labels, groups)}
    return {
        "num_examples": n,
        "threshold": threshold,
        "accuracy": float((predicted == labels).mean()) if n else float("nan"),
        "accuracy_ci95": list(statistics.wilson_interval(correct, n)),
        "loss": float(-np.log(p_true).mean()) if n else float("nan"),
        "precision": float(precision),
        "precision_ci95": list(statistics.wilson_interval(int(tp), int(tp + fp))),
        "recall": float(recall),
        "recall_ci95": list(statistics.wilson_interval(int(tp), int(tp + fn))),
        "f1": float(f1),
        "roc_auc": roc_auc(labels, probabilities),
        "roc_auc_ci95": list(statistics.auc_interval(labels, probabilities)),
        "classes": list(class_names),
        "confusion_matrix": confusion.tolist(),
        "errors_per_class": per_class,
        **group_rows,
        "misclassified": [
            {
                "id": ids[i],
                "label": class_names[labels[i]],
                "predicted": class_names[predicted[i]],
                "probability": float(probabilities[i]),
            }
            for i in wrong
        ],
    }


def errors_per_group(ids: Sequence[str], wrong: np.ndarray, groups: Mapping[str, str]) -> list[dict[str, Any]]:
    """Count, errors and error rate per group, most errors first (ids without a group: "")."""
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for id_, is_wrong in zip(ids, wrong, strict=True):
        group = groups.get(id_, "")
        counts[group] += 1
        errors[group] += int(is_wrong)
    rows = [{"group": g, "count": counts[g], "errors": errors[g], "error_rate": errors[g] / counts[g]} for g in counts]
    return sorted(rows, key=lambda r: (-r["errors"], -r["error_rate"], r["group"]))


def example_groups(ids: Sequence[str], groups: Sequence[str]) -> dict[str, str] | None:
    """{id: group} from the examples' group feature, or None when there are no groups to
    report: every example its own group (no --group_by), or shards from before the group."""
    if all(group in ("", id_) for id_, group in zip(ids, groups, strict=True)):
        return None
    return dict(zip(ids, groups, strict=True))


def output_collapse(probabilities: np.ndarray) -> dict[str, Any]:
    """The most common output (rounded to 1e-6) and the share of examples that give it."""
    values, counts = np.unique(np.round(np.asarray(probabilities, np.float64), IDENTICAL_DECIMALS), return_counts=True)
    if not len(values):
        return {"most_common_probability": float("nan"), "share": float("nan")}
    top = int(np.argmax(counts))
    return {"most_common_probability": float(values[top]), "share": float(counts[top] / counts.sum())}


def dead_units(unit_max: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per layer: units, units never active (max activation <= 0 on every example), their share."""
    out = {}
    for name, maxima in unit_max.items():
        dead = int((maxima <= 0).sum())
        out[name] = {"units": int(maxima.size), "dead": dead, "share": dead / maxima.size if maxima.size else 0.0}
    return out


def collapse_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """WARNING lines for identical outputs and dead layers above the thresholds."""
    lines = []
    share = metrics["identical_outputs"]["share"]
    if share > MAX_IDENTICAL_OUTPUTS:
        lines.append(
            f"WARNING: {share:.0%} of the test outputs are identical (p={metrics['identical_outputs']['most_common_probability']:.6f}): "
            "the model may have collapsed to a constant; do not ship it without a look"
        )
    for name, row in metrics["dead_units"].items():
        if row["share"] > MAX_DEAD_UNITS:
            lines.append(
                f"WARNING: layer {name}: {row['dead']} of {row['units']} ReLU units ({row['share']:.0%}) "
                "are never active on the test set"
            )
    return lines
