"""Test-split evaluation: metrics, per-class errors, misclassified examples, plots.

Outputs in job_dir/eval/ (names in trainer/job_layout.py):
  metrics.json              accuracy, loss, precision, recall, f1, roc_auc, confusion
                            matrix, errors per class, misclassified ids + probabilities;
                            95% intervals (<metric>_ci95: Wilson, DeLong for roc_auc);
                            errors per group (when the data has groups); the share of
                            identical outputs and of dead ReLU units (a collapsed model);
                            data lineage (data_fingerprint, same_data_as_training); with
                            --baseline, McNemar's test against another job's predictions;
                            each misclassified example's source file (the examples index)
  predictions.csv           id, label, probability, predicted (every test example)
  training_curves.png       loss and accuracy per epoch (from history.csv)
  confusion_matrix.png
  misclassified.png         a grid of misclassified images, true / predicted / P(class 1)
  model_card.md, .json      the model card (trainer/model_card.py)
The metrics are computed with numpy from predictions.csv's columns, so they can be
recomputed from that file alone.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # No display on training machines; set before pyplot is imported.
import keras
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import tensorflow as tf

from pipelines import features
from trainer import architectures, atomic, data, ensembles, job_layout, model_card, records, statistics

# Keras clips probabilities to [eps, 1 - eps] in its cross-entropy; the same here.
_EPSILON = 1e-7
# A model above either share has collapsed (or is about to): evaluate says so loudly.
MAX_IDENTICAL_OUTPUTS = 0.2
MAX_DEAD_UNITS = 0.5
# Outputs equal to within this count as identical.
IDENTICAL_DECIMALS = 6
# Groups printed with the most errors.
WORST_GROUPS = 5


class BaselineError(ValueError):
    """``--baseline`` names a job that cannot be compared with this one."""


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


def relu_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of ``model`` whose output is a ReLU (those whose units can die): Dense and
    Conv layers with a ReLU activation, and ReLU layers of their own (conv-BN-ReLU blocks)."""
    kinds = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.Activation)
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.ReLU)
        or (isinstance(layer, kinds) and getattr(getattr(layer, "activation", None), "__name__", "") == "relu")
    ]


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


def read_predictions(path: str) -> dict[str, int]:
    """{id: predicted class} from an evaluation's predictions.csv."""
    with tf.io.gfile.GFile(path) as f:
        return {row["id"]: int(row["predicted"]) for row in csv.DictReader(f)}


def read_baseline(baseline_dir: str) -> dict[str, int]:
    """The predictions of the job ``baseline_dir`` (its evaluate output); BaselineError if none."""
    path = tf.io.gfile.join(baseline_dir, job_layout.EVAL_DIR, job_layout.PREDICTIONS_FILE)
    if not tf.io.gfile.exists(path):
        raise BaselineError(f"--baseline {baseline_dir}: no {path}; run evaluate with --job_dir {baseline_dir} first")
    return read_predictions(path)


def compare_with_baseline(
    ids: Sequence[str], labels: np.ndarray, predicted: np.ndarray, baseline: Mapping[str, int], *, baseline_dir: str
) -> dict[str, Any]:
    """Exact McNemar test of this model against the baseline's predictions, paired by id."""
    ids = list(ids)
    if len(set(ids)) != len(ids) or set(ids) != set(baseline):
        raise BaselineError(
            f"--baseline {baseline_dir}: its predictions are for other examples ({len(baseline)} ids, "
            f"{len(set(ids) ^ set(baseline))} not in both); evaluate both jobs on the same data and split"
        )
    baseline_predicted = np.array([baseline[i] for i in ids], dtype=np.int64)
    correct, baseline_correct = predicted == labels, baseline_predicted == labels
    return {
        "job_dir": baseline_dir,
        "accuracy": float(correct.mean()),
        "baseline_accuracy": float(baseline_correct.mean()),
        **statistics.mcnemar_exact(correct, baseline_correct),
    }


def predict_split(
    model: keras.Model, data_dir: data.DataDir, split: str, *, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Ids, labels, P(class 1) and stored pixels of every example of ``split``, in file order.

    Also "unit_max": {layer name: per-unit maximum activation over the split} of every ReLU
    layer (:func:`relu_layers`), from the same forward pass, reduced batch by batch. An
    ensemble (ensembles.average_ensemble) runs member by member, its probability the mean of
    theirs as in the model, and its layers are named "member_K/layer".
    """
    members = ensembles.ensemble_members(model)
    probes = []  # (prefix of the layer names, probe model, its ReLU layers)
    for part in members or [model]:
        probed = relu_layers(part)
        prefix = f"{part.name}/" if members else ""
        probes.append(
            (prefix, keras.Model(part.inputs, [part.outputs[0], *(layer.output for layer in probed)]), probed)
        )
    unit_max: dict[str, np.ndarray] = {}
    ds = data.make_dataset(
        data_dir.path,
        split,
        manifest=data_dir.manifest,
        tft_output=data_dir.tft_output,
        global_batch_size=batch_size,
        training=False,
        with_metadata=True,
        inputs=architectures.input_names(model),
    )
    parts: dict[str, list[np.ndarray]] = {"id": [], "group": [], "label": [], "probability": [], "pixels": []}
    for batch in ds:
        probabilities = []
        for prefix, probe, probed in probes:
            predicted = probe.predict_on_batch(batch["inputs"])
            # A model with one output and no ReLU layer gives a bare array, not a list of one.
            outputs, *activations = predicted if probed else [predicted]
            for layer, activation in zip(probed, activations, strict=True):
                # Units are the last axis (channels_last); a maximum over examples and positions.
                name = prefix + layer.name
                maxima = np.asarray(activation).reshape(-1, activation.shape[-1]).max(axis=0)
                unit_max[name] = np.maximum(unit_max[name], maxima) if name in unit_max else maxima
            probabilities.append(np.asarray(architectures.positive_probability(outputs)))
        parts["probability"].append(np.mean(probabilities, axis=0))
        parts["id"].append(data.texts(batch["id"].numpy()))
        parts["group"].append(data.texts(batch["group"].numpy()))
        parts["label"].append(batch["label"].numpy())
        parts["pixels"].append(batch["pixels"].numpy())
    return {**{k: np.concatenate(v) for k, v in parts.items()}, "unit_max": unit_max}


def errors_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table: class, count, errors, error rate."""
    lines = ["| class | count | errors | error rate |", "|---|---|---|---|"]
    for row in metrics["errors_per_class"]:
        lines.append(f"| {row['class']} | {row['count']} | {row['errors']} | {row['error_rate']:.3f} |")
    return "\n".join(lines)


def _interval(metrics: Mapping[str, Any], key: str) -> str:
    low, high = metrics[f"{key}_ci95"]
    return f"{key} {metrics[key]:.3f} [{low:.3f}, {high:.3f}]"


def summary_lines(metrics: Mapping[str, Any]) -> list[str]:
    """The printed report: metrics with 95% intervals, worst groups, collapse checks, baseline, lineage."""
    lines = [f"{metrics['split']}: {metrics['num_examples']} examples, 95% intervals in brackets"]
    lines += [_interval(metrics, key) for key in ("accuracy", "precision", "recall", "roc_auc")]
    lines.append(f"loss {metrics['loss']:.4f}, f1 {metrics['f1']:.3f}")
    for row in metrics["errors_per_class"]:
        low, high = row["error_rate_ci95"]
        lines.append(
            f"class {row['class']}: {row['errors']}/{row['count']} wrong, error rate {row['error_rate']:.3f} [{low:.3f}, {high:.3f}]"
        )
    if "errors_per_group" in metrics:
        groups = metrics["errors_per_group"]
        worst = ", ".join(f"{r['group'] or '(none)'} {r['errors']}/{r['count']}" for r in groups[:WORST_GROUPS])
        lines.append(f"groups with most errors (of {len(groups)}): {worst}")
    identical = metrics["identical_outputs"]
    lines.append(
        f"identical outputs: {identical['share']:.1%} of the examples give p={identical['most_common_probability']:.6f}"
    )
    for name, row in metrics["dead_units"].items():
        lines.append(f"dead units: layer {name} {row['dead']}/{row['units']} ({row['share']:.0%}) never active")
    lines += collapse_warnings(metrics)
    if "baseline" in metrics:
        b = metrics["baseline"]
        verdict = "significant" if b["significant"] else "not significant"
        lines.append(
            f"baseline {b['job_dir']}: accuracy {b['accuracy']:.3f} vs baseline {b['baseline_accuracy']:.3f}; "
            f"only this model right b={b['b']}, only the baseline right c={b['c']}; exact McNemar p={b['p_value']:.4g}, "
            f"{verdict} at {b['alpha']}"
        )
    if metrics["same_data_as_training"] is False:
        lines.append(
            f"note: the {metrics['split']} data ({metrics['data_fingerprint']:.12s}) is not the data the model was "
            f"trained with ({metrics['training_data_fingerprint']:.12s})"
        )
    return lines


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


def evaluate(
    *, data_dir: data.DataDir, job_dir: str, split: str = "test", batch_size: int = 64, baseline: str | None = None
) -> dict[str, Any]:
    """Evaluates ``job_dir/model.keras`` on ``split``; writes job_dir/eval/.

    ``baseline``: another job directory, already evaluated on the same examples, to test
    this model against (BaselineError when it cannot be).
    """
    if data.split_size(data_dir.manifest, split) == 0:
        raise ValueError(
            f"the {split} split of {data_dir.path} is empty (see its manifest.json counts): nothing to evaluate; "
            "check the splits and labels given to pipelines.preprocess (e.g. unlabelled test ids need overrides)"
        )
    # Read before this job's own predictions.csv is rewritten (the baseline may be this job).
    baseline_predictions = read_baseline(baseline) if baseline is not None else None
    model_path = tf.io.gfile.join(job_dir, job_layout.MODEL_FILE)
    model = keras.saving.load_model(model_path)
    result = predict_split(model, data_dir, split, batch_size=batch_size)
    class_names = [str(c) for c in data_dir.classes]
    ids = [str(i) for i in result["id"]]
    metrics = compute_metrics(
        result["label"],
        result["probability"],
        class_names=class_names,
        ids=ids,
        groups=example_groups(ids, [str(g) for g in result["group"]]),
    )
    wrong_ids = {row["id"] for row in metrics["misclassified"]}
    example_paths = features.read_example_paths(data_dir.path, wrong_ids)  # Empty for data from before the index.
    for row in metrics["misclassified"]:
        row["path"] = example_paths.get(row["id"], "")
    if "errors_per_group" not in metrics:
        logging.info("no groups in %s (preprocessed without --group_by): no errors per group", data_dir.path)
    if baseline_predictions is not None:
        predicted = (result["probability"] >= architectures.THRESHOLD).astype(np.int64)
        metrics["baseline"] = compare_with_baseline(
            ids, result["label"], predicted, baseline_predictions, baseline_dir=baseline
        )
    trained_on = records.read_data_fingerprint(job_dir)
    metrics.update(
        {
            "split": split,
            "model": model_path,
            "data_dir": data_dir.path,
            "identical_outputs": output_collapse(result["probability"]),
            "dead_units": dead_units(result["unit_max"]),
            records.DATA_FINGERPRINT_KEY: data_dir.fingerprint,
            "training_data_fingerprint": trained_on,
            # None: the job does not say what it was trained with (trained before fingerprints).
            "same_data_as_training": None if trained_on is None else trained_on == data_dir.fingerprint,
        }
    )

    out_dir = tf.io.gfile.join(job_dir, job_layout.EVAL_DIR)
    tf.io.gfile.makedirs(out_dir)
    records.write_json(tf.io.gfile.join(out_dir, job_layout.METRICS_FILE), metrics)  # NaN (e.g. roc_auc) -> null
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "label", "probability", "predicted"])
    for id_, label, probability in zip(result["id"], result["label"], result["probability"], strict=True):
        writer.writerow([id_, int(label), repr(float(probability)), int(probability >= architectures.THRESHOLD)])
    atomic.write(tf.io.gfile.join(out_dir, job_layout.PREDICTIONS_FILE), buffer.getvalue())

    if ensembles.ensemble_members(model):
        logging.info(
            "an ensemble: no training curves of its own; each member's are in %s/*/%s",
            tf.io.gfile.join(job_dir, job_layout.MEMBERS_DIR),
            job_layout.HISTORY_FILE,
        )
    else:
        try:
            plot_training_curves(
                records.read_history(job_dir), tf.io.gfile.join(out_dir, job_layout.TRAINING_CURVES_PLOT)
            )
        except (tf.errors.NotFoundError, FileNotFoundError, KeyError):
            logging.warning("no usable %s in %s: training curves not plotted", job_layout.HISTORY_FILE, job_dir)
    plot_confusion_matrix(metrics, tf.io.gfile.join(out_dir, job_layout.CONFUSION_MATRIX_PLOT))
    wrong = np.flatnonzero((result["probability"] >= architectures.THRESHOLD).astype(np.int64) != result["label"])
    plot_misclassified(
        result["pixels"][wrong], metrics["misclassified"], tf.io.gfile.join(out_dir, job_layout.MISCLASSIFIED_PLOT)
    )

    card = model_card.write(job_dir, data_dir.path, parameters=model.count_params())

    print("\n".join(summary_lines(metrics)))
    print(errors_table(metrics))
    print(f"evaluation written to {out_dir}")
    print(f"model card: {card}")
    return metrics
