"""k-fold cross-validation over every labelled example of a data dir: out-of-fold probabilities.

Every example of every split (train, validation and test alike) is scored once, by a model
trained on the other folds only. Folds are made of groups, and a group is never in two
folds: the group is the example's ``group`` feature (pipelines/features.py: the
``--group_by`` value, e.g. the person, else the id), as the splits use it. Models are the
preset's own (``models.build_model``, as ``train`` builds them), trained with its augmentation
and the shared recipe for its epochs (no early stopping: there is no validation split inside a
fold).

Memory: the images stay in the TFRecord shards and are streamed by tf.data; in memory are
the ids, labels and fold numbers (one entry per example) and the probabilities [n, K].
Each fold's predictions are written to ``JOB/cross_validation/fold-K-of-N.csv`` as they come.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import posixpath
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipelines import features
from trainer import batch_norm, data, export, job_layout, models, predict

# Dead-letter reasons of images that have no label (pipelines/labels.py resolve_label).
UNLABELLED_REASONS = ("unlabelled", "no_label_row")
PREDICT_BATCH = 256


@dataclasses.dataclass(frozen=True)
class Examples:
    """The labelled examples of a data dir, in shard order: one entry per example."""

    files: list[str]  # Every shard of every split.
    ids: np.ndarray  # [n] str
    labels: np.ndarray  # [n] int64
    groups: np.ndarray  # [n] str: what a fold keeps together


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
    """Ids and labels of every example in every split's shards (pixels are not kept)."""
    files = []
    for split in features.SPLITS:
        files += sorted(tf.io.gfile.glob(features.shard_pattern(data_dir.path, split)))
    if not files:
        raise FileNotFoundError(f"{data_dir.path}: no shards ({features.SHARD_SUFFIX}) in any split")
    keys = (features.ID_KEY, features.LABEL_KEY, features.GROUP_KEY)
    spec = {key: features.raw_feature_spec()[key] for key in keys}
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024)
    ds = ds.map(lambda serialized: tf.io.parse_example(serialized, spec))
    ids, labels, groups = [], [], []
    for batch in ds.as_numpy_iterator():  # Per-example ids, labels and groups only: small arrays.
        ids.append(data.texts(batch[features.ID_KEY]))
        labels.append(batch[features.LABEL_KEY])
        groups.append(data.texts(batch[features.GROUP_KEY]))
    ids_array, labels_array = np.concatenate(ids), np.concatenate(labels).astype(np.int64)
    # Shards written before examples had a group read "": each such example is its own group.
    groups_array = np.where(np.concatenate(groups) == "", ids_array, np.concatenate(groups))
    expected = sum(
        int(n) for split in features.SPLITS for n in data_dir.manifest["counts"]["written"].get(split, {}).values()
    )
    if len(ids_array) != expected:
        raise ValueError(f"{data_dir.path}: the shards hold {len(ids_array)} examples, the manifest says {expected}")
    unique, counts = np.unique(ids_array, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{data_dir.path}: id {unique[counts > 1][0]!r} is in the shards more than once")
    return Examples(files, ids_array, labels_array, groups_array)


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


def _fold_dataset(
    examples: Examples, table: tf.lookup.StaticHashTable, fold: int, *, held_out: bool
) -> tf.data.Dataset:
    """Serialized examples of fold ``fold`` (held_out) or of every other fold."""
    spec = {features.ID_KEY: features.raw_feature_spec()[features.ID_KEY]}

    def keep(serialized):
        in_fold = tf.equal(table.lookup(tf.io.parse_single_example(serialized, spec)[features.ID_KEY]), fold)
        return in_fold if held_out else tf.logical_not(in_fold)

    return tf.data.TFRecordDataset(examples.files, compression_type="GZIP").filter(keep)


def _train_fold(
    examples: Examples,
    table: tf.lookup.StaticHashTable,
    fold: int,
    *,
    data_dir: data.DataDir,
    preset: models.Preset,
    hp,
    num_train: int,
    seed: int,
    verbose: int,
) -> keras.Model:
    batch_size = int(hp.get("batch_size"))
    parse = data.make_parse_and_transform(data_dir.tft_output, image_shape=data_dir.image_shape)
    ds = _fold_dataset(examples, table, fold, held_out=False)
    if num_train * math.prod(data_dir.image_shape) < data.DEFAULT_CACHE_MAX_BYTES:
        ds = ds.cache()  # Small serialized records: decompress and filter once, not per epoch.
    ds = ds.shuffle(max(1, min(num_train, data.MAX_SHUFFLE_BUFFER)), seed=seed, reshuffle_each_iteration=True)
    clean = ds.repeat().batch(batch_size, drop_remainder=True).map(parse, num_parallel_calls=data.AUTOTUNE)
    # As train trains: the preset's augmentation and the shared recipe (warm-up, schedule,
    # clipping, BatchNormalization's statistics re-measured on clean batches at the end).
    ds = data.augment_batches(clean, hp.get("augment"), seed=seed)
    keras.utils.set_random_seed(seed)
    steps = data.steps_per_epoch(num_train, batch_size)
    model = models.build_model(
        hp,
        preset=preset,
        input_shape=data_dir.image_shape,
        num_classes=len(data_dir.classes),
        recipe=models.DEFAULT_RECIPE,
        steps_per_epoch=steps,
    )
    model.fit(
        ds.prefetch(data.AUTOTUNE),
        epochs=int(hp.get("epochs")),
        steps_per_epoch=steps,
        verbose=verbose,
        shuffle=False,  # The dataset shuffles with a seed.
    )
    batch_norm.recalibrate(model, clean, max_batches=steps)
    return model


def _predict_unlabelled(
    model: keras.Model, data_dir: data.DataDir, paths: np.ndarray, totals: np.ndarray, errors: np.ndarray
) -> None:
    """Adds this fold's class probabilities of the image files ``paths`` to ``totals``.

    The images go through the export's serving path (decode, resize, colour, tf.Transform),
    the way ``predict`` classifies raw files, once the pipeline's decoder accepts them
    (:func:`predict.read_image`). A file that cannot be read or is refused gets its reason in
    ``errors`` instead of a probability.
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
    write_atomically(path, buffer.getvalue())


def write_atomically(path: str, text: str) -> None:
    """Writes ``text`` to a temporary name beside ``path``, then renames it over ``path``."""
    tf.io.gfile.makedirs(posixpath.dirname(path))
    temporary = f"{path}.tmp"
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(text)
    tf.io.gfile.rename(temporary, path, overwrite=True)


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


def cross_validate(
    *,
    data_dir: data.DataDir,
    job_dir: str,
    preset: models.Preset,
    hyperparameters: Mapping[str, Any] | None,
    num_folds: int,
    epochs: int | None = None,
    seed: int = 0,
    verbose: int = 2,
) -> CrossValidation:
    """Trains one model per fold on the other folds and predicts the held-out fold (and the unlabelled)."""
    examples = read_examples(data_dir)
    folds = assign_folds(examples.groups, num_folds)
    values = dict(hyperparameters or {})
    if epochs:
        values["epochs"] = int(epochs)
    classes = data_dir.classes
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(examples.ids), tf.constant(folds)), default_value=-1
    )
    row_of = {example_id: row for row, example_id in enumerate(examples.ids)}
    probabilities = np.full((len(examples.ids), len(classes)), np.nan)
    unlabelled_ids, unlabelled_paths = read_unlabelled(data_dir.path)
    totals = np.zeros((len(unlabelled_paths), len(classes)))
    errors = np.full(len(unlabelled_paths), "", dtype=object)
    logging.info(
        "cross-validation: %d labelled examples in %d folds, %d unlabelled images", len(folds), num_folds, len(totals)
    )
    hp = None
    for fold in range(num_folds):
        hp = models.fixed_hyperparameters(preset, values)
        num_train = int((folds != fold).sum())
        logging.info("fold %d/%d: training on %d, scoring %d", fold + 1, num_folds, num_train, len(folds) - num_train)
        model = _train_fold(
            examples,
            table,
            fold,
            data_dir=data_dir,
            preset=preset,
            hp=hp,
            num_train=num_train,
            seed=seed + fold,
            verbose=verbose,
        )
        parse = data.make_parse_and_transform(data_dir.tft_output, image_shape=data_dir.image_shape, with_metadata=True)
        held_out = _fold_dataset(examples, table, fold, held_out=True).batch(PREDICT_BATCH).map(parse)
        fold_ids, fold_probabilities = [], []
        for batch in held_out:
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
        if len(totals):
            _predict_unlabelled(model, data_dir, unlabelled_paths, totals, errors)
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
        hyperparameters=dict(hp.values) if hp is not None else values,
    )
