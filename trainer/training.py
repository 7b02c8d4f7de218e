"""Final training with the chosen hyperparameters: checkpoints, logs, history, export.

Outputs in job_dir:
  backup/                    BackupAndRestore state while training runs (deleted at the end);
                             a restarted run resumes from the last finished epoch
  checkpoints/epoch-NNN.weights.h5
  logs/                      TensorBoard
  history.csv                one row per epoch (CSVLogger, appended across restarts)
  training_config.json       model, hyperparameters, data, strategy
  model.keras                the trained Keras model
  export/                    the serving SavedModel (trainer/export.py)
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf

from pipelines import features
from trainer import data, distribute, export, models

HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
CONFIG_FILE = "training_config.json"
BACKUP_DIR = "backup"


def _join(*parts: str) -> str:
    return tf.io.gfile.join(*parts)


def make_datasets_fn(
    data_dir: str,
    manifest: Mapping[str, Any],
    *,
    strategy: tf.distribute.Strategy,
    seed: int = 0,
    deterministic: bool = True,
):
    """``fn(per_replica_batch_size) -> (train_ds, validation_ds, steps_per_epoch)`` for fit and tuning."""
    tft_output = data.load_transform(data_dir, manifest)

    def make_datasets(per_replica_batch_size: int):
        batch = distribute.global_batch_size(per_replica_batch_size, strategy)
        common = dict(manifest=manifest, tft_output=tft_output, global_batch_size=batch, deterministic=deterministic)
        train_ds = data.make_dataset(data_dir, "train", training=True, seed=seed, **common)
        validation_ds = data.make_dataset(data_dir, "validation", training=False, **common)
        return train_ds, validation_ds, data.steps_per_epoch(data.split_size(manifest, "train"), batch)

    return make_datasets


def train(
    *,
    data_dir: str,
    job_dir: str,
    preset: models.Preset,
    hyperparameters: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    seed: int = 0,
    deterministic: bool = True,
    verbose: int | str = 2,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> keras.Model:
    """Trains ``preset`` with ``hyperparameters`` (else its defaults), saves and exports it.

    A run that finds ``job_dir/backup`` (left by a killed run) resumes from its last
    finished epoch and appends to ``history.csv``; otherwise it starts afresh.
    """
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(seed)
    manifest = features.read_manifest(data_dir)
    input_shape = features.image_shape(manifest)
    values = dict(hyperparameters or {})
    if epochs:
        values["epochs"] = int(epochs)
    hp = models.fixed_hyperparameters(preset, values)
    logging.info("training %s on %s with %s", preset.name, data_dir, json.dumps(hp.values, sort_keys=True))

    tf.io.gfile.makedirs(job_dir)
    backup_dir = _join(job_dir, BACKUP_DIR)
    history_path = _join(job_dir, HISTORY_FILE)
    resuming = tf.io.gfile.exists(_join(backup_dir, "training_metadata.json"))
    if resuming:
        logging.info("found %s: resuming the interrupted run", backup_dir)
    elif tf.io.gfile.exists(history_path):
        tf.io.gfile.remove(history_path)  # A finished earlier run's history; this run starts over.

    with tf.io.gfile.GFile(_join(job_dir, CONFIG_FILE), "w") as f:
        json.dump(
            {
                "model": preset.name,
                "hyperparameters": hp.values,
                "data_dir": data_dir,
                "image_shape": list(input_shape),
                "classes": manifest["classes"],
                "strategy": type(strategy).__name__,
                "replicas": strategy.num_replicas_in_sync,
                "seed": seed,
            },
            f,
            indent=2,
        )

    make_datasets = make_datasets_fn(data_dir, manifest, strategy=strategy, seed=seed, deterministic=deterministic)
    train_ds, validation_ds, steps = make_datasets(hp.get("batch_size"))
    with strategy.scope():
        model = models.build_model(hp, preset=preset, input_shape=input_shape, num_classes=len(manifest["classes"]))
    if verbose:
        model.summary(print_fn=logging.info)

    checkpoint_dir = _join(job_dir, "checkpoints")
    tf.io.gfile.makedirs(checkpoint_dir)
    callbacks = [
        # The CSV row before the backup: a kill between the two repeats that epoch's row on
        # resume (read_history keeps the last row per epoch) instead of losing it.
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.BackupAndRestore(backup_dir),
        keras.callbacks.ModelCheckpoint(_join(checkpoint_dir, "epoch-{epoch:03d}.weights.h5"), save_weights_only=True),
        keras.callbacks.TensorBoard(_join(job_dir, "logs")),
        *extra_callbacks,
    ]
    model.fit(
        train_ds,
        validation_data=validation_ds,
        epochs=hp.get("epochs"),
        steps_per_epoch=steps,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # The dataset shuffles (with a seed); Keras cannot shuffle a tf.data input.
    )

    model_path = _join(job_dir, MODEL_FILE)
    model.save(model_path)
    export_dir = export.export_model(
        model, tft_output=data.load_transform(data_dir, manifest), manifest=manifest, export_dir=_join(job_dir, export.EXPORT_DIR)
    )
    logging.info("saved %s, exported %s, history %s, TensorBoard logs %s", model_path, export_dir, history_path, _join(job_dir, "logs"))
    return model


def read_history(job_dir: str) -> list[dict[str, float]]:
    """history.csv rows, one per epoch (the last row wins when a resumed run repeated one)."""
    import csv

    path = _join(job_dir, HISTORY_FILE)
    with tf.io.gfile.GFile(path) as f:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    by_epoch = {int(row["epoch"]): row for row in rows}
    return [by_epoch[e] for e in sorted(by_epoch)]
