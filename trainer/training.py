"""Final training with the chosen hyperparameters: checkpoints, logs, history, export.

Outputs in job_dir (names in trainer/job_layout.py):
  backup/                    the last two epochs' state while training runs (deleted once
                             model.keras is saved); a restarted run resumes from the newest
                             one that reads whole (trainer/checkpoints.py)
  checkpoints/epoch-NNN.weights.h5
                             (several workers: tf.train checkpoints checkpoints/epoch-N.*,
                             which are also what a restarted cluster resumes from)
  logs/                      TensorBoard
  history.csv                one row per epoch (CSVLogger, appended across restarts)
  training_config.json       model, hyperparameters, data, strategy, the recipe
                             (schedule, clipping, class weights, early stopping); with
                             the train command's flags under "flags" (see trainer/task.py)
  model.keras                the trained Keras model
  export/                    the serving SavedModel (trainer/export.py)

``train_ensemble`` trains several such runs in members/member-K/ (no export there) and
writes JOB's training_config.json, model.keras (the mean of the members) and export/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from trainer import (
    atomic,
    batch_norm,
    checkpoints,
    data,
    distribute,
    errors,
    export,
    job_layout,
    models,
    multiworker,
    records,
)


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
    recipe: models.Recipe | None = models.DEFAULT_RECIPE,
    class_weight: str = "auto",
    patience: int | None = 3,
    serving_export: bool = True,
) -> keras.Model:
    """Trains ``preset`` with ``hyperparameters`` (else its defaults), saves and exports it.

    A run that finds ``job_dir/backup`` (left by a killed run) resumes from its last
    finished epoch and appends to ``history.csv``; otherwise it starts afresh. Under a
    multi-worker strategy every worker calls this with the same arguments; training goes
    through :func:`multiworker.fit_multi_worker` and only the chief writes to ``job_dir``.
    ``flags`` (the train command's, by dest name) are recorded in training_config.json.
    A backup of a run with another model or other hyperparameters is an error
    (errors.UsageError) unless ``overwrite``, which deletes it and starts afresh.

    ``recipe`` is the optimizer's schedule and clipping (None: the seeds' constant Adam);
    ``class_weight`` "auto" weighs classes by the manifest's train counts when they are
    unequal; ``patience`` stops when val_loss has not improved for that many epochs and
    restores the best epoch's weights (None or 0: every epoch runs). The multi-worker loop
    does the same: it follows the recipe (the compiled optimizer), the augmentation (in the
    dataset), the class weights and the early stopping (``multiworker.fit_multi_worker``).
    ``serving_export`` False: model.keras only, no export/ (an ensemble's members).
    """
    strategy = strategy or tf.distribute.get_strategy()
    multi_worker = distribute.is_multi_worker(strategy)
    if multi_worker and not deterministic:
        # Every worker reads the whole split and keeps its share of each global batch
        # (DATA autosharding): the workers must see the same order or they overlap.
        logging.warning("several workers: using a deterministic input order (--nondeterministic ignored)")
        deterministic = True
    keras.utils.set_random_seed(seed)
    input_shape = data_dir.image_shape
    hp = _hyperparameters(preset, hyperparameters, epochs)
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
        "recipe": dataclasses.asdict(recipe) if recipe else None,
    }
    if flags is not None:
        config[job_layout.CONFIG_FLAGS_KEY] = dict(flags)
    weights = class_weights(data_dir.manifest) if class_weight == "auto" else None
    config["class_weight"] = weights
    config["early_stopping_patience"] = patience or None
    make_datasets = data.make_datasets_fn(
        data_dir, strategy=strategy, seed=seed, deterministic=deterministic, inputs=preset.inputs
    )
    datasets = make_datasets(hp.get("batch_size"), hp.get("augment"))
    steps = datasets.steps_per_epoch
    # Recalibrated before every validation and the export (trainer/batch_norm.py), or never.
    calibration = datasets.calibration if recipe and recipe.precise_batch_norm else None
    with strategy.scope():
        model = models.build_model(
            hp,
            preset=preset,
            input_shape=input_shape,
            num_classes=len(data_dir.classes),
            recipe=recipe,
            steps_per_epoch=steps,
            vector_length=data_dir.vector_length,
        )
    if verbose:
        model.summary(print_fn=logging.info)

    if multi_worker:
        if extra_callbacks:
            raise ValueError("several workers train with a custom loop: Keras callbacks are not supported there")
        multiworker.fit_multi_worker(
            model,
            strategy=strategy,
            train_ds=datasets.train,
            validation_ds=datasets.validation,
            calibration_ds=calibration,
            steps_per_epoch=steps,
            epochs=hp.get("epochs"),
            global_batch_size=distribute.global_batch_size(hp.get("batch_size"), strategy),
            job_dir=job_dir,
            config=config,
            class_weight=weights,
            patience=patience,
            watch_from_epoch=first_watched_epoch(hp.get("epochs")),
        )
    else:
        _fit(
            model,
            train_ds=datasets.train,
            validation_ds=datasets.validation,
            calibration_ds=calibration,
            steps_per_epoch=steps,
            epochs=hp.get("epochs"),
            job_dir=job_dir,
            config=config,
            verbose=verbose,
            extra_callbacks=extra_callbacks,
            overwrite=overwrite,
            class_weight=weights,
            patience=patience,
        )

    _save(model, job_dir=job_dir, data_dir=data_dir, strategy=strategy, serving_export=serving_export)
    backup_dir = _join(job_dir, job_layout.BACKUP_DIR)
    if distribute.is_chief(strategy) and tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)  # Only now: a kill before model.keras was saved resumes from it.
    if distribute.is_chief(strategy):
        logging.info(
            "history %s, TensorBoard logs %s", records.history_path(job_dir), _join(job_dir, job_layout.LOGS_DIR)
        )
    return model


def train_ensemble(
    *,
    members: int,
    job_dir: str,
    data_dir: data.DataDir,
    preset: models.Preset,
    hyperparameters: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    seed: int = 0,
    overwrite: bool = False,
    recipe: models.Recipe | None = models.DEFAULT_RECIPE,
    **train_kwargs: Any,
) -> keras.Model:
    """Trains ``members`` runs of :func:`train` with seeds ``seed``, ``seed`` + 1, ...; saves and exports their mean.

    Why: on a few hundred photos two trainings of the same recipe differ by up to 0.03 in
    cross-validated accuracy (other people wrong), and the mean of their probabilities beats
    their average and does not depend on one seed (docs/benchmarks.md section 9: ORL, three
    seeds 0.919-0.947, their mean 0.947). Member K trains in JOB/members/member-K with all of
    :func:`train`'s outputs but the export; JOB gets training_config.json (member 0's, with
    "ensemble": the members' seeds and folders), model.keras (:func:`models.average_ensemble`)
    and export/. A member whose model.keras and training_config.json say it was trained with
    this model, these hyperparameters, data, seed and recipe is reused unless ``overwrite``:
    a killed ensemble run resumes at the member it was training (that one at its last epoch).
    ``train_kwargs``: the rest of :func:`train`'s arguments, the same for every member.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if members < 1:
        raise errors.UsageError(f"--ensemble {members}: give the number of models to train, at least 1")
    if distribute.is_multi_worker(strategy):
        raise errors.UsageError(
            "--ensemble with several workers: not supported (the members train one after the other in one "
            "process); train each member on the cluster with its own --seed and --job_dir instead"
        )
    hp = _hyperparameters(preset, hyperparameters, epochs)
    trained = []
    for k in range(members):
        member_dir = _join(job_dir, job_layout.member_dir(k))
        expected = {
            "model": preset.name,
            "hyperparameters": hp.values,
            records.DATA_FINGERPRINT_KEY: data_dir.fingerprint,
            "seed": seed + k,
            "recipe": dataclasses.asdict(recipe) if recipe else None,
        }
        model = None if overwrite else _trained_member(member_dir, expected)
        if model is None:
            logging.info("ensemble member %d of %d (seed %d) in %s", k + 1, members, seed + k, member_dir)
            model = train(
                job_dir=member_dir,
                data_dir=data_dir,
                preset=preset,
                hyperparameters=hyperparameters,
                epochs=epochs,
                strategy=strategy,
                seed=seed + k,
                overwrite=overwrite,
                recipe=recipe,
                serving_export=False,
                **train_kwargs,
            )
        else:
            logging.info(
                "ensemble member %d of %d: reusing %s (trained with these settings)", k + 1, members, member_dir
            )
        trained.append(model)
    config = records.read_config(_join(job_dir, job_layout.member_dir(0)))
    config.update(
        {
            "data_dir": data_dir.path,
            "seed": seed,
            "ensemble": {
                "members": members,
                "seeds": [seed + k for k in range(members)],
                "member_dirs": [job_layout.member_dir(k) for k in range(members)],
            },
        }
    )
    records.write_config(job_dir, config)
    if tf.io.gfile.exists(records.history_path(job_dir)):
        # An earlier single run's: evaluate would plot it as this model's curves.
        tf.io.gfile.remove(records.history_path(job_dir))
    with strategy.scope():
        model = models.average_ensemble(trained)
    _save(model, job_dir=job_dir, data_dir=data_dir, strategy=strategy, serving_export=True)
    return model


def _hyperparameters(preset: models.Preset, hyperparameters: Mapping[str, Any] | None, epochs: int | None):
    """The preset's defaults overridden by ``hyperparameters``, and by ``epochs`` when given."""
    values = dict(hyperparameters or {})
    if epochs:
        values["epochs"] = int(epochs)
    return models.fixed_hyperparameters(preset, values)


def _trained_member(member_dir: str, expected: Mapping[str, Any]) -> keras.Model | None:
    """The member's saved model when its training_config.json holds ``expected``'s values, else None.

    A model.keras or training_config.json that does not read whole is not reused (one log line).
    """
    model_path = _join(member_dir, job_layout.MODEL_FILE)
    what = "ensemble member"
    if not checkpoints.trusted(model_path, what) or not checkpoints.trusted(records.config_path(member_dir), what):
        return None
    recorded = records.read_config(member_dir)
    # Through JSON, as recorded (tuples become lists).
    if any(recorded.get(key) != value for key, value in json.loads(json.dumps(expected)).items()):
        return None
    return keras.saving.load_model(model_path)


def _save(
    model: keras.Model, *, job_dir: str, data_dir: data.DataDir, strategy: tf.distribute.Strategy, serving_export: bool
) -> None:
    """JOB/model.keras and (``serving_export``) JOB/export; every worker saves, the chief into JOB."""
    chief = distribute.is_chief(strategy)
    # Saving may read distributed variables, which can take part in collectives: every
    # worker saves (TF multi-worker guide), the others to a temporary directory they delete.
    out_dir = job_layout.write_dir(job_dir, chief=chief)
    logging.info("%s: final weights sha256 %s", distribute.worker_name(strategy), weights_fingerprint(model))
    model_path = _join(out_dir, job_layout.MODEL_FILE)
    with atomic.writing(model_path) as temporary:
        model.save(temporary)
    export_dir = _join(out_dir, job_layout.EXPORT_DIR)
    if serving_export:
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
        return
    logging.info("saved %s%s", model_path, f", exported {export_dir}" if serving_export else "")


def _fit(
    model: keras.Model,
    *,
    train_ds: tf.data.Dataset,
    validation_ds: tf.data.Dataset,
    calibration_ds: tf.data.Dataset | None,
    steps_per_epoch: int,
    epochs: int,
    job_dir: str,
    config: Mapping[str, Any],
    verbose: int | str,
    extra_callbacks: Sequence[keras.callbacks.Callback],
    overwrite: bool = False,
    class_weight: Mapping[int, float] | None = None,
    patience: int | None = None,
) -> None:
    """``model.fit`` with BackupAndRestore, CSV history, epoch weights, TensorBoard and early stopping.

    ``calibration_ds`` (clean training batches): BatchNormalization's statistics are
    re-measured at every epoch's end, before the others see its validation figures
    (batch_norm.PreciseBatchNorm); None: Keras' moving averages.
    """
    tf.io.gfile.makedirs(job_dir)
    backup_dir = _join(job_dir, job_layout.BACKUP_DIR)
    history_path = records.history_path(job_dir)
    resuming = checkpoints.has_backup(backup_dir)
    if resuming and overwrite:
        logging.info("--overwrite: deleting %s, starting afresh", backup_dir)
        tf.io.gfile.rmtree(backup_dir)
        resuming = False
    if resuming:
        records.check_resumable(job_dir, config)
        records.drop_partial_history_row(job_dir)
        logging.info("found %s: resuming the interrupted run", backup_dir)
    elif tf.io.gfile.exists(history_path):
        tf.io.gfile.remove(history_path)  # A finished earlier run's history; this run starts over.
    records.write_config(job_dir, config)

    checkpoint_dir = _join(job_dir, job_layout.CHECKPOINT_DIR)
    tf.io.gfile.makedirs(checkpoint_dir)
    for folder in (backup_dir, checkpoint_dir):
        checkpoints.remove_stale_temporaries(folder)
    stopping = []
    if patience:
        earlier = records.read_history(job_dir) if resuming and tf.io.gfile.exists(history_path) else []
        stopping = [ResumableEarlyStopping(patience=patience, history=earlier, checkpoint_dir=checkpoint_dir)]
    validation, precise = batch_norm.fit_validation(model, calibration_ds, validation_ds, batches=steps_per_epoch)
    callbacks = [
        # First: the others read the validation figures of the recalibrated model.
        *precise,
        # The CSV row before the backup: a kill between the two repeats that epoch's row on
        # resume (read_history keeps the last row per epoch) instead of losing it.
        keras.callbacks.CSVLogger(history_path, append=True),
        checkpoints.BackupAndRestore(backup_dir),
        checkpoints.EpochCheckpoint(_join(checkpoint_dir, job_layout.EPOCH_WEIGHTS_FILE)),
        keras.callbacks.TensorBoard(_join(job_dir, job_layout.LOGS_DIR)),
        # Last: it may restore the best weights at the end, after the others saw the last epoch.
        *stopping,
        *extra_callbacks,
    ]
    model.fit(
        train_ds,
        validation_data=validation,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
        class_weight=dict(class_weight) if class_weight else None,
        shuffle=False,  # The dataset shuffles (with a seed); Keras cannot shuffle a tf.data input.
    )


# Early stopping watches val_loss from this share of the fit's epochs on. In the first part of
# the schedule (warm-up, then the highest learning rates) val_loss jumps from epoch to epoch
# while BatchNormalization's statistics and the weights move fast; a model stopped and kept
# from there was the one-class model of docs/benchmarks.md (section 9): face_cnn stopped after
# 5-7 of 15 epochs on ORL and after 13 of 30 on the demo, its best epoch an early, noisy one.
EARLY_STOPPING_START = 0.5


def first_watched_epoch(epochs: int, start_fraction: float = EARLY_STOPPING_START) -> int:
    """The first epoch (0-based) whose val_loss early stopping watches, of a fit of ``epochs``."""
    return int(epochs * start_fraction)


class ScheduledEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping on val_loss with the best weights restored, watching only the later epochs.

    From epoch ``start_fraction`` x the fit's epochs on (Keras' ``start_from_epoch``, set when
    the fit begins: a tuner's trials differ in epochs): no stop and no best epoch before it.
    """

    def __init__(self, *, patience: int, start_fraction: float = EARLY_STOPPING_START):
        super().__init__(monitor="val_loss", mode="min", patience=patience, restore_best_weights=True)
        self.start_fraction = start_fraction

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.start_from_epoch = first_watched_epoch(self.params["epochs"], self.start_fraction)


class ResumableEarlyStopping(ScheduledEarlyStopping):
    """:class:`ScheduledEarlyStopping`, continued across a resume.

    A resumed fit starts a fresh callback; ``history`` (the rows of the epochs the killed
    run finished) restores its best value, best epoch and wait, and the best epoch's
    weights come from that epoch's checkpoint file when it is still the best at the end (when
    that file does not read whole, the last epoch's weights are kept, with one log line).
    """

    def __init__(
        self,
        *,
        patience: int,
        history: Sequence[Mapping[str, float]] = (),
        checkpoint_dir: str = "",
        start_fraction: float = EARLY_STOPPING_START,
    ):
        super().__init__(patience=patience, start_fraction=start_fraction)
        self._history = [row for row in history if "val_loss" in row]
        self._checkpoint_dir = checkpoint_dir
        self._earlier_best_epoch: int | None = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._earlier_best_epoch = None
        best = records.best_watched_row(self._history, self.start_from_epoch)
        if best is None:
            return
        self.best, self.best_epoch = best["val_loss"], int(best["epoch"])
        self.wait = int(self._history[-1]["epoch"]) - self.best_epoch
        self._earlier_best_epoch = self.best_epoch

    def on_epoch_end(self, epoch, logs=None):
        if self._earlier_best_epoch is not None and self.best_weights is None:
            # Keras would take this epoch's weights as the best ones; the best is earlier.
            self.best_weights = self.model.get_weights()
        super().on_epoch_end(epoch, logs)
        if self.best_epoch == epoch:
            self._earlier_best_epoch = None

    def on_train_end(self, logs=None):
        if self._earlier_best_epoch is None:
            super().on_train_end(logs)
            return
        path = _join(self._checkpoint_dir, job_layout.EPOCH_WEIGHTS_FILE.format(epoch=self._earlier_best_epoch + 1))
        if not checkpoints.trusted(path, f"the best epoch's (epoch {self.best_epoch + 1}) weights"):
            logging.warning("keeping the last epoch's weights instead of the best epoch's")
            return
        logging.info(
            "restoring the best epoch's weights (epoch %d, before the resume) from %s", self.best_epoch + 1, path
        )
        self.model.load_weights(path)


def class_weights(manifest: Mapping[str, Any]) -> dict[int, float] | None:
    """{class index: n_train / (classes x n_class)} from the manifest's counts; None when balanced."""
    counts = {int(label): int(n) for label, n in manifest["counts"]["written"]["train"].items()}
    if len(set(counts.values())) <= 1:
        return None
    if min(counts.values()) == 0:
        raise ValueError(f"the train split has no example of class(es) {[c for c, n in counts.items() if n == 0]}")
    total = sum(counts.values())
    return {label: total / (len(counts) * n) for label, n in sorted(counts.items())}


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 of all the model's weights (equal on every worker after synchronous training)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()
