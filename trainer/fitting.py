"""Fitting one model: one frozen run specification, handed to the one :func:`fit`.

As TFX's trainer hands one ``FnArgs`` to one ``run_fn``: everything a fit needs is a
:class:`Run` (data, preset, hyperparameters, recipe, seed, strategy, job directory, class
weights, early stopping), and :func:`fit` is the only code that fits a model. Its callers
differ only in their Run: ``training.train`` (and each ensemble member), the tuner's trials
(``tuning.FaceHyperModel``) and every cross-validation fold (``folds.cross_validate``, its
examples a fold's ``data.Subset``).

:func:`fit` makes the run's datasets (trainer/data.py), builds the model (unless the tuner
built it) and runs one of two backends:
  - one process, any single-worker strategy: ``model.fit`` (:func:`_fit_keras`);
  - several workers: the custom loop of trainer/multiworker.py (Keras' fit breaks there).
Both follow the recipe (the compiled optimizer), the augmentation (in the dataset), the
class weights, precise BatchNormalization and early stopping on val_loss.

A Run with a ``job_dir`` leaves a resumable job there: training_config.json, history.csv,
logs/, and the checkpoints it resumes from (:func:`_checkpointing`; several workers:
trainer/multiworker.py). Without one (tuner trials, folds) the fit writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import keras
import keras_tuner as kt
import tensorflow as tf

from trainer import batch_norm, checkpoints, data, distribute, job_layout, models, multiworker, records
from trainer.recipe import DEFAULT_RECIPE, Recipe

# --class_weight: "auto" weighs classes by the training examples' counts when they are unequal.
CLASS_WEIGHTS = ("auto", "none")


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything one fit needs.

    Attributes:
      data_dir: The preprocessing output.
      preset: The architecture.
      hyperparameters: {name: value} over the preset's defaults (``epochs`` included);
        names the preset does not have are ignored (a tuner's "tuner/..." values).
      recipe: The optimizer's schedule and clipping and BatchNormalization's statistics
        (Recipe); None: the seeds' constant Adam.
      seed: Seeds Keras (weights, dropout), the shuffles and the augmentation.
      strategy: None: the strategy in scope when the Run is made.
      job_dir: Where the fit keeps its state and resumes from; None: it writes nothing.
      class_weight: One of CLASS_WEIGHTS.
      patience: Stop when val_loss has not improved for that many epochs (watched from
        EARLY_STOPPING_START of the epochs on) and keep the best epoch's weights; None or
        0: every epoch runs. Only with validation examples.
      examples: What it trains and validates on: the train and validation splits, or a
        fold's Subsets.
      deterministic: A reproducible input order (for a seed); several workers always are.
      verbose: Keras' fit verbosity.
      overwrite: An unfinished run in ``job_dir`` (backup/) is deleted instead of resumed.
      flags: The command's flags (by dest name), recorded in training_config.json.
    """

    data_dir: data.DataDir
    preset: models.Preset
    hyperparameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    recipe: Recipe | None = DEFAULT_RECIPE
    seed: int = 0
    strategy: tf.distribute.Strategy | None = None
    job_dir: str | None = None
    class_weight: str = "auto"
    patience: int | None = 3
    examples: data.FitExamples = dataclasses.field(default_factory=data.FitExamples)
    deterministic: bool = True
    verbose: int | str = 2
    overwrite: bool = False
    flags: Mapping[str, Any] | None = None

    def __post_init__(self):
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"unknown class_weight {self.class_weight!r}, expected one of {CLASS_WEIGHTS}")
        if self.strategy is None:
            object.__setattr__(self, "strategy", tf.distribute.get_strategy())
        # Loaded now (once per DataDir): a missing transform fails before any trial or epoch.
        self.data_dir.load()

    @property
    def hp(self) -> kt.HyperParameters:
        """The preset's defaults overridden by ``hyperparameters`` (a fresh object)."""
        return models.fixed_hyperparameters(self.preset, self.hyperparameters)

    @property
    def global_batch_size(self) -> int:
        return distribute.global_batch_size(self.hp.get("batch_size"), self.strategy)

    @property
    def steps_per_epoch(self) -> int:
        """Batches of one epoch: every training example once."""
        train = data.examples_size(self.data_dir.manifest, self.examples.train)
        return data.steps_per_epoch(train, self.global_batch_size)

    @property
    def class_weights(self) -> dict[int, float] | None:
        """{class index: weight} of the training examples' counts ("auto"), else None."""
        if self.class_weight == "none":
            return None
        return class_weights(data.examples_class_counts(self.data_dir.manifest, self.examples.train))


def class_weights(counts: Mapping[int, int]) -> dict[int, float] | None:
    """{class index: n / (classes x n_class)} from {class index: examples}; None when balanced."""
    if len(set(counts.values())) <= 1:
        return None
    if min(counts.values()) == 0:
        raise ValueError(
            f"the training examples hold no example of class(es) {[c for c, n in counts.items() if n == 0]}"
        )
    total = sum(counts.values())
    return {label: total / (len(counts) * n) for label, n in sorted(counts.items())}


def build(run: Run) -> keras.Model:
    """The run's compiled model, built under its strategy's scope."""
    with run.strategy.scope():
        return models.build_model(
            run.hp,
            preset=run.preset,
            input_shape=run.data_dir.image_shape,
            num_classes=len(run.data_dir.classes),
            recipe=run.recipe,
            steps_per_epoch=run.steps_per_epoch,
            vector_length=run.data_dir.vector_length,
        )


def config(run: Run) -> dict[str, Any]:
    """training_config.json: model, hyperparameters, data, strategy, seed, the recipe, class weights, patience."""
    recorded = {
        "model": run.preset.name,
        "hyperparameters": run.hp.values,
        "data_dir": run.data_dir.path,
        records.DATA_FINGERPRINT_KEY: run.data_dir.fingerprint,
        "image_shape": list(run.data_dir.image_shape),
        "classes": run.data_dir.classes,
        "strategy": type(run.strategy).__name__,
        "replicas": run.strategy.num_replicas_in_sync,
        "seed": run.seed,
        "recipe": dataclasses.asdict(run.recipe) if run.recipe else None,
    }
    if run.flags is not None:
        recorded[job_layout.CONFIG_FLAGS_KEY] = dict(run.flags)
    recorded["class_weight"] = run.class_weights
    recorded["early_stopping_patience"] = run.patience or None
    return recorded


# What must be equal for a saved result of a fit to stand for a new one (ensemble members, folds).
REUSE_KEYS = (
    "model",
    "hyperparameters",
    records.DATA_FINGERPRINT_KEY,
    "seed",
    "recipe",
    "class_weight",
    "early_stopping_patience",
)


def reuse_settings(run: Run) -> dict[str, Any]:
    """The values of :data:`REUSE_KEYS` in ``run``'s :func:`config`, as JSON stores them (tuples as lists)."""
    recorded = config(run)
    return json.loads(json.dumps({key: recorded[key] for key in REUSE_KEYS}))


class Fitted(NamedTuple):
    """A fit's model and its history (Keras' History; several workers: the epochs' rows)."""

    model: keras.Model
    history: Any


def fit(
    run: Run,
    *,
    model: keras.Model | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    fit_arguments: Mapping[str, Any] | None = None,
) -> Fitted:
    """Fits ``run``'s model (``model``: one the tuner built for this run) on its examples.

    ``callbacks`` and ``fit_arguments`` (``model.fit``'s, e.g. a Hyperband trial's epochs;
    None values ignored) are the tuner's; several workers take neither.
    """
    strategy = run.strategy
    multi_worker = distribute.is_multi_worker(strategy)
    if multi_worker and not run.deterministic:
        # Every worker reads the whole split and keeps its share of each global batch
        # (DATA autosharding): the workers must see the same order or they overlap.
        logging.warning("several workers: using a deterministic input order (--nondeterministic ignored)")
        run = dataclasses.replace(run, deterministic=True)
    hp = run.hp
    if model is None:
        keras.utils.set_random_seed(run.seed)
    datasets = data.make_fit_datasets(
        run.data_dir,
        run.examples,
        global_batch_size=run.global_batch_size,
        augment=hp.get("augment"),
        seed=run.seed,
        deterministic=run.deterministic,
        inputs=run.preset.inputs,
    )
    if model is None:
        model = build(run)
        if run.verbose and run.job_dir:
            model.summary(print_fn=logging.info)
    # Recalibrated before every validation and at the end (trainer/batch_norm.py), or never.
    calibration = datasets.calibration if run.recipe and run.recipe.precise_batch_norm else None
    arguments = {"epochs": hp.get("epochs"), "verbose": run.verbose}
    arguments.update({k: v for k, v in (fit_arguments or {}).items() if v is not None})
    if multi_worker:
        if callbacks or fit_arguments or run.job_dir is None or datasets.validation is None:
            raise ValueError("several workers fit with a custom loop: a job_dir and validation, no Keras callbacks")
        history = multiworker.fit_multi_worker(
            model,
            strategy=strategy,
            train_ds=datasets.train,
            validation_ds=datasets.validation,
            calibration_ds=calibration,
            steps_per_epoch=datasets.steps_per_epoch,
            epochs=arguments["epochs"],
            global_batch_size=run.global_batch_size,
            job_dir=run.job_dir,
            config=config(run),
            class_weight=run.class_weights,
            patience=run.patience,
            watch_from_epoch=first_watched_epoch(arguments["epochs"]),
        )
    else:
        history = _fit_keras(run, model, datasets, calibration, callbacks, arguments)
    return Fitted(model, history)


def _fit_keras(
    run: Run,
    model: keras.Model,
    datasets: data.FitDatasets,
    calibration: tf.data.Dataset | None,
    callbacks: Sequence[keras.callbacks.Callback],
    arguments: Mapping[str, Any],
) -> keras.callbacks.History:
    """``model.fit`` with precise BatchNormalization, the job's checkpoints and early stopping.

    ``calibration`` (clean training batches): BatchNormalization's statistics are re-measured
    at every epoch's end, before the others see its validation figures
    (batch_norm.PreciseBatchNorm); None: Keras' moving averages.
    """
    steps = datasets.steps_per_epoch
    validation, precise = batch_norm.fit_validation(model, calibration, datasets.validation, batches=steps)
    watched = run.patience and datasets.validation is not None
    if run.job_dir is None:
        job = []
        stopping = [ScheduledEarlyStopping(patience=run.patience)] if watched else []
    else:
        job, stopping = _checkpointing(run, resumable_stopping=bool(watched))
    weights = run.class_weights
    return model.fit(
        datasets.train,
        validation_data=validation,
        steps_per_epoch=steps,
        # First: the others read the validation figures of the recalibrated model. Early
        # stopping after the job's: it may restore the best weights at the end, after they
        # saw the last epoch; the caller's (the tuner's) last.
        callbacks=[*precise, *job, *stopping, *callbacks],
        class_weight=weights,
        shuffle=False,  # The dataset shuffles (with a seed); Keras cannot shuffle a tf.data input.
        **arguments,
    )


def _checkpointing(run: Run, *, resumable_stopping: bool) -> tuple[list[keras.callbacks.Callback], list]:
    """(The job's callbacks, early stopping) of a fit in ``run.job_dir``: where it resumes or starts.

    The one place where a single-process fit writes and reads its state: backup/ (Keras'
    BackupAndRestore, what a killed run resumes from), checkpoints/epoch-NNN.weights.h5 (the
    best epoch's weights for early stopping), history.csv, logs/, training_config.json.
    A backup of a run with other settings is an error (records.check_resumable) unless
    ``run.overwrite``, which deletes it and starts afresh.
    """
    job_dir = run.job_dir
    tf.io.gfile.makedirs(job_dir)
    backup_dir = tf.io.gfile.join(job_dir, job_layout.BACKUP_DIR)
    history_path = records.history_path(job_dir)
    recorded = config(run)
    resuming = checkpoints.has_backup(backup_dir)
    if resuming and run.overwrite:
        logging.info("--overwrite: deleting %s, starting afresh", backup_dir)
        tf.io.gfile.rmtree(backup_dir)
        resuming = False
    if resuming:
        records.check_resumable(job_dir, recorded)
        records.drop_partial_history_row(job_dir)
        logging.info("found %s: resuming the interrupted run", backup_dir)
    elif tf.io.gfile.exists(history_path):
        tf.io.gfile.remove(history_path)  # A finished earlier run's history; this run starts over.
    records.write_config(job_dir, recorded)

    checkpoint_dir = tf.io.gfile.join(job_dir, job_layout.CHECKPOINT_DIR)
    tf.io.gfile.makedirs(checkpoint_dir)
    for folder in (backup_dir, checkpoint_dir):
        checkpoints.remove_stale_temporaries(folder)
    stopping = []
    if resumable_stopping:
        earlier = records.read_history(job_dir) if resuming and tf.io.gfile.exists(history_path) else []
        stopping = [ResumableEarlyStopping(patience=run.patience, history=earlier, checkpoint_dir=checkpoint_dir)]
    callbacks = [
        # The CSV row before the backup: a kill between the two repeats that epoch's row on
        # resume (read_history keeps the last row per epoch) instead of losing it.
        keras.callbacks.CSVLogger(history_path, append=True),
        # Kill-safe (trainer/checkpoints.py): whole files, checked before a resume trusts them.
        checkpoints.BackupAndRestore(backup_dir),
        checkpoints.EpochCheckpoint(tf.io.gfile.join(checkpoint_dir, job_layout.EPOCH_WEIGHTS_FILE)),
        keras.callbacks.TensorBoard(tf.io.gfile.join(job_dir, job_layout.LOGS_DIR)),
    ]
    return callbacks, stopping


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
        path = tf.io.gfile.join(
            self._checkpoint_dir, job_layout.EPOCH_WEIGHTS_FILE.format(epoch=self._earlier_best_epoch + 1)
        )
        if not checkpoints.trusted(path, f"the best epoch's (epoch {self.best_epoch + 1}) weights"):
            logging.warning("keeping the last epoch's weights instead of the best epoch's")
            return
        logging.info(
            "restoring the best epoch's weights (epoch %d, before the resume) from %s", self.best_epoch + 1, path
        )
        self.model.load_weights(path)
