"""The evaluation's plots, as PNG files written whole (trainer/atomic.py).

training_curves.png (loss and accuracy per epoch), confusion_matrix.png, misclassified.png
(a grid of the misclassified images); their names are in trainer/job_layout.py.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # No display on training machines; set before pyplot is imported.
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

from trainer import atomic


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
