"""Trainer preflight: check a training or tuning job before paying for a cloud run.

    python -m trainer.task preflight --data_dir DATA --job_dir JOB [--tpu NAME] [--model M]
        [--strategy S] [--tuner grid] [--overwrite]

Checks what commonly fails on Cloud TPU or a multi-worker cluster — data and job paths the
TPU workers cannot read, fewer shards than input pipelines, a missing manifest or
tf.Transform output, a manifest that disagrees with the model preset, a strategy without
its TPU or TF_CONFIG, a tuning project that would be overwritten — and says exactly what to
fix. Exits 1 when any check fails. Reads the manifest and lists files only: it starts no
strategy and trains nothing (a few milliseconds to build the model on the manifest shape).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from pipelines import features
from pipelines.findings import Finding
from trainer import data, distribute, job_layout, models, tuning


def _is_gcs(path: str) -> bool:
    return path.startswith("gs://")


def check_paths(*, data_dir: str, job_dir: str, tpu: str | None) -> list[Finding]:
    """With a TPU, data and job paths must be gs://: the TPU hosts read and write them."""
    if not tpu:
        return [Finding(True, "no TPU: local or gs:// paths are fine")]
    findings = []
    fixes = {
        "--data_dir": f"copy it to a bucket in the TPU's region (gsutil -m cp -r {data_dir} gs://BUCKET/data) "
        "and pass --data_dir gs://BUCKET/data",
        "--job_dir": "pass --job_dir gs://BUCKET/JOB (checkpoints and the export are written from the TPU hosts)",
    }
    for flag, path in (("--data_dir", data_dir), ("--job_dir", job_dir)):
        if _is_gcs(path):
            findings.append(Finding(True, f"{flag} {path} is on GCS, reachable from TPU {tpu!r}"))
        else:
            findings.append(
                Finding(
                    False,
                    (
                        f"{flag} {path} is not a gs:// path: TPU {tpu!r} reads and writes through its own hosts, "
                        f"which cannot see this machine's files; {fixes[flag]}"
                    ),
                )
            )
    return findings


def check_strategy(*, strategy: str, tpu: str | None) -> tuple[list[Finding], int]:
    """The strategy's prerequisites, and how many input pipelines (workers) will read the data."""
    workers = distribute.tf_config_workers()
    if strategy == "tpu" and not tpu:
        return [Finding(False, "--strategy tpu needs --tpu NAME (or the TPU_NAME environment variable)")], 1
    if strategy == "multi_worker" and workers < 1:
        return [
            Finding(
                False,
                (
                    "--strategy multi_worker needs TF_CONFIG with the cluster, e.g. "
                    '{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}'
                ),
            )
        ], 1
    if strategy in ("auto", "multi_worker") and workers > 1 and not tpu:
        return [Finding(True, f"TF_CONFIG lists {workers} workers: MultiWorkerMirroredStrategy")], workers
    return [Finding(True, f"--strategy {strategy}" + (f" with TPU {tpu!r}" if tpu else ""))], 1


def check_manifest(data_dir: str) -> tuple[list[Finding], dict[str, Any] | None]:
    """The manifest reads and parses; returns it too (None when it does not)."""
    try:
        manifest = features.read_manifest(data_dir)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as e:
        return [Finding(False, f"{e}")], None
    return [Finding(True, f"manifest {tf.io.gfile.join(data_dir, features.MANIFEST_FILE)}")], manifest


def check_transform(data_dir: str, manifest: Mapping[str, Any]) -> list[Finding]:
    path = tf.io.gfile.join(data_dir, manifest.get("transform_dir", features.TRANSFORM_DIR))
    if tf.io.gfile.isdir(tf.io.gfile.join(path, "transform_fn")):
        return [Finding(True, f"tf.Transform output {path}")]
    return [
        Finding(
            False,
            (
                f"{path}/transform_fn is missing: the trainer and the serving export need the pipeline's tf.Transform "
                f"output. Copy the whole preprocessing output (transform/ included) or re-run pipelines.preprocess"
            ),
        )
    ]


def empty_split(data_dir: str, manifest: Mapping[str, Any], split: str) -> str | None:
    """Why ``split`` cannot be used, when the manifest counts no example in it (else None)."""
    if data.split_size(manifest, split):
        return None
    hint = (
        "label some test images (e.g. the review's overrides for unlabelled test ids, --overrides_csv) "
        if split == "test"
        else "give pipelines.preprocess more labelled images or other --splits / --validation_fraction "
    )
    return (
        f"split {split} is empty in {data_dir} (manifest: 0 examples); {hint}and re-run pipelines.preprocess, "
        f"or point --data_dir at a preprocessing output with {split} examples"
    )


def check_splits(data_dir: str, manifest: Mapping[str, Any]) -> list[Finding]:
    """Every split holds examples: tune and train read train and validation, evaluate test."""
    findings = []
    for split in features.SPLITS:
        problem = empty_split(data_dir, manifest, split)
        findings.append(Finding(problem is None, problem or f"{split}: {data.split_size(manifest, split)} examples"))
    return findings


def check_shards(data_dir: str, manifest: Mapping[str, Any], *, input_pipelines: int) -> list[Finding]:
    """Every split the manifest lists is on disk; training has a shard per input pipeline."""
    findings = []
    for split in ("train", "validation", "test"):
        found = tf.io.gfile.glob(features.shard_pattern(data_dir, split))
        listed = list(manifest.get("shards", {}).get(split, []))
        missing = sorted(set(listed) - {os.path.basename(f) for f in found})
        if missing or not found:
            findings.append(
                Finding(
                    False,
                    (
                        f"{split}: {len(found)} shard(s) in {data_dir}, the manifest lists {len(listed)}"
                        + (
                            f" (missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})"
                            if missing
                            else ""
                        )
                        + ": copy the complete preprocessing output"
                    ),
                )
            )
        elif split == "train" and len(found) < input_pipelines:
            findings.append(
                Finding(
                    False,
                    (
                        f"train has {len(found)} shard(s) for {input_pipelines} workers: each worker cannot read its own "
                        f"files, so every worker decodes the whole split. Re-run pipelines.preprocess with "
                        f"--num_shards {input_pipelines} (or a multiple of it)"
                    ),
                )
            )
        else:
            findings.append(Finding(True, f"{split}: {len(found)} shard(s)"))
    return findings


def missing_vector(preset: models.Preset, data_dir: str, manifest: Mapping[str, Any]) -> str | None:
    """Why ``preset`` cannot train on ``data_dir``: it takes the vector and the data has none (else None)."""
    if preset.needs_vector and not features.vector_length(manifest):
        return f"--model {preset.name} needs a vector: {data_dir} was preprocessed without --numeric_columns"
    return None


def check_model(
    manifest: Mapping[str, Any], model: str | None, data_dir: str
) -> tuple[list[Finding], models.Preset | None]:
    """The preset's colour mode matches the manifest's, and it builds on the manifest's shape."""
    shape = features.image_shape(manifest)
    color_mode = manifest["image"].get("color_mode")
    if color_mode in features.COLOR_MODES and features.COLOR_MODES[color_mode] != shape[2]:
        return [
            Finding(
                False,
                (
                    f"the manifest says color_mode {color_mode!r} but {shape[2]} channel(s): it was edited or is corrupt; "
                    "re-run pipelines.preprocess"
                ),
            )
        ], None
    try:
        preset, why = models.get_preset(
            model, shape=shape, vector_length=features.vector_length(manifest), dataset=manifest.get("dataset")
        )
    except ValueError as e:
        return [Finding(False, str(e))], None
    refusal = missing_vector(preset, data_dir, manifest)
    if refusal:
        return [Finding(False, refusal)], preset
    findings = []
    # channels 0: a preset for any colour mode (face_cnn, the vector presets).
    if preset.channels and preset.channels != shape[2]:
        modes = {channels: mode for mode, channels in features.COLOR_MODES.items()}
        findings.append(
            Finding(
                False,
                (
                    f"--model {preset.name} expects {preset.channels}-channel ({modes.get(preset.channels)}) images, the data "
                    f"is {shape[2]}-channel ({color_mode}): pass --model {models.default_preset(shape)[0].name} "
                    f"or re-run pipelines.preprocess with --color_mode {modes.get(preset.channels)}"
                ),
            )
        )
    try:
        models.build_model(
            models.fixed_hyperparameters(preset),
            preset=preset,
            input_shape=shape,
            num_classes=len(manifest["classes"]),
            vector_length=features.vector_length(manifest),
        )
    except ValueError as e:
        findings.append(
            Finding(
                False,
                (
                    f"{preset.name} cannot be built for {shape[0]}x{shape[1]}x{shape[2]} images with "
                    f"{len(manifest['classes'])} classes ({e}): re-run pipelines.preprocess with a larger --image_size "
                    f"or pick another --model"
                ),
            )
        )
    if not findings:
        chosen = "" if model else f" ({why})"
        findings.append(
            Finding(True, f"{preset.name} builds on {shape[0]}x{shape[1]}x{shape[2]} {color_mode} images{chosen}")
        )
    return findings, preset


def check_tuning_project(job_dir: str, preset: models.Preset, *, tuner: str, overwrite: bool) -> list[Finding]:
    """An existing tuning project is resumed; --overwrite would delete it (workers may never); a
    small space of one point touches no project."""
    project = tf.io.gfile.join(job_dir, job_layout.TUNING_DIR, job_layout.tuning_project(preset.name, tuner))
    if overwrite and tuning.role() == "worker":
        return [
            Finding(
                False,
                (
                    f"KERASTUNER_TUNER_ID={os.environ.get('KERASTUNER_TUNER_ID')} is a worker: only the chief may pass "
                    "--overwrite; drop it on the workers"
                ),
            )
        ]
    if tuning.grid_size(preset.space("small")) == 1:  # A task's settled values (models.DATASET_DEFAULTS).
        return [Finding(True, f"{preset.name}'s small space holds one point on this data: tune trains no trial")]
    if not tf.io.gfile.isdir(project):
        return [Finding(True, f"tuning project {project} is new")]
    trials = tf.io.gfile.glob(tf.io.gfile.join(project, "trial_*", "trial.json"))
    if overwrite:
        return [
            Finding(
                False,
                (
                    f"--overwrite would delete {project} and its {len(trials)} trial(s): drop --overwrite to resume "
                    f"them, or choose a new --job_dir"
                ),
            )
        ]
    return [Finding(True, f"tuning project {project} exists: tune resumes its {len(trials)} trial(s)")]


def preflight(
    *,
    data_dir: str,
    job_dir: str,
    tpu: str | None = None,
    model: str | None = None,
    strategy: str = "auto",
    tuner: str = "grid",
    overwrite: bool = False,
) -> list[Finding]:
    """All the checks, in the order a run would meet them."""
    tpu = tpu or os.environ.get("TPU_NAME")
    findings = check_paths(data_dir=data_dir, job_dir=job_dir, tpu=tpu)
    strategy_findings, input_pipelines = check_strategy(strategy=strategy, tpu=tpu)
    findings += strategy_findings
    manifest_findings, manifest = check_manifest(data_dir)
    findings += manifest_findings
    if manifest is None:
        return findings
    findings += check_transform(data_dir, manifest)
    findings += check_splits(data_dir, manifest)
    findings += check_shards(data_dir, manifest, input_pipelines=input_pipelines)
    model_findings, preset = check_model(manifest, model, data_dir)
    findings += model_findings
    if preset is not None:
        findings += check_tuning_project(job_dir, preset, tuner=tuner, overwrite=overwrite)
    return findings
