"""Final training with the chosen hyperparameters: checkpoints, logs, history, export.

Outputs in job_dir (names in trainer/job_layout.py):
  backup/                    BackupAndRestore state while training runs (deleted at the end);
                             a restarted run resumes from the last finished epoch
  checkpoints/epoch-NNN.weights.h5
                             (several workers: tf.train checkpoints checkpoints/epoch-N.*,
                             which are also what a restarted cluster resumes from)
  logs/                      TensorBoard
  history.csv                one row per epoch (CSVLogger, appended across restarts)
  training_config.json       model, hyperparameters, data, strategy; with the train
                             command's flags under "flags" (see trainer/task.py)
  model.keras                the trained Keras model
  export/                    the serving SavedModel (trainer/export.py)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from trainer import atomic, data, distribute, export, job_layout, models, multiworker, records


def _join(*parts: str) -> str:
    return tf.io.gfile.join(*parts)


def train(
    *,
    data_dir: data.DataDir,
    job_dir: str,
    preset: models.Preset,
    hyperparameters: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    seed: int = 0,
    deterministic: bool = True,
    verbose: int | str = 2,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    flags: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> keras.Model:
    """Trains ``preset`` with ``hyperparameters`` (else its defaults), saves and exports it.

    A run that finds ``job_dir/backup`` (left by a killed run) resumes from its last
    finished epoch and appends to ``history.csv``; otherwise it starts afresh. Under a
    multi-worker strategy every worker calls this with the same arguments; training goes
    through :func:`multiworker.fit_multi_worker` and only the chief writes to ``job_dir``.
    ``flags`` (the train command's, by dest name) are recorded in training_config.json.
    A backup of a run with another model or other hyperparameters is an error
    (errors.UsageError) unless ``overwrite``, which deletes it and starts afresh.
    """
    strategy = strategy or tf.distribute.get_strategy()
    multi_worker = distribute.is_multi_worker(strategy)
    chief = distribute.is_chief(strategy)
    if multi_worker and not deterministic:
        # Every worker reads the whole split and keeps its share of each global batch
        # (DATA autosharding): the workers must see the same order or they overlap.
        logging.warning("several workers: using a deterministic input order (--nondeterministic ignored)")
        deterministic = True
    keras.utils.set_random_seed(seed)
    input_shape = data_dir.image_shape
    values = dict(hyperparameters or {})
    if epochs:
        values["epochs"] = int(epochs)
    hp = models.fixed_hyperparameters(preset, values)
    logging.info("training %s on %s with %s", preset.name, data_dir.path, json.dumps(hp.values, sort_keys=True))

    config = {
        "model": preset.name,
        "hyperparameters": hp.values,
        "data_dir": data_dir.path,
        records.DATA_FINGERPRINT_KEY: data_dir.fingerprint,
        "image_shape": list(input_shape),
        "classes": data_dir.classes,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "seed": seed,
    }
    if flags is not None:
        config[job_layout.CONFIG_FLAGS_KEY] = dict(flags)
    make_datasets = data.make_datasets_fn(data_dir, strategy=strategy, seed=seed, deterministic=deterministic)
    train_ds, validation_ds, steps = make_datasets(hp.get("batch_size"))
    with strategy.scope():
        model = models.build_model(hp, preset=preset, input_shape=input_shape, num_classes=len(data_dir.classes))
    if verbose:
        model.summary(print_fn=logging.info)

    if multi_worker:
        if extra_callbacks:
            raise ValueError("several workers train with a custom loop: Keras callbacks are not supported there")
        multiworker.fit_multi_worker(
            model,
            strategy=strategy,
            train_ds=train_ds,
            validation_ds=validation_ds,
            steps_per_epoch=steps,
            epochs=hp.get("epochs"),
            global_batch_size=distribute.global_batch_size(hp.get("batch_size"), strategy),
            job_dir=job_dir,
            config=config,
        )
    else:
        _fit(
            model,
            train_ds=train_ds,
            validation_ds=validation_ds,
            steps_per_epoch=steps,
            epochs=hp.get("epochs"),
            job_dir=job_dir,
            config=config,
            verbose=verbose,
            extra_callbacks=extra_callbacks,
            overwrite=overwrite,
        )

    # Saving may read distributed variables, which can take part in collectives: every
    # worker saves (TF multi-worker guide), the others to a temporary directory they delete.
    out_dir = job_layout.write_dir(job_dir, chief=chief)
    logging.info("%s: final weights sha256 %s", distribute.worker_name(strategy), weights_fingerprint(model))
    model_path = _join(out_dir, job_layout.MODEL_FILE)
    with atomic.writing(model_path) as temporary:
        model.save(temporary)
    export_dir = _join(out_dir, job_layout.EXPORT_DIR)
    with atomic.writing(export_dir) as temporary:
        export.export_model(
            model,
            tft_output=data_dir.tft_output,
            manifest=data_dir.manifest,
            export_dir=temporary,
            data_fingerprint=data_dir.fingerprint,
        )
    if not chief:
        tf.io.gfile.rmtree(out_dir)
        logging.info("%s: done; the chief writes the model and the export", distribute.worker_name(strategy))
        return model
    logging.info(
        "saved %s, exported %s, history %s, TensorBoard logs %s",
        model_path,
        export_dir,
        records.history_path(job_dir),
        _join(job_dir, job_layout.LOGS_DIR),
    )
    return model


def _fit(
    model: keras.Model,
    *,
    train_ds: tf.data.Dataset,
    validation_ds: tf.data.Dataset,
    steps_per_epoch: int,
    epochs: int,
    job_dir: str,
    config: Mapping[str, Any],
    verbose: int | str,
    extra_callbacks: Sequence[keras.callbacks.Callback],
    overwrite: bool = False,
) -> None:
    """``model.fit`` with BackupAndRestore, CSV history, epoch weights and TensorBoard."""
    tf.io.gfile.makedirs(job_dir)
    backup_dir = _join(job_dir, job_layout.BACKUP_DIR)
    history_path = records.history_path(job_dir)
    resuming = tf.io.gfile.exists(_join(backup_dir, job_layout.BACKUP_METADATA_FILE))
    if resuming and overwrite:
        logging.info("--overwrite: deleting %s, starting afresh", backup_dir)
        tf.io.gfile.rmtree(backup_dir)
        resuming = False
    if resuming:
        records.check_resumable(job_dir, config)
        logging.info("found %s: resuming the interrupted run", backup_dir)
    elif tf.io.gfile.exists(history_path):
        tf.io.gfile.remove(history_path)  # A finished earlier run's history; this run starts over.
    records.write_config(job_dir, config)

    checkpoint_dir = _join(job_dir, job_layout.CHECKPOINT_DIR)
    tf.io.gfile.makedirs(checkpoint_dir)
    callbacks = [
        # The CSV row before the backup: a kill between the two repeats that epoch's row on
        # resume (read_history keeps the last row per epoch) instead of losing it.
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.BackupAndRestore(backup_dir),
        keras.callbacks.ModelCheckpoint(_join(checkpoint_dir, job_layout.EPOCH_WEIGHTS_FILE), save_weights_only=True),
        keras.callbacks.TensorBoard(_join(job_dir, job_layout.LOGS_DIR)),
        *extra_callbacks,
    ]
    model.fit(
        train_ds,
        validation_data=validation_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # The dataset shuffles (with a seed); Keras cannot shuffle a tf.data input.
    )


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 of all the model's weights (equal on every worker after synchronous training)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()
