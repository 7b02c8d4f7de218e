"""Test-split evaluation: the model's forward pass on a split, the files of job_dir/eval/, the report.

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
The metrics (trainer/eval_metrics.py) are computed with numpy from predictions.csv's
columns, so they can be recomputed from that file alone; the plots are trainer/eval_plots.py's.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipelines import features
from trainer import (
    architectures,
    atomic,
    data,
    ensembles,
    eval_metrics,
    eval_plots,
    job_layout,
    model_card,
    records,
    statistics,
)

# Groups printed with the most errors.
WORST_GROUPS = 5


class BaselineError(ValueError):
    """``--baseline`` names a job that cannot be compared with this one."""


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
    ds = data_dir.dataset(
        split,
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
    lines += eval_metrics.collapse_warnings(metrics)
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
    metrics = eval_metrics.compute_metrics(
        result["label"],
        result["probability"],
        class_names=class_names,
        ids=ids,
        groups=eval_metrics.example_groups(ids, [str(g) for g in result["group"]]),
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
            "identical_outputs": eval_metrics.output_collapse(result["probability"]),
            "dead_units": eval_metrics.dead_units(result["unit_max"]),
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
            eval_plots.plot_training_curves(
                records.read_history(job_dir), tf.io.gfile.join(out_dir, job_layout.TRAINING_CURVES_PLOT)
            )
        except (tf.errors.NotFoundError, FileNotFoundError, KeyError):
            logging.warning("no usable %s in %s: training curves not plotted", job_layout.HISTORY_FILE, job_dir)
    eval_plots.plot_confusion_matrix(metrics, tf.io.gfile.join(out_dir, job_layout.CONFUSION_MATRIX_PLOT))
    wrong = np.flatnonzero((result["probability"] >= architectures.THRESHOLD).astype(np.int64) != result["label"])
    eval_plots.plot_misclassified(
        result["pixels"][wrong], metrics["misclassified"], tf.io.gfile.join(out_dir, job_layout.MISCLASSIFIED_PLOT)
    )

    card = model_card.write(job_dir, data_dir.path, parameters=model.count_params())

    print("\n".join(summary_lines(metrics)))
    print(errors_table(metrics))
    print(f"evaluation written to {out_dir}")
    print(f"model card: {card}")
    return metrics
