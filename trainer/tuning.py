"""Hyperparameter search with keras-tuner's own tuners, resumable after a kill.

``tune()`` runs grid (default; hyperband for the "wide" space), random, hyperband or bayesian search over a preset's
space, with ``overwrite=False``: the same command restarted after a crash or SIGKILL
reloads the oracle from ``<job_dir>/tuning/<project>/`` and continues; the interrupted
trial is retried from scratch, finished trials are not run again.

Distributed search uses keras-tuner's own chief/worker mode: with KERASTUNER_ORACLE_IP,
KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID set, the process whose id contains "chief"
serves the oracle over gRPC (it trains nothing) and every other process ("tuner0",
"tuner1", ...) asks it for trials and trains them; all of them get the same flags and
job_dir. The chief alone writes oracle.json, the trial.json files, the results and
best_hyperparameters.json, and only the chief (or a single process) may ``overwrite``.

Outputs in job_dir (names in trainer/job_layout.py):
  tuning/<model>_<tuner>/     keras-tuner's project (oracle.json, trial_*/)
  tuning/results.csv, .md     one row per trial, best first
  best_hyperparameters.json   {"model", "tuner", "trial_id", "score", "hyperparameters",
                              "data_fingerprint": the data tuned on (data.DataDir.fingerprint)}
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf
from keras_tuner.src.backend import io as kt_io
from keras_tuner.src.distribute import utils as dist_utils
from keras_tuner.src.engine import tuner_utils
from keras_tuner.src.tuners import gridsearch

from trainer import (
    atomic,
    checkpoints,
    data,
    distribute,
    errors,
    fitting,
    folds,
    job_layout,
    models,
    records,
    tuner_files,
)

TUNERS = ("grid", "random", "hyperband", "bayesian")
# What a trial is scored by: the validation people's loss (its best epoch's). Finer than
# accuracy on a validation split of a few people (ties: the first grid point would win), and
# what chose input_norm right per fold in the nested check of docs/benchmarks.md section 9.
OBJECTIVE = kt.Objective("val_loss", direction="min")


def _save_best_epoch_whole(self: tuner_utils.SaveBestEpoch) -> None:
    """keras-tuner's ``SaveBestEpoch._save_model`` (a trial's checkpoint.weights.h5), whole or not at all."""
    path = kt_io.write_filepath(self.filepath, self.model.distribute_strategy)
    checkpoints.save_weights(self.model, path)
    kt_io.remove_temp_dir_with_filepath(path, self.model.distribute_strategy)


# keras-tuner writes a trial's checkpoint in place: a kill mid-write left a truncated file that
# the rerun crashed on. Made atomic (its JSON files: trainer/tuner_files.py).
tuner_utils.SaveBestEpoch._save_model = _save_best_epoch_whole


class ResumableHyperband(kt.Hyperband):
    """``Hyperband`` that trains a continued trial from fresh weights when the earlier trial's
    checkpoint does not read whole (one log line), instead of crashing on it."""

    def _build_hypermodel(self, hp: kt.HyperParameters):
        trial_id = hp.values.get("tuner/trial_id")
        if trial_id is not None and not checkpoints.trusted(self._get_checkpoint_fname(trial_id), "trial checkpoint"):
            logging.warning("trial %s's continuation starts from fresh weights", trial_id)
            return super(kt.Hyperband, self)._build_hypermodel(hp)
        return super()._build_hypermodel(hp)


class FaceHyperModel(kt.HyperModel):
    """A run's preset over a search space: every trial builds and fits the run with its values.

    Args:
      run: What every trial fits (data, preset, recipe, seed, strategy, class weights,
        patience), with the trial's hyperparameters; no ``job_dir`` (the tuner keeps the trials).
      space: "small", "full" or "wide". Defaults to "full".
      overrides: {hp name: values} replacing the preset's candidates (e.g. --epochs).
      tuner_name: The tuner that runs the trials: whether they may cross-validate
        (:attr:`cross_validation`). Defaults to "grid".
    """

    def __init__(
        self,
        run: fitting.Run,
        *,
        space: str = "full",
        overrides: Mapping[str, Sequence[Any]] | None = None,
        tuner_name: str = "grid",
    ):
        super().__init__(name=run.preset.name, tunable=True)
        if run.job_dir is not None:
            raise ValueError("a tuner's trials write no job_dir: the tuner keeps them")
        self.run = run
        self.preset = run.preset
        self.space_name = space
        self.space = {**run.preset.space(space), **{k: list(v) for k, v in (overrides or {}).items()}}
        self.tuner_name = tuner_name

    @functools.cached_property
    def cross_validation(self) -> tuple[data.FitExamples, ...]:
        """The folds every trial fits instead of the run's examples (:func:`validation_folds`),
        scored by the mean of their best validation losses; () none. Read when a trial fits, so
        a space of one point, which fits none, reads no examples for them."""
        return tuple(validation_folds(self.run, self.tuner_name))

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        models.declare_hyperparameters(hp, self.space, self.preset.defaults)

    def trial(self, hp: kt.HyperParameters) -> fitting.Run:
        """The run of the trial whose values ``hp`` holds."""
        return dataclasses.replace(self.run, hyperparameters=dict(hp.values))

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        self.declare_hyperparameters(hp)
        return fitting.build(self.trial(hp))

    def fit(self, hp: kt.HyperParameters, model: keras.Model, *args, **kwargs):
        if args:
            raise TypeError("FaceHyperModel.fit makes its own datasets: call tuner.search() without data")
        # One line per fit: what resumed searches are audited with (no trial runs twice).
        logging.info("trial fit start: %s", json.dumps(hp.values, sort_keys=True))
        # The tuner's callbacks and fit arguments (Hyperband's epochs, search's verbose).
        callbacks = kwargs.pop("callbacks", [])
        trial = self.trial(hp)
        if not self.cross_validation:
            return fitting.fit(trial, model=model, callbacks=callbacks, fit_arguments=kwargs).history
        # Fold 0 fits the tuner's model (its callbacks keep that fold's best epoch); each other
        # fold a fresh one with its own seed, as find_label_issues' folds do.
        best_losses = []
        for k, examples in enumerate(self.cross_validation):
            fold = dataclasses.replace(trial, examples=examples, seed=trial.seed + k)
            fitted = fitting.fit(
                fold, model=model if k == 0 else None, callbacks=callbacks if k == 0 else (), fit_arguments=kwargs
            )
            best_losses.append(min(fitted.history.history[OBJECTIVE.name]))
        logging.info("trial scored by %d folds: best %s %s", len(best_losses), OBJECTIVE.name, best_losses)
        return {OBJECTIVE.name: float(np.mean(best_losses))}


class ResumableGridSearchOracle(kt.oracles.GridSearchOracle):
    """``GridSearchOracle`` whose grid position survives a reload (keras-tuner 1.4.8 bug).

    The stock oracle walks the grid with two in-memory structures that ``get_state`` does
    not save: ``_ordered_ids`` (a linked list of trial ids sorted by grid position, used to
    see whether a trial's next grid point was already tried) and ``_populate_next`` (trial
    ids whose successor is still to be proposed). After ``reload()`` both are empty while
    ``start_order`` is not, so ``populate_space`` skips its first-trial branch and then:
      * if a trial was running when the process died, ``reload`` queues it for retry, its
        ``end_trial`` queues its id, and ``self._ordered_ids.next(id)`` raises
        ``KeyError: '<trial id>'`` (gridsearch.py, ``LinkedList.next``);
      * if the process died between trials, nothing is queued and the search stops
        early, silently, with part of the grid never tried.
    The fix rebuilds both from the reloaded trials: the linked list from every started
    trial in grid order (``_compare``), the queue from every finished trial (a queued id
    whose successor was already tried is skipped by the oracle itself, so over-filling
    the queue is harmless). It is derived from the trials rather than saved, so it also
    resumes projects written by the stock oracle.

    ``reload`` also repairs two kill windows of the base ``Oracle``: ``end_trial`` saves
    oracle.json while the finished trial is still listed as ongoing (reload would retry,
    i.e. rerun, a COMPLETED trial), and ``create_trial`` saves the new trial's file before
    oracle.json (reload would load a RUNNING trial that nothing ever runs).
    """

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._rebuild_grid_walk()

    def _rebuild_grid_walk(self) -> None:
        in_grid_order = sorted(
            self.start_order,
            key=functools.cmp_to_key(
                lambda a, b: self._compare(self.trials[a].hyperparameters.values, self.trials[b].hyperparameters.values)
            ),
        )
        self._ordered_ids = gridsearch.LinkedList()
        for trial_id in in_grid_order:
            self._ordered_ids.insert(trial_id)
        self._populate_next = list(self.end_order)

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        # The grid walk proposes the first point (the defaults) only to the first trial: when that
        # trial's file was skipped on reload (trainer/tuner_files.py), it proposes it again here.
        if self.start_order:
            hps = self.get_space()
            first = {hp.name: hp.default for hp in hps.space if hps.is_active(hp)}
            if self._compute_values_hash(first) not in self._tried_so_far:
                _insert_first(self._ordered_ids, trial_id)
                self._populate_next.append(trial_id)
                return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": first}
        return super().populate_space(trial_id)

    def reload(self) -> None:
        super().reload()  # Calls set_state.
        running, invalid = kt.engine.trial.TrialStatus.RUNNING, kt.engine.trial.TrialStatus.INVALID
        retry = [t for t in self._retry_queue if self.trials[t].status in (running, invalid)]
        orphans = [t for t, trial in self.trials.items() if trial.status == running and t not in self.start_order]
        for trial_id, trial in self.trials.items():
            if trial.status == running and trial_id not in retry:
                retry.append(trial_id)
        self._retry_queue = retry
        if orphans:
            self.start_order.extend(orphans)
            self._rebuild_grid_walk()


def _insert_first(linked: gridsearch.LinkedList, data: str) -> None:
    """Puts ``data`` at the head of keras-tuner's grid-order list (its ``insert`` appends or follows)."""
    linked._memory.append(data)
    index = len(linked._memory) - 1
    linked._data_to_index[data] = index
    linked._next_index[index] = linked._next_index[None]  # The key None holds the head.
    linked._next_index[None] = index
    if linked._last_index is None:
        linked._last_index = index


def default_tuner(search_space: str) -> str:
    """Hyperband for the "wide" space (thousands of grid points), grid for the others."""
    return "hyperband" if search_space == "wide" else "grid"


def role() -> str:
    """This process's part in a search: "chief", "worker" (keras-tuner env vars) or "single"."""
    if not dist_utils.has_chief_oracle():  # Also checks that the three variables go together.
        return "single"
    return "chief" if dist_utils.is_chief_oracle() else "worker"


def make_tuner(
    name: str,
    hypermodel: FaceHyperModel,
    *,
    directory: str,
    project_name: str,
    max_trials: int | None,
    executions_per_trial: int,
    seed: int,
    distribution_strategy: tf.distribute.Strategy | None,
    overwrite: bool = False,
) -> kt.Tuner:
    """One of keras-tuner's tuners over the hypermodel's space, resuming an existing project.

    ``overwrite`` deletes the project first; a distributed search's workers must never do
    that (they would delete the trials the chief and the other workers are writing).
    """
    if overwrite and role() == "worker":
        raise errors.UsageError(
            f"tuner {os.environ.get('KERASTUNER_TUNER_ID')!r} is a worker of a distributed search: only the "
            "chief (KERASTUNER_TUNER_ID=chief) may overwrite the project; drop --overwrite on the workers"
        )
    common = dict(
        hypermodel=hypermodel,
        executions_per_trial=executions_per_trial,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        distribution_strategy=distribution_strategy,
    )
    if name == "grid":
        oracle = ResumableGridSearchOracle(objective=OBJECTIVE, max_trials=max_trials, seed=seed)
        tuner = kt.Tuner(oracle=oracle, **common)
    elif name == "random":
        tuner = kt.RandomSearch(objective=OBJECTIVE, max_trials=max_trials or 10, seed=seed, **common)
    elif name == "bayesian":
        tuner = kt.BayesianOptimization(objective=OBJECTIVE, max_trials=max_trials or 10, seed=seed, **common)
    elif name == "hyperband":
        tuner = ResumableHyperband(
            objective=OBJECTIVE, max_epochs=max(hypermodel.space["epochs"]), factor=3, seed=seed, **common
        )
    else:
        raise ValueError(f"unknown tuner {name!r}, expected one of {TUNERS}")
    tuner_files.reload_if_orphaned(tuner)
    return tuner


def grid_size(space: Mapping[str, list]) -> int:
    """Number of points of a (non-conditional) grid."""
    size = 1
    for values in space.values():
        size *= len(values)
    return size


def results_rows(tuner: kt.Tuner) -> list[dict[str, Any]]:
    """One row per trial: id, status, score and the hyperparameter values; best first."""
    rows = []
    for trial_id, trial in tuner.oracle.trials.items():
        values = {k: v for k, v in trial.hyperparameters.values.items() if not k.startswith("tuner/")}
        rows.append({"trial": trial_id, "status": trial.status, "score": trial.score, **values})
    sign = 1.0 if OBJECTIVE.direction == "min" else -1.0
    return sorted(rows, key=lambda r: (r["score"] is None, sign * (r["score"] or 0.0), r["trial"]))


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows`` (all keys as columns)."""
    if not rows:
        return "(no trials)\n"
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict[str, Any]], job_dir: str) -> tuple[str, str]:
    """Writes tuning/results.csv and tuning/results.md; returns their paths."""
    out_dir = tf.io.gfile.join(job_dir, job_layout.TUNING_DIR)
    tf.io.gfile.makedirs(out_dir)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = tf.io.gfile.join(out_dir, job_layout.TUNING_RESULTS_CSV)
    md_path = tf.io.gfile.join(out_dir, job_layout.TUNING_RESULTS_MD)
    atomic.write(csv_path, buffer.getvalue())
    atomic.write(md_path, format_markdown(rows))
    return csv_path, md_path


def warn_if_other_data(best: Mapping[str, Any], source: str, data_fingerprint: str | None) -> None:
    """One warning line when the tuning results ``best`` (read from ``source``) came from other data."""
    tuned_on = best.get(records.DATA_FINGERPRINT_KEY)
    if data_fingerprint is not None and tuned_on is not None and tuned_on != data_fingerprint:
        logging.warning(
            "%s was tuned on other data (fingerprint %.12s, this data %.12s): the hyperparameters may not suit it",
            source,
            tuned_on,
            data_fingerprint,
        )


def read_best_hyperparameters(
    job_dir: str, *, model: str, data_fingerprint: str | None = None
) -> dict[str, Any] | None:
    """The tuned values from ``job_dir/best_hyperparameters.json``, or None (absent, unreadable, other model).

    With ``data_fingerprint``, warns when they were tuned on other data.
    """
    path = tf.io.gfile.join(job_dir, job_layout.BEST_HPARAMS_FILE)
    best = checkpoints.read_json(path, "tuning results")
    if best is None:
        return None
    if not isinstance(best, dict) or not isinstance(best.get("hyperparameters"), dict):
        logging.warning('skipping tuning results %s: no "hyperparameters" object in it', path)
        return None
    if best.get("model") != model:
        logging.warning("%s was tuned for %s, not %s: ignoring it", path, best.get("model"), model)
        return None
    warn_if_other_data(best, path, data_fingerprint)
    return dict(best["hyperparameters"])


def tune(
    *,
    job_dir: str,
    hypermodel: FaceHyperModel,
    max_trials: int | None = None,
    executions_per_trial: int = 1,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """Runs (or resumes) the search; writes the results table and the best hyperparameters.

    ``hypermodel.tuner_name`` runs the search. The trials fit ``hypermodel.run`` (its seed,
    strategy, verbosity, early stopping); the
    data's fingerprint is recorded in best_hyperparameters.json. In a distributed search
    (see the module docstring) the chief serves the oracle until every worker has stopped,
    then writes the results; a worker trains the trials it is given and writes nothing but
    its trials' checkpoints.

    Args:
      overwrite: Delete the project and start afresh (single process or chief only).
        Defaults to False: resume.

    Returns:
      The contents of ``best_hyperparameters.json``; None on a distributed search's worker.
    """
    run, tuner_name = hypermodel.run, hypermodel.tuner_name
    if grid_size(hypermodel.space) == 1:
        return _one_point(job_dir, hypermodel)
    project_name = job_layout.tuning_project(hypermodel.preset.name, tuner_name)
    directory = tf.io.gfile.join(job_dir, job_layout.TUNING_DIR)
    tuner = make_tuner(
        tuner_name,
        hypermodel,
        directory=directory,
        project_name=project_name,
        max_trials=max_trials,
        executions_per_trial=executions_per_trial,
        seed=run.seed,
        distribution_strategy=None if distribute.is_default(run.strategy) else run.strategy,
        overwrite=overwrite,
    )
    this = role()
    if this == "worker":
        tuner_id = os.environ["KERASTUNER_TUNER_ID"]
        logging.info(
            "tuner %s: a worker of the oracle at %s:%s",
            tuner_id,
            os.environ["KERASTUNER_ORACLE_IP"],
            os.environ["KERASTUNER_ORACLE_PORT"],
        )
        tuner.search(verbose=run.verbose)
        logging.info("tuner %s: the oracle has no trial left; the chief writes the results", tuner_id)
        return None
    done = sum(t.status == "COMPLETED" for t in tuner.oracle.trials.values())
    logging.info(
        "tuning %s with %s search in %s: grid of %d points, %d trial(s) already completed",
        hypermodel.preset.name,
        tuner_name,
        os.path.join(directory, project_name),
        grid_size(hypermodel.space),
        done,
    )
    if this == "chief":
        logging.info(
            "chief: serving the oracle on %s:%s until the workers finish",
            os.environ["KERASTUNER_ORACLE_IP"],
            os.environ["KERASTUNER_ORACLE_PORT"],
        )
    tuner.search(verbose=run.verbose)  # The chief: blocks while it serves.

    rows = results_rows(tuner)
    write_results(rows, job_dir)
    print(format_markdown(rows))
    best_trial = [t for t in tuner.oracle.get_best_trials(1) if t.status == kt.engine.trial.TrialStatus.COMPLETED]
    if not best_trial:
        raise RuntimeError(f"no trial completed in {directory}/{project_name}; see the trial logs there")
    best_trial = best_trial[0]
    return _write_best(
        job_dir,
        hypermodel,
        trial_id=best_trial.trial_id,
        score=best_trial.score,
        values={k: v for k, v in best_trial.hyperparameters.values.items() if not k.startswith("tuner/")},
    )


def _one_point(job_dir: str, hypermodel: FaceHyperModel) -> dict[str, Any] | None:
    """A space of one point has nothing to compare: that point is the best, with no trial run
    (a task's settled values, :meth:`models.Preset.settled`, or flags that fix every value)."""
    hp = kt.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    logging.info(
        "nothing to search: the %s space of %s holds one point (%s); --search_space full searches its grid",
        hypermodel.space_name,
        hypermodel.preset.name,
        json.dumps(hp.values, sort_keys=True),
    )
    if role() == "worker":
        return None
    write_results([{"trial": None, "status": "NOT RUN: one point", "score": None, **hp.values}], job_dir)
    return _write_best(job_dir, hypermodel, trial_id=None, score=None, values=hp.values)


def _write_best(
    job_dir: str,
    hypermodel: FaceHyperModel,
    *,
    trial_id: str | None,
    score: float | None,
    values: Mapping[str, Any],
) -> dict[str, Any]:
    """Writes and returns best_hyperparameters.json (warns when the choice rests on few examples)."""
    run = hypermodel.run
    best = {
        "model": hypermodel.preset.name,
        "tuner": hypermodel.tuner_name,
        "trial_id": trial_id,
        "score": score,
        "objective": OBJECTIVE.name,
        "hyperparameters": dict(values),
        records.DATA_FINGERPRINT_KEY: run.data_dir.fingerprint,
    }
    best_path = tf.io.gfile.join(job_dir, job_layout.BEST_HPARAMS_FILE)
    records.write_json(best_path, best)
    logging.info(
        "results in %s; wrote best hyperparameters: %s", tf.io.gfile.join(job_dir, job_layout.TUNING_DIR), best_path
    )
    if trial_id is not None and not hypermodel.cross_validation:
        _warn_if_few_validation_examples(run)
    return best


# Below this many validation examples a search's choice is a guess: on face2comics (10 per
# fold) tune's pick cost one test image in 80 on every seed, on ORL (40-50) it held
# (docs/benchmarks.md section 9). Below it, each point is scored by VALIDATION_FOLDS-fold
# cross-validation over the train and validation splits pooled (:func:`validation_folds`).
FEW_VALIDATION_EXAMPLES = 30
VALIDATION_FOLDS = 3


def validation_folds(run: fitting.Run, tuner_name: str) -> list[data.FitExamples]:
    """The folds tune scores each point on when the run's validation split holds fewer than
    FEW_VALIDATION_EXAMPLES examples: VALIDATION_FOLDS group folds of the train and validation
    splits pooled, so that every one of their examples validates once (the test split is left
    out). [] when the split is large enough, when the examples are not splits, for Hyperband
    (it continues a trial's checkpoint: one fit), when there are too few groups, and when a
    fold would train without a class the pooled examples have.
    """
    train, validation = run.examples.train, run.examples.validation
    if tuner_name == "hyperband" or not isinstance(train, str) or not isinstance(validation, str):
        return []
    validating = data.examples_size(run.data_dir.manifest, validation)
    if validating >= FEW_VALIDATION_EXAMPLES:
        return []
    examples = folds.read_examples(run.data_dir)
    pooled = np.isin(examples.splits, (train, validation))
    if len(np.unique(examples.groups[pooled])) < VALIDATION_FOLDS:
        return []
    cross_validation = folds.pooled_folds(examples, (train, validation), VALIDATION_FOLDS, "tune")
    classes = set(np.unique(examples.labels[pooled]).tolist())
    if any(set(fold.train.class_counts) != classes for fold in cross_validation):
        return []
    logging.info(
        "the %s split holds %d examples, fewer than %d: each point is scored by %d-fold cross-validation over the "
        "%s and %s splits' %d examples (the mean of the folds' best %s)",
        validation,
        validating,
        FEW_VALIDATION_EXAMPLES,
        VALIDATION_FOLDS,
        train,
        validation,
        int(pooled.sum()),
        OBJECTIVE.name,
    )
    return cross_validation


def _warn_if_few_validation_examples(run: fitting.Run) -> None:
    count = data.examples_size(run.data_dir.manifest, run.examples.validation) if run.examples.validation else 0
    if count < FEW_VALIDATION_EXAMPLES:
        logging.warning(
            "the search chose by the validation loss of %d example(s): too few to tell close points apart "
            "(docs/benchmarks.md section 9); compare them by cross-validation (bench/quality.py) or fix the "
            "hyperparameters the docs measured for this kind of data (configs/)",
            count,
        )
