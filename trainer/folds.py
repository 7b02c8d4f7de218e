"""k-fold cross-validation over every labelled example of a data dir: out-of-fold probabilities.

Every example of every split (train, validation and test alike) is scored once, by a model
trained on the other folds only. Folds are made of groups, and a group is never in two
folds: the group is the example's ``group`` feature (pipelines/features.py: the
``--group_by`` value, e.g. the person, else the id), as the splits use it. Each fold's model
is fitted as ``train`` fits (``fitting.fit``: the preset, its augmentation, the recipe, class
weights and early stopping) on the other folds' examples of the train and test splits, and
validated (early stopping, precise BatchNormalization) on the other folds' examples of the
validation split: the data's validation split keeps its job, and no example that validates a
fold's model trains it.

Memory: the images stay in the TFRecord shards and are streamed by tf.data; in memory are
the ids, labels and fold numbers (one entry per example) and the probabilities [n, K].
Each fold's predictions are written to ``JOB/cross_validation/fold-K-of-N.csv`` as they come,
and with the fold's settings to ``fold-K-of-N.json``: a rerun (a killed run's, or one that only
changes what is done with the probabilities) reuses every fold whose record says it was trained
with the same settings on the same examples, unless ``--overwrite``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipelines import features
from trainer import atomic, checkpoints, data, export, fitting, job_layout, predict

# Dead-letter reasons of images that have no label (pipelines/labels.py resolve_label).
UNLABELLED_REASONS = ("unlabelled", "no_label_row")
PREDICT_BATCH = 256


@dataclasses.dataclass(frozen=True)
class Examples:
    """The labelled examples of a data dir, in shard order: one entry per example."""

    ids: np.ndarray  # [n] str
    labels: np.ndarray  # [n] int64
    groups: np.ndarray  # [n] str: what a fold keeps together
    splits: np.ndarray  # [n] str: the split whose shards hold it


def assign_folds(groups: np.ndarray, num_folds: int) -> np.ndarray:
    """[n] fold numbers: every group in exactly one fold, the folds' sizes as even as can be.

    Balanced greedy assignment: groups, largest first and ties in the order of a stable hash
    of their name, each go to the fold with the fewest examples so far (ties: the lowest
    fold). The same groups always give the same folds, on any machine, in any input order.
    """
    groups = np.asarray(groups).astype(str)
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    if num_folds < 2:
        raise ValueError(f"need at least 2 folds, got {num_folds}")
    if len(names) < num_folds:
        raise ValueError(f"{len(names)} groups cannot fill {num_folds} folds: use fewer folds")
    digests = [hashlib.sha256(name.encode("utf-8")).hexdigest() for name in names]
    order = sorted(range(len(names)), key=lambda g: (-sizes[g], digests[g]))
    fold_of_group = np.empty(len(names), dtype=np.int64)
    fill = np.zeros(num_folds, dtype=np.int64)
    for g in order:
        fold = int(np.argmin(fill))  # argmin returns the first minimum: the lowest fold.
        fold_of_group[g] = fold
        fill[fold] += sizes[g]
    return fold_of_group[inverse.reshape(-1)]


def read_examples(data_dir: data.DataDir) -> Examples:
    """Ids, labels, groups and splits of every example in every split's shards (pixels are not kept)."""
    keys = (features.ID_KEY, features.LABEL_KEY, features.GROUP_KEY)
    spec = {key: features.raw_feature_spec()[key] for key in keys}
    ids, labels, groups, splits = [], [], [], []
    for split in features.SPLITS:
        files = sorted(tf.io.gfile.glob(features.shard_pattern(data_dir.path, split)))
        if not files:
            continue
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024)
        ds = ds.map(lambda serialized: tf.io.parse_example(serialized, spec))
        for batch in ds.as_numpy_iterator():  # Per-example ids, labels and groups only: small arrays.
            ids.append(data.texts(batch[features.ID_KEY]))
            labels.append(batch[features.LABEL_KEY])
            groups.append(data.texts(batch[features.GROUP_KEY]))
            splits.append(np.full(len(ids[-1]), split))
    if not ids:
        raise FileNotFoundError(f"{data_dir.path}: no shards ({features.SHARD_SUFFIX}) in any split")
    ids_array, labels_array = np.concatenate(ids), np.concatenate(labels).astype(np.int64)
    # Shards written before examples had a group read "": each such example is its own group.
    groups_array = np.where(np.concatenate(groups) == "", ids_array, np.concatenate(groups))
    expected = sum(data.split_size(data_dir.manifest, split) for split in features.SPLITS)
    if len(ids_array) != expected:
        raise ValueError(f"{data_dir.path}: the shards hold {len(ids_array)} examples, the manifest says {expected}")
    unique, counts = np.unique(ids_array, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{data_dir.path}: id {unique[counts > 1][0]!r} is in the shards more than once")
    return Examples(ids_array, labels_array, groups_array, np.concatenate(splits))


def read_unlabelled(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, paths) of the images the pipeline dead-lettered for having no label."""
    ids, paths = [], []
    for path in sorted(tf.io.gfile.glob(tf.io.gfile.join(data_dir, features.DEAD_LETTER_DIR, "*.jsonl"))):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                if not line.strip():
                    continue
                record = json.loads(line)
                if record.get("reason") in UNLABELLED_REASONS and record.get("is_image", True) and record.get("path"):
                    ids.append(str(record.get("id", "")))
                    paths.append(str(record["path"]))
    return np.array(ids, dtype=str), np.array(paths, dtype=str)


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """[B, K] class probabilities from either head: sigmoid [B, 1] -> [1 - p, p]; softmax as is."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.shape[1] == 1:
        return np.concatenate([1.0 - outputs, outputs], axis=1)
    return outputs


def fold_examples(examples: Examples, folds: np.ndarray, fold: int, num_folds: int) -> data.FitExamples:
    """What fold ``fold``'s model fits on: the other folds' examples, validated on their validation split.

    No validation (None) when no other fold holds a validation example.
    """
    others = folds != fold
    validating = others & (examples.splits == "validation")
    training = others & ~validating

    def subset(keep: np.ndarray, what: str) -> data.Subset:
        return data.Subset(f"fold {fold + 1}/{num_folds} {what}", examples.ids[keep], examples.labels[keep])

    return data.FitExamples(
        train=subset(training, "train"), validation=subset(validating, "validation") if validating.any() else None
    )


def pooled_folds(examples: Examples, splits: tuple[str, ...], num_folds: int, name: str) -> list[data.FitExamples]:
    """K-fold over the examples of ``splits`` pooled: fold k validates on its groups' examples and
    trains on the other folds'. Every example validates exactly once; the other splits are never read.
    """
    pooled = np.isin(examples.splits, splits)
    ids, labels = examples.ids[pooled], examples.labels[pooled]
    fold_of = assign_folds(examples.groups[pooled], num_folds)

    def subset(keep: np.ndarray, what: str) -> data.Subset:
        return data.Subset(f"{name} {what}", ids[keep], labels[keep])

    return [
        data.FitExamples(
            train=subset(fold_of != k, f"fold {k + 1}/{num_folds} train"),
            validation=subset(fold_of == k, f"fold {k + 1}/{num_folds} validation"),
        )
        for k in range(num_folds)
    ]


def _predict_unlabelled(
    model: keras.Model, data_dir: data.DataDir, paths: np.ndarray, totals: np.ndarray, errors: np.ndarray
) -> None:
    """Adds this fold's class probabilities of the image files ``paths`` to ``totals``.

    The images go through the export's serving path (decode, resize, colour, tf.Transform),
    the way ``predict`` classifies raw files. A file that cannot be read or decoded gets
    its reason in ``errors`` instead of a probability.
    """
    # Held in a local: the tf.function method keeps only a weak reference to its module.
    module = export.ServingModule(model, data_dir.tft_output, data_dir.manifest)

    def probability(indices: list[int]) -> np.ndarray:
        contents = [tf.io.gfile.GFile(paths[i], "rb").read() for i in indices]
        return module.serve_images(tf.constant(contents))["probability"].numpy()[:, np.newaxis]

    options = data_dir.manifest.get("options", {})
    for i, path in enumerate(paths):
        if not errors[i]:
            try:  # Only the checks: the bytes are read again with their batch.
                predict.read_image(
                    path,
                    max_pixels=options.get("max_pixels", features.MAX_PIXELS),
                    min_side=options.get("min_side", features.MIN_SIDE),
                )
            except predict.Unreadable as e:
                errors[i] = str(e)

    for start in range(0, len(paths), PREDICT_BATCH):
        batch = [i for i in range(start, min(start + PREDICT_BATCH, len(paths))) if not errors[i]]
        try:
            totals[batch] += class_probabilities(probability(batch))
        except (tf.errors.OpError, OSError):
            for i in batch:  # One bad file: the others of its batch are still predicted.
                try:
                    totals[i] += class_probabilities(probability([i]))[0]
                except (tf.errors.OpError, OSError) as e:
                    errors[i] = f"{type(e).__name__}: {getattr(e, 'message', str(e)).splitlines()[0]}"


def _write_fold(path: str, ids: list[np.ndarray], probabilities: list[np.ndarray], classes: list[Any]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", *(f"p_{c}" for c in classes)])
    for batch_ids, batch_probabilities in zip(ids, probabilities, strict=True):
        for example_id, row in zip(batch_ids, batch_probabilities, strict=True):
            writer.writerow([example_id, *(f"{p:.6f}" for p in row)])
    atomic.write(path, buffer.getvalue())


def _ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256("\0".join(ids.tolist()).encode("utf-8")).hexdigest()


def _saved_fold(path: str, settings: dict[str, Any], held_out: np.ndarray, unlabelled: np.ndarray) -> dict | None:
    """Fold ``path``'s record when it was fitted with ``settings`` and scored ``held_out`` and
    ``unlabelled`` (the paths), else None."""
    saved = checkpoints.read_json(path, "cross-validation fold")
    if not isinstance(saved, dict) or saved.get("settings") != settings:
        return None
    if saved.get("held_out") != _ids_digest(held_out) or saved.get("unlabelled") != _ids_digest(unlabelled):
        return None
    return saved


@dataclasses.dataclass(frozen=True)
class CrossValidation:
    """Out-of-fold predictions of every labelled example, and the folds' mean on the unlabelled."""

    examples: Examples
    folds: np.ndarray  # [n]
    probabilities: np.ndarray  # [n, K], each row from the model that did not see it
    unlabelled_ids: np.ndarray  # [m]
    unlabelled_paths: np.ndarray  # [m]
    unlabelled_probabilities: np.ndarray  # [m, K], mean over the folds' models (NaN: unreadable)
    unlabelled_errors: np.ndarray  # [m] why a file has no probability, else ""
    hyperparameters: dict[str, Any]


def cross_validate(run: fitting.Run, *, job_dir: str, num_folds: int) -> CrossValidation:
    """Fits ``run`` once per fold on the other folds and predicts the held-out fold (and the unlabelled).

    Fold K's fit is ``run`` with seed ``run.seed`` + K and the examples of :func:`fold_examples`;
    it writes nothing (``run.job_dir`` None); the predictions go to ``job_dir``. A fold whose
    record there matches is reused, not refitted, unless ``run.overwrite``.
    """
    if run.job_dir is not None:
        raise ValueError("the folds' fits write no job_dir: pass the outputs' folder as job_dir")
    data_dir = run.data_dir
    examples = read_examples(data_dir)
    folds = assign_folds(examples.groups, num_folds)
    classes = data_dir.classes
    row_of = {example_id: row for row, example_id in enumerate(examples.ids)}
    probabilities = np.full((len(examples.ids), len(classes)), np.nan)
    unlabelled_ids, unlabelled_paths = read_unlabelled(data_dir.path)
    totals = np.zeros((len(unlabelled_paths), len(classes)))
    errors = np.full(len(unlabelled_paths), "", dtype=object)
    logging.info(
        "cross-validation: %d labelled examples in %d folds, %d unlabelled images", len(folds), num_folds, len(totals)
    )
    for fold in range(num_folds):
        fold_run = dataclasses.replace(
            run, seed=run.seed + fold, examples=fold_examples(examples, folds, fold, num_folds)
        )
        held_out = data.Subset(
            f"fold {fold + 1}/{num_folds} held out", examples.ids[folds == fold], examples.labels[folds == fold]
        )
        record_path = tf.io.gfile.join(
            job_dir, job_layout.CROSS_VALIDATION_DIR, job_layout.fold_record(fold, num_folds)
        )
        settings = fitting.reuse_settings(fold_run)
        saved = None if run.overwrite else _saved_fold(record_path, settings, held_out.ids, unlabelled_paths)
        if saved is not None:
            logging.info("fold %d/%d: reusing %s (fitted with these settings)", fold + 1, num_folds, record_path)
            probabilities[[row_of[i] for i in held_out.ids]] = np.array(saved["probabilities"], dtype=np.float64)
            totals += np.array(saved["unlabelled_probabilities"], dtype=np.float64).reshape(totals.shape)
            errors[:] = np.where(errors == "", np.array(saved["unlabelled_errors"], dtype=object), errors)
            continue
        logging.info(
            "fold %d/%d: training on %d, validating on %d, scoring %d",
            fold + 1,
            num_folds,
            len(fold_run.examples.train.ids),
            len(fold_run.examples.validation.ids) if fold_run.examples.validation is not None else 0,
            len(held_out.ids),
        )
        model = fitting.fit(fold_run).model
        scored = data_dir.dataset(
            held_out,
            global_batch_size=PREDICT_BATCH,
            training=False,
            with_metadata=True,
        )
        fold_ids, fold_probabilities = [], []
        for batch in scored:
            batch_ids = data.texts(batch["id"].numpy())
            batch_probabilities = class_probabilities(model.predict_on_batch(batch["image"]))
            probabilities[[row_of[i] for i in batch_ids]] = batch_probabilities
            fold_ids.append(batch_ids)
            fold_probabilities.append(batch_probabilities)
        _write_fold(
            tf.io.gfile.join(job_dir, job_layout.CROSS_VALIDATION_DIR, job_layout.fold_file(fold, num_folds)),
            fold_ids,
            fold_probabilities,
            classes,
        )
        fold_totals = np.zeros_like(totals)
        if len(totals):
            _predict_unlabelled(model, data_dir, unlabelled_paths, fold_totals, errors)
        totals += fold_totals
        record = {
            "settings": settings,
            "held_out": _ids_digest(held_out.ids),
            "unlabelled": _ids_digest(unlabelled_paths),
            "probabilities": probabilities[[row_of[i] for i in held_out.ids]].tolist(),
            "unlabelled_probabilities": fold_totals.tolist(),
            "unlabelled_errors": errors.tolist(),
        }
        atomic.write(record_path, json.dumps(record))
    missing = np.isnan(probabilities).any(axis=1)
    if missing.any():
        raise RuntimeError(
            f"{int(missing.sum())} examples got no out-of-fold prediction (first: {examples.ids[missing][0]})"
        )
    unlabelled_probabilities = totals / num_folds
    unlabelled_probabilities[errors != ""] = np.nan
    return CrossValidation(
        examples=examples,
        folds=folds,
        probabilities=probabilities,
        unlabelled_ids=unlabelled_ids,
        unlabelled_paths=unlabelled_paths,
        unlabelled_probabilities=unlabelled_probabilities,
        unlabelled_errors=errors.astype(str),
        hyperparameters=dict(run.hp.values),
    )
