"""Confident learning: which given labels are likely wrong, from out-of-sample probabilities.

The method of Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in
Dataset Labels" (JAIR 2021), written here in numpy (no cleanlab: it is AGPL). Its input is
``probabilities`` [n, K], each row predicted by a model that never saw that example
(k-fold cross-validation, trainer/folds.py), and ``labels`` [n], the given labels.

1. Thresholds. ``t_j`` = the mean self-confidence ``p(y=j | x)`` over the examples whose
   given label is j: what the model says, on average, about an example of class j. Per
   class, so a class the model is less sure of (the minority, a harder look) still gets
   counted, where one global cut-off would count only the easy class.
2. Confident joint ``C[i][j]``: examples with given label i whose probability of j is at
   least ``t_j``; an example above several thresholds counts once, for the class it is most
   probable in; one above none is not counted (the model has no confident opinion).
3. Calibration: each row of C is scaled to the number of examples given that label, because
   the uncounted examples are assumed to be distributed like the counted ones. The
   off-diagonal share of row i is the estimated noise rate of class i.
4. How many are wrong: the calibrated off-diagonal entries, rounded; which ones (prune by
   noise rate): for each (i, j != i), the ``round(C[i][j])`` examples given label i with the
   largest margin ``p(j) - p(i)``.
5. Ranking: the flagged examples by normalised margin ``p(given) - max p(other)``, lowest
   (most confidently contradicted) first.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from trainer import data, fitting, folds

# The columns of the outputs (README "Finding wrong labels").
LABEL_ISSUES_COLUMNS = ("id", "path", "given_label", "suggested_label", "score", "rank")
SUGGESTED_LABELS_COLUMNS = ("id", "path", "suggested_label", "confidence", "probability", "error")


@dataclasses.dataclass(frozen=True)
class LabelIssues:
    """The result of :func:`find_label_issues`.

    Attributes:
      thresholds: [K] per-class thresholds ``t_j`` (NaN for a class nobody is given).
      confident_joint: [K, K] int counts, rows given label, columns confident label.
      calibrated_joint: [K, K] float, rows summing to the given counts.
      given_counts: [K] examples per given label.
      noise_rates: [K] estimated share of wrong labels per given class.
      issues: indices of the flagged examples, most likely wrong first.
      suggested: [n] the class each flagged example was flagged for (-1 for the others).
      scores: [n] normalised margin ``p(given) - max p(other)`` of every example.
    """

    thresholds: np.ndarray
    confident_joint: np.ndarray
    calibrated_joint: np.ndarray
    given_counts: np.ndarray
    noise_rates: np.ndarray
    issues: np.ndarray
    suggested: np.ndarray
    scores: np.ndarray


def _check(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probabilities.ndim != 2 or labels.shape != probabilities.shape[:1]:
        raise ValueError(f"expected probabilities [n, K] and labels [n], got {probabilities.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probabilities.shape[1]):
        raise ValueError(f"labels must be class indices 0..{probabilities.shape[1] - 1}")
    return probabilities, labels


def per_class_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``t_j`` = mean ``p(j | x)`` over the examples given label j (NaN when there are none)."""
    probabilities, labels = _check(probabilities, labels)
    num_classes = probabilities.shape[1]
    counts = np.bincount(labels, minlength=num_classes)
    sums = np.bincount(labels, weights=probabilities[np.arange(labels.size), labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def confident_joint(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[K, K] counts: given label i (row), confidently class j (column; argmax among classes >= t_j)."""
    probabilities, labels = _check(probabilities, labels)
    num_classes = probabilities.shape[1]
    # NaN thresholds (a class nobody is given) compare False: nothing is confidently that class.
    above = probabilities >= thresholds[np.newaxis, :]
    counted = above.any(axis=1)
    confident = np.where(above, probabilities, -np.inf).argmax(axis=1)
    joint = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(joint, (labels[counted], confident[counted]), 1)
    return joint


def calibrate(joint: np.ndarray, given_counts: np.ndarray) -> np.ndarray:
    """Each row of ``joint`` scaled to sum to its class's given count (an empty row stays zero)."""
    joint = np.asarray(joint, dtype=np.float64)
    row_sums = joint.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = joint / row_sums * np.asarray(given_counts, dtype=np.float64)[:, np.newaxis]
    return np.nan_to_num(scaled, nan=0.0)


def normalized_margin(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``p(given) - max p(other)`` per example, in [-1, 1]: negative when another class wins."""
    probabilities, labels = _check(probabilities, labels)
    rows = np.arange(labels.size)
    given = probabilities[rows, labels]
    others = probabilities.copy()
    others[rows, labels] = -np.inf
    return given - others.max(axis=1)


def find_label_issues(probabilities: np.ndarray, labels: np.ndarray) -> LabelIssues:
    """Confident learning over out-of-sample ``probabilities`` [n, K] and given ``labels`` [n]."""
    probabilities, labels = _check(probabilities, labels)
    num_classes = probabilities.shape[1]
    given_counts = np.bincount(labels, minlength=num_classes)
    thresholds = per_class_thresholds(probabilities, labels)
    joint = confident_joint(probabilities, labels, thresholds)
    calibrated = calibrate(joint, given_counts)
    off_diagonal = calibrated * (1 - np.eye(num_classes))
    with np.errstate(invalid="ignore", divide="ignore"):
        noise_rates = np.nan_to_num(off_diagonal.sum(axis=1) / given_counts, nan=0.0)

    # Prune by noise rate: of the examples given label i, the round(C[i][j]) that class j
    # beats by the largest margin are the ones most likely to be j in truth. Pairs are taken
    # largest first, so that an example wanted by two pairs (K > 2) goes to the larger one.
    suggested = np.full(labels.size, -1, dtype=np.int64)
    pairs = sorted(
        ((i, j) for i in range(num_classes) for j in range(num_classes) if i != j),
        key=lambda pair: (-off_diagonal[pair], pair),
    )
    for i, j in pairs:
        wanted = int(np.rint(off_diagonal[i, j]))
        if wanted == 0:
            continue
        candidates = np.flatnonzero((labels == i) & (suggested < 0))
        margin = probabilities[candidates, j] - probabilities[candidates, i]
        # A stable sort keeps ties in example order, so the result is reproducible.
        chosen = candidates[np.argsort(-margin, kind="stable")[:wanted]]
        suggested[chosen] = j

    scores = normalized_margin(probabilities, labels)
    flagged = np.flatnonzero(suggested >= 0)
    issues = flagged[np.argsort(scores[flagged], kind="stable")]
    return LabelIssues(
        thresholds=thresholds,
        confident_joint=joint,
        calibrated_joint=calibrated,
        given_counts=given_counts,
        noise_rates=noise_rates,
        issues=issues,
        suggested=suggested,
        scores=scores,
    )


# --- The find_label_issues command: cross-validate, find the issues, write them ----------------


def _csv(header: tuple[str, ...] | list[str], rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _float(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.6f}"


def summary(result: LabelIssues, classes: list[Any]) -> dict[str, Any]:
    """label_issues_summary.json: per class, and the thresholds and joints behind them."""
    wrong = np.round(result.calibrated_joint * (1 - np.eye(len(classes)))).sum(axis=1)
    return {
        "num_examples": int(result.given_counts.sum()),
        "num_issues": int(result.issues.size),
        "classes": {
            str(name): {
                "given": int(result.given_counts[c]),
                "estimated_wrong_labels": int(wrong[c]),
                "noise_rate": float(result.noise_rates[c]),
                "threshold": None if np.isnan(result.thresholds[c]) else float(result.thresholds[c]),
            }
            for c, name in enumerate(classes)
        },
        "thresholds": [None if np.isnan(t) else float(t) for t in result.thresholds],
        "confident_joint": result.confident_joint.tolist(),
        "calibrated_confident_joint": np.round(result.calibrated_joint, 3).tolist(),
        "about": "rows: given label, columns: the class the out-of-fold model is confident of (>= its threshold)",
    }


def check_cross_validatable(data_dir: data.DataDir, num_folds: int) -> None:
    """Refuses, with one line, data that cannot be cross-validated into ``num_folds`` folds.

    Confident learning compares classes: one class has nothing to compare (errors.DataError).
    Every fold needs an example of its own (errors.UsageError for ``--folds``).
    """
    from pipelines import features
    from trainer import data, errors

    written = [data.class_counts(data_dir.manifest, split) for split in features.SPLITS]
    per_class = [sum(split.get(i, 0) for split in written) for i in range(len(data_dir.classes))]
    present = [str(name) for name, n in zip(data_dir.classes, per_class, strict=True) if n]
    if len(present) < 2:
        only = f"every labelled example is of class {present[0]!r}" if present else "it has no labelled example"
        raise errors.DataError(
            f"--data_dir {data_dir.path}: {only}; find_label_issues needs examples of at least two classes"
        )
    if num_folds > sum(per_class):
        raise errors.UsageError(
            f"--folds {num_folds}: more than the {sum(per_class)} labelled examples of --data_dir; "
            f"pass at most {sum(per_class)}"
        )


def run(run: fitting.Run, *, job_dir: str, num_folds: int) -> LabelIssues:
    """Cross-validates ``run`` (folds.cross_validate) over every labelled example; writes the outputs under ``job_dir``."""
    from pipelines import features
    from trainer import folds as folds_module  # TensorFlow: only for the command, not the algorithm.
    from trainer import job_layout

    data_dir = run.data_dir
    balance = data_dir.manifest.get("options", {}).get("balance")
    if balance not in (None, "none"):
        logging.warning(
            "%s was preprocessed with --balance %s: the balanced-out images are not scored "
            "(preprocess with --balance none to check every label)",
            data_dir.path,
            balance,
        )
    cv = folds_module.cross_validate(run, job_dir=job_dir, num_folds=num_folds)
    classes = [str(c) for c in data_dir.classes]
    result = find_label_issues(cv.probabilities, cv.examples.labels)
    paths = features.read_example_paths(data_dir.path)
    write_outputs(job_dir, cv, result, classes, model=run.preset.name, num_folds=num_folds, paths=paths)
    print(
        f"{result.issues.size} likely wrong labels of {cv.examples.ids.size} "
        f"({', '.join(f'{c}: noise {r:.1%}' for c, r in zip(classes, result.noise_rates, strict=True))}) "
        f"in {job_dir}/{job_layout.LABEL_ISSUES_CSV}"
    )
    return result


def write_outputs(
    job_dir: str,
    cv: folds.CrossValidation,
    result: LabelIssues,
    classes: list[str],
    *,
    model: str,
    num_folds: int,
    paths: Mapping[str, str],
) -> None:
    """label_issues.csv, label_issues_summary.json, oof_probabilities.csv, suggested_labels.csv.

    ``paths``: {id: source file} of the examples index (empty for data preprocessed before it).
    """
    import tensorflow as tf

    from trainer import atomic, job_layout

    def path_in_job(name: str) -> str:
        return tf.io.gfile.join(job_dir, name)

    ids, labels, probabilities = cv.examples.ids, cv.examples.labels, cv.probabilities
    issue_rows = (
        (
            ids[i],
            paths.get(ids[i], ""),
            classes[labels[i]],
            classes[result.suggested[i]],
            f"{result.scores[i]:.6f}",
            rank,
        )
        for rank, i in enumerate(result.issues, start=1)
    )
    atomic.write(path_in_job(job_layout.LABEL_ISSUES_CSV), _csv(LABEL_ISSUES_COLUMNS, issue_rows))

    # "probability" (P(class 1)) and "label" are the columns of `predict --output`.
    oof_header = ["id", "path", "fold", "given_label", "probability", "label", *(f"p_{c}" for c in classes)]
    oof_rows = (
        (
            ids[i],
            paths.get(ids[i], ""),
            int(cv.folds[i]) + 1,
            classes[labels[i]],
            f"{probabilities[i, -1]:.6f}",
            classes[int(np.argmax(probabilities[i]))],
            *(f"{p:.6f}" for p in probabilities[i]),
        )
        for i in range(ids.size)
    )
    atomic.write(path_in_job(job_layout.OOF_PROBABILITIES_CSV), _csv(oof_header, oof_rows))

    report = summary(result, classes)
    report.update(
        model=model, folds=num_folds, hyperparameters=cv.hyperparameters, unlabelled=int(cv.unlabelled_ids.size)
    )
    atomic.write(path_in_job(job_layout.LABEL_ISSUES_SUMMARY), json.dumps(report, indent=2) + "\n")

    unlabelled = cv.unlabelled_probabilities
    suggested_rows = (
        (
            cv.unlabelled_ids[i],
            cv.unlabelled_paths[i],
            "" if cv.unlabelled_errors[i] else classes[int(np.argmax(unlabelled[i]))],
            "" if cv.unlabelled_errors[i] else _float(unlabelled[i].max()),
            "" if cv.unlabelled_errors[i] else _float(unlabelled[i, -1]),
            cv.unlabelled_errors[i],
        )
        for i in range(cv.unlabelled_ids.size)
    )
    atomic.write(path_in_job(job_layout.SUGGESTED_LABELS_CSV), _csv(SUGGESTED_LABELS_COLUMNS, suggested_rows))
