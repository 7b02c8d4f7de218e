"""Test-split evaluation: metrics, per-class errors, misclassified examples, plots.

Outputs in job_dir/eval/ (names in trainer/job_layout.py):
  metrics.json              accuracy, loss, precision, recall, f1, roc_auc, confusion
                            matrix, errors per class, misclassified ids + probabilities
  predictions.csv           id, label, probability, predicted (every test example)
  training_curves.png       loss and accuracy per epoch (from history.csv)
  confusion_matrix.png
  misclassified.png         a grid of misclassified images, true / predicted / P(class 1)
The metrics are computed with numpy from predictions.csv's columns, so they can be
recomputed from that file alone.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # No display on training machines; set before pyplot is imported.
import keras
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import tensorflow as tf

from trainer import atomic, data, job_layout, models, records

# Keras clips probabilities to [eps, 1 - eps] in its cross-entropy; the same here.
_EPSILON = 1e-7


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
    threshold: float = models.THRESHOLD,
) -> dict[str, Any]:
    """Binary classification metrics of P(class 1) against 0/1 labels."""
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
            {"class": name, "count": count, "errors": errors, "error_rate": errors / count if count else float("nan")}
        )
    wrong = np.flatnonzero(predicted != labels)
    return {
        "num_examples": n,
        "threshold": threshold,
        "accuracy": float((predicted == labels).mean()) if n else float("nan"),
        "loss": float(-np.log(p_true).mean()) if n else float("nan"),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": roc_auc(labels, probabilities),
        "classes": list(class_names),
        "confusion_matrix": confusion.tolist(),
        "errors_per_class": per_class,
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


def predict_split(
    model: keras.Model, data_dir: data.DataDir, split: str, *, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Ids, labels, P(class 1) and stored pixels of every example of ``split``, in file order."""
    ds = data.make_dataset(
        data_dir.path,
        split,
        manifest=data_dir.manifest,
        tft_output=data_dir.tft_output,
        global_batch_size=batch_size,
        training=False,
        with_metadata=True,
    )
    parts: dict[str, list[np.ndarray]] = {"id": [], "label": [], "probability": [], "pixels": []}
    for batch in ds:
        outputs = model.predict_on_batch(batch["image"])
        parts["probability"].append(np.asarray(models.positive_probability(outputs)))
        parts["id"].append(np.char.decode(batch["id"].numpy().astype(bytes), "utf-8"))
        parts["label"].append(batch["label"].numpy())
        parts["pixels"].append(batch["pixels"].numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def errors_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table: class, count, errors, error rate."""
    lines = ["| class | count | errors | error rate |", "|---|---|---|---|"]
    for row in metrics["errors_per_class"]:
        lines.append(f"| {row['class']} | {row['count']} | {row['errors']} | {row['error_rate']:.3f} |")
    return "\n".join(lines)


def _save_figure(fig, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic.write(path, buffer.getvalue())


def plot_training_curves(history: list[dict[str, float]], path: str) -> None:
    """Loss and accuracy per epoch, training and validation."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [int(row["epoch"]) + 1 for row in history]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix in ("", "val_"):
            if history and prefix + metric in history[0]:
                ax.plot(epochs, [row[prefix + metric] for row in history], marker="o", label=prefix + metric)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(metric)
        ax.legend()
    _save_figure(fig, path)


def plot_confusion_matrix(metrics: Mapping[str, Any], path: str) -> None:
    confusion = np.asarray(metrics["confusion_matrix"])
    classes = metrics["classes"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), value in np.ndenumerate(confusion):
        ax.text(j, i, str(value), ha="center", va="center", color="black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    _save_figure(fig, path)


def plot_misclassified(
    pixels: np.ndarray, rows: Sequence[Mapping[str, Any]], path: str, *, max_images: int = 25
) -> None:
    """A grid of misclassified images titled true / predicted / P(class 1)."""
    count = min(len(rows), max_images)
    columns = max(1, min(5, count))
    fig, axes = plt.subplots(
        max(1, math.ceil(count / columns)),
        columns,
        figsize=(2.2 * columns, 2.4 * max(1, math.ceil(count / columns))),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, row in zip(axes.flat, pixels[:count], rows[:count], strict=False):
        ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_title(f"{row['label']} -> {row['predicted']}\np={row['probability']:.2f}", fontsize=8)
    if count == 0:
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    _save_figure(fig, path)


def evaluate(*, data_dir: data.DataDir, job_dir: str, split: str = "test", batch_size: int = 64) -> dict[str, Any]:
    """Evaluates ``job_dir/model.keras`` on ``split``; writes job_dir/eval/."""
    if data.split_size(data_dir.manifest, split) == 0:
        raise ValueError(
            f"the {split} split of {data_dir.path} is empty (see its manifest.json counts): nothing to evaluate; "
            "check the splits and labels given to pipelines.preprocess (e.g. unlabelled test ids need overrides)"
        )
    model_path = tf.io.gfile.join(job_dir, job_layout.MODEL_FILE)
    model = keras.saving.load_model(model_path)
    result = predict_split(model, data_dir, split, batch_size=batch_size)
    class_names = [str(c) for c in data_dir.classes]
    metrics = compute_metrics(result["label"], result["probability"], class_names=class_names, ids=result["id"])
    metrics.update({"split": split, "model": model_path, "data_dir": data_dir.path})

    out_dir = tf.io.gfile.join(job_dir, job_layout.EVAL_DIR)
    tf.io.gfile.makedirs(out_dir)
    records.write_json(tf.io.gfile.join(out_dir, job_layout.METRICS_FILE), metrics)  # NaN (e.g. roc_auc) -> null
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "label", "probability", "predicted"])
    for id_, label, probability in zip(result["id"], result["label"], result["probability"], strict=True):
        writer.writerow([id_, int(label), repr(float(probability)), int(probability >= models.THRESHOLD)])
    atomic.write(tf.io.gfile.join(out_dir, job_layout.PREDICTIONS_FILE), buffer.getvalue())

    try:
        plot_training_curves(records.read_history(job_dir), tf.io.gfile.join(out_dir, job_layout.TRAINING_CURVES_PLOT))
    except (tf.errors.NotFoundError, FileNotFoundError, KeyError):
        logging.warning("no usable %s in %s: training curves not plotted", job_layout.HISTORY_FILE, job_dir)
    plot_confusion_matrix(metrics, tf.io.gfile.join(out_dir, job_layout.CONFUSION_MATRIX_PLOT))
    wrong = np.flatnonzero((result["probability"] >= models.THRESHOLD).astype(np.int64) != result["label"])
    plot_misclassified(
        result["pixels"][wrong], metrics["misclassified"], tf.io.gfile.join(out_dir, job_layout.MISCLASSIFIED_PLOT)
    )

    logging.info(
        "%s: accuracy %.4f, loss %.4f, precision %.4f, recall %.4f, f1 %.4f, roc_auc %.4f",
        split,
        metrics["accuracy"],
        metrics["loss"],
        metrics["precision"],
        metrics["recall"],
        metrics["f1"],
        metrics["roc_auc"],
    )
    print(errors_table(metrics))
    print(f"evaluation written to {out_dir}")
    return metrics
