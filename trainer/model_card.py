"""The model card: ``JOB/eval/model_card.md`` (Hugging Face's format) and ``model_card.json``.

Written by ``evaluate`` after ``metrics.json``, from files the job and the pipeline wrote and
nothing else: ``eval/metrics.json`` (figures, 95% intervals, errors per class and group, the
threshold), ``training_config.json`` (preset, hyperparameters, recipe), ``best_hyperparameters.json``
(the tuner's choice), ``model.keras`` (the parameter count), the export's serving config (how to
call it), ``label_issues_summary.json`` (find_label_issues), and the data directory's
``manifest.json`` (counts, audit, fingerprint) and ``croissant.json``. A section whose file is
missing says so instead of guessing.

The Markdown starts with YAML metadata whose ``model-index`` holds the metrics, as the
Hugging Face Hub reads it; the JSON holds the same card as data.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from pipelines import features
from trainer import architectures, atomic, checkpoints, data, job_layout, records

WORST_GROUPS = 5
# How the images are decoded (pipelines/transforms.py: simplejpeg for JPEG, OpenCV
# IMREAD_UNCHANGED otherwise; trainer/export.py: tf.io.decode_image): pixels as stored.
EXIF_HANDLING = (
    "EXIF orientation is not applied: the pipeline and the export read pixels as stored, so a photo "
    "that relies on its EXIF tag to stand upright is seen rotated."
)
# metrics.json key -> (model-index type, display name)
_METRICS = {
    "accuracy": ("accuracy", "Accuracy"),
    "precision": ("precision", "Precision"),
    "recall": ("recall", "Recall"),
    "f1": ("f1", "F1"),
    "roc_auc": ("roc_auc", "ROC AUC"),
}


def _read_json(path: str) -> dict[str, Any] | None:
    """The JSON object in ``path``; None (one warning line) when it is missing, unreadable or not an object."""
    value = checkpoints.read_json(path, "model card input")
    if value is not None and not isinstance(value, dict):
        logging.warning("skipping model card input %s: not a JSON object", path)
        return None
    return value


def _per_split_class(manifest: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """The manifest's written examples {split: {label index: n}} by class name."""
    classes = manifest["classes"]
    per_split = {split: data.class_counts(manifest, split) for split in features.SPLITS}
    return {
        split: {str(classes[label]): n for label, n in per_class.items()}
        for split, per_class in per_split.items()
        if per_class
    }


def _audit(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    quality = manifest.get("quality")
    if not quality:
        return None
    return {
        "flagged_images": quality["flagged_images"],
        "outliers": quality["outliers"],
        "duplicate_groups": quality["duplicate_groups"],
        "duplicate_images": quality["duplicate_images"],
        "leakage_groups": quality["leakage"]["count"],
        "dedupe": quality["dedupe"],
    }


def _usage(job_dir: str, serving: Mapping[str, Any] | None) -> dict[str, Any]:
    """How to call the export, from its serving config (None: no export to call)."""
    export_dir = posixpath.join(job_dir, job_layout.EXPORT_DIR)
    if serving is None:
        return {"export_dir": None}
    inputs = list(serving.get("inputs", [architectures.IMAGE_INPUT]))
    arguments = []
    if architectures.IMAGE_INPUT in inputs:
        arguments.append("image_bytes=tf.constant([open('photo.jpg', 'rb').read()])")
    if architectures.VECTOR_INPUT in inputs:
        arguments.append(
            f"{features.VECTOR_KEY}=tf.constant([[...]], tf.float32)  # {len(serving['vector_columns'])} values"
        )
    command = f"python -m trainer.task predict --job_dir {job_dir} --input photo.jpg folder/"
    if architectures.VECTOR_INPUT in inputs:
        command += " --vectors_csv labels.csv"
    return {
        "export_dir": export_dir,
        "inputs": inputs,
        "command": command,
        "python": [
            "import tensorflow as tf",
            f"serve = tf.saved_model.load({export_dir!r}).signatures['serving_default']",
            f"out = serve({', '.join(arguments)})",
            "out['probability'], out['class'], out['label']  # P(class 1), 0/1, class name",
        ],
    }


def _limitations(metrics: Mapping[str, Any], audit: Mapping[str, Any] | None, counts: Mapping[str, Any]) -> list[str]:
    lines = []
    if audit:
        if audit["flagged_images"]:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(audit["outliers"].items()))
            lines.append(f"The data audit flagged {audit['flagged_images']} images as quality outliers ({reasons}).")
        if audit["duplicate_groups"]:
            lines.append(
                f"{audit['duplicate_groups']} groups of duplicate images ({audit['duplicate_images']} images, "
                f"--dedupe {audit['dedupe']}); {audit['leakage_groups']} of them span two splits (leakage)."
            )
    if counts.get("dead_letter_total"):
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(counts["dead_letter"].items()))
        lines.append(f"{counts['dead_letter_total']} input images were not used ({reasons}).")
    lines.append(EXIF_HANDLING)
    groups = metrics.get("errors_per_group")
    if groups:
        worst = [g for g in groups[:WORST_GROUPS] if g["errors"]]
        if worst:
            lines.append(
                "Groups with the highest error on "
                + metrics["split"]
                + ": "
                + ", ".join(f"{g['group']} {g['errors']}/{g['count']}" for g in worst)
                + "."
            )
    if metrics.get("same_data_as_training") is False:
        lines.append("The evaluated data is not the data the model was trained with (fingerprints differ).")
    if metrics.get("num_examples", 0) < 100:
        lines.append(f"Evaluated on {metrics['num_examples']} examples only: see the width of the 95% intervals.")
    return lines


def build_card(
    *,
    job_dir: str,
    data_dir: str,
    metrics: Mapping[str, Any],
    manifest: Mapping[str, Any],
    config: Mapping[str, Any] | None,
    parameters: int,
    best: Mapping[str, Any] | None = None,
    label_issues: Mapping[str, Any] | None = None,
    croissant: Mapping[str, Any] | None = None,
    serving: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The card as data, from the contents of the job's and the data's files."""
    croissant_path = posixpath.join(data_dir, features.CROISSANT_FILE) if croissant else None
    dataset_name = croissant["name"] if croissant else posixpath.basename(data_dir.rstrip("/"))
    audit = _audit(manifest)
    return {
        "model": {
            "preset": (config or {}).get("model"),
            "hyperparameters": (config or {}).get("hyperparameters"),
            "recipe": (config or {}).get("recipe"),
            "seed": (config or {}).get("seed"),
            "class_weight": (config or {}).get("class_weight"),
            "parameters": parameters,
            "tuning": None if best is None else {k: best.get(k) for k in ("tuner", "trial_id", "score")},
            "job_dir": job_dir,
        },
        "data": {
            "name": dataset_name,
            "data_dir": data_dir,
            "croissant": croissant_path,
            "fingerprint": metrics[records.DATA_FINGERPRINT_KEY],
            "training_data_fingerprint": metrics.get("training_data_fingerprint"),
            "classes": list(manifest["classes"]),
            "image": manifest["image"],
            "written": _per_split_class(manifest),
            "dead_letters": manifest["counts"].get("dead_letter", {}),
            "audit": audit,
            "label_issues": None
            if label_issues is None
            else {k: label_issues.get(k) for k in ("num_examples", "num_issues", "classes", "folds", "model")},
        },
        "evaluation": {
            "split": metrics["split"],
            "num_examples": metrics["num_examples"],
            "threshold": metrics["threshold"],
            "metrics": {key: metrics[key] for key in _METRICS},
            "ci95": {key: metrics.get(f"{key}_ci95") for key in _METRICS},
            "loss": metrics["loss"],
            "errors_per_class": metrics["errors_per_class"],
            "errors_per_group": metrics.get("errors_per_group", [])[:WORST_GROUPS],
            "groups": len(metrics.get("errors_per_group", [])),
            "misclassified": len(metrics["misclassified"]),
        },
        "usage": _usage(job_dir, serving),
        "limitations": _limitations(metrics, audit, manifest["counts"]),
    }


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """A small YAML emitter for the front matter (strings JSON-quoted, which YAML reads as is)."""
    pad = " " * indent
    if isinstance(value, Mapping):
        lines = []
        for key, item in value.items():
            if isinstance(item, (Mapping, list)) and item:
                lines += [f"{pad}{key}:", *_yaml(item, indent + 2)]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return lines
    lines = []
    for item in value:
        if isinstance(item, Mapping):
            first, *rest = _yaml(item, indent + 2)
            lines += [f"{pad}- {first.lstrip()}", *rest]
        else:
            lines.append(f"{pad}- {_scalar(item)}")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, (bool, list, Mapping)) or value is None:
        return json.dumps(value)  # true, null, and the empty [] and {}
    if isinstance(value, (int, float)):
        return "null" if value != value else repr(value)  # NaN (e.g. roc_auc of one class): null
    return json.dumps(str(value), ensure_ascii=False)


def front_matter(card: Mapping[str, Any]) -> dict[str, Any]:
    """Hugging Face's model card metadata: the model-index holds the evaluation's metrics."""
    evaluation = card["evaluation"]
    return {
        "library_name": "keras",
        "pipeline_tag": "image-classification",
        "tags": ["facepipe", "image-classification", str(card["model"]["preset"])],
        "model-index": [
            {
                "name": f"facepipe-{card['model']['preset']}",
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {
                            "name": card["data"]["name"],
                            "type": card["data"]["name"],
                            "split": evaluation["split"],
                            "revision": card["data"]["fingerprint"],
                        },
                        "metrics": [
                            {"type": kind, "value": evaluation["metrics"][key], "name": name}
                            for key, (kind, name) in _METRICS.items()
                        ],
                    }
                ],
            }
        ],
    }


def _interval(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def render_markdown(card: Mapping[str, Any]) -> str:
    """model_card.md: YAML front matter, then the card in prose and tables."""
    model, data_, evaluation, usage = card["model"], card["data"], card["evaluation"], card["usage"]
    lines = ["---", *_yaml(front_matter(card)), "---", ""]
    lines += [f"# {model['preset']} on {data_['name']}", ""]
    lines += [
        f"A binary image classifier ({' / '.join(data_['classes'])}) trained by facepipe; every figure below "
        f"comes from the files of the job ({model['job_dir']}) and of its data ({data_['data_dir']}).",
        "",
        "## Model",
        "",
        f"- preset: `{model['preset']}`, {model['parameters']:,} parameters (model.keras)",
        f"- seed {model['seed']}, class weights {model['class_weight'] or 'none'}",
    ]
    if model["tuning"] and model["tuning"]["trial_id"] is None:  # A space of one point: no trial ran.
        lines.append(
            "- hyperparameters: tune's search space held one point, so no trial ran (best_hyperparameters.json)"
        )
    elif model["tuning"]:
        lines.append(f"- hyperparameters chosen by the {model['tuning']['tuner']} tuner (best_hyperparameters.json)")
    lines += ["", "| hyperparameter | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted((model["hyperparameters"] or {}).items())]
    if model["recipe"]:
        lines += [f"| recipe: {k} | {v} |" for k, v in sorted(model["recipe"].items())]
    lines += ["", "## Data", ""]
    image = data_["image"]
    lines += [
        f"- data directory: {data_['data_dir']} ({image['width']}x{image['height']} {image['color_mode']})",
        f"- data fingerprint: `{data_['fingerprint']}`"
        + (
            ""
            if data_["training_data_fingerprint"] in (None, data_["fingerprint"])
            else f" (trained on `{data_['training_data_fingerprint']}`)"
        ),
        f"- dataset card: {data_['croissant'] or 'none (preprocessed before croissant.json)'}",
        "",
        "| split | " + " | ".join(data_["classes"]) + " |",
        "|---|" + "---|" * len(data_["classes"]),
    ]
    lines += [
        f"| {split} | " + " | ".join(str(per_class.get(c, 0)) for c in data_["classes"]) + " |"
        for split, per_class in data_["written"].items()
    ]
    if data_["audit"]:
        audit = data_["audit"]
        lines += [
            "",
            f"Audit: {audit['flagged_images']} quality outliers, {audit['duplicate_groups']} duplicate groups, "
            f"{audit['leakage_groups']} across splits.",
        ]
    if data_["label_issues"]:
        issues = data_["label_issues"]
        lines.append(
            f"Label issues (find_label_issues, {issues['folds']} folds of {issues['model']}): "
            f"{issues['num_issues']} likely wrong labels of {issues['num_examples']}."
        )
    lines += ["", f"## Evaluation ({evaluation['split']}, {evaluation['num_examples']} examples)", ""]
    lines += [
        f"Threshold {evaluation['threshold']} on P({data_['classes'][-1]}); 95% intervals in brackets "
        "(Wilson; DeLong for ROC AUC).",
        "",
        "| metric | value [95% interval] |",
        "|---|---|",
    ]
    lines += [
        f"| {name} | {_interval(evaluation['metrics'][key], evaluation['ci95'][key])} |"
        for key, (_, name) in _METRICS.items()
    ]
    lines += [
        f"| loss | {evaluation['loss']:.4f} |",
        "",
        "| class | count | errors | error rate [95%] |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {row['class']} | {row['count']} | {row['errors']} | {_interval(row['error_rate'], row['error_rate_ci95'])} |"
        for row in evaluation["errors_per_class"]
    ]
    if evaluation["errors_per_group"]:
        lines += ["", f"Groups with the most errors (of {evaluation['groups']}):", "", "| group | count | errors |"]
        lines += ["|---|---|---|"]
        lines += [f"| {g['group']} | {g['count']} | {g['errors']} |" for g in evaluation["errors_per_group"]]
    lines += ["", f"{evaluation['misclassified']} misclassified: eval/metrics.json lists them with their files.", ""]
    lines += ["## How to use", ""]
    if usage["export_dir"]:
        lines += [f"```bash\n{usage['command']}\n```", "", "```python", *usage["python"], "```"]
    else:
        lines.append("No export in the job directory (train writes export/).")
    lines += ["", "## Limitations", "", *(f"- {line}" for line in card["limitations"]), ""]
    return "\n".join(lines)


def write(job_dir: str, data_dir: str, *, parameters: int) -> str:
    """Writes eval/model_card.md and eval/model_card.json from the job's files; returns the .md path.

    ``parameters``: the parameter count of the evaluated model.keras.
    """
    from trainer import export  # The SavedModel's serving config: what the export takes.

    eval_dir = posixpath.join(job_dir, job_layout.EVAL_DIR)
    export_dir = posixpath.join(job_dir, job_layout.EXPORT_DIR)
    serving = export.read_serving_config(export_dir) if tf.io.gfile.exists(export_dir) else None
    card = build_card(
        job_dir=job_dir,
        data_dir=data_dir,
        metrics=_read_json(posixpath.join(eval_dir, job_layout.METRICS_FILE)),
        manifest=_read_json(posixpath.join(data_dir, features.MANIFEST_FILE)),
        config=records.read_config(job_dir),
        parameters=parameters,
        best=_read_json(posixpath.join(job_dir, job_layout.BEST_HPARAMS_FILE)),
        label_issues=_read_json(posixpath.join(job_dir, job_layout.LABEL_ISSUES_SUMMARY)),
        croissant=_read_json(posixpath.join(data_dir, features.CROISSANT_FILE)),
        serving=serving,
    )
    atomic.write(
        posixpath.join(eval_dir, job_layout.MODEL_CARD_JSON), json.dumps(card, indent=2, sort_keys=True) + "\n"
    )
    path = posixpath.join(eval_dir, job_layout.MODEL_CARD_FILE)
    atomic.write(path, render_markdown(card))
    return path
