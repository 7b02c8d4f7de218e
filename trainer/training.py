"""Final training with the chosen hyperparameters: checkpoints, logs, history, export.

Outputs in job_dir (names in trainer/job_layout.py):
  backup/                    the last two epochs' state while training runs (deleted once
                             model.keras is saved; trainer/checkpoints.py);
                             a restarted run resumes from the last finished epoch
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
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from trainer import atomic, checkpoints, distribute, ensembles, errors, export, fitting, job_layout, records


def _join(*parts: str) -> str:
    return tf.io.gfile.join(*parts)


def train(run: fitting.Run, *, serving_export: bool = True) -> keras.Model:
    """Fits ``run`` (:func:`fitting.fit`) in its ``job_dir``, then saves and exports the model.

    A run that finds ``job_dir/backup`` (left by a killed run) resumes from its last
    finished epoch and appends to ``history.csv``; otherwise it starts afresh (see
    :class:`fitting.Run` for ``overwrite``). Under a multi-worker strategy every worker calls
    this with the same run; only the chief writes to ``job_dir``.
    ``serving_export`` False: model.keras only, no export/ (an ensemble's members).
    """
    if run.job_dir is None:
        raise ValueError("train needs a job_dir")
    logging.info(
        "training %s on %s with %s", run.preset.name, run.data_dir.path, json.dumps(run.hp.values, sort_keys=True)
    )
    model = fitting.fit(run).model
    _save(model, run, serving_export=serving_export)
    backup_dir = _join(run.job_dir, job_layout.BACKUP_DIR)
    if distribute.is_chief(run.strategy) and tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)  # Only now: a kill before model.keras was saved resumes from it.
    if distribute.is_chief(run.strategy):
        logging.info(
            "history %s, TensorBoard logs %s",
            records.history_path(run.job_dir),
            _join(run.job_dir, job_layout.LOGS_DIR),
        )
    return model


def train_ensemble(run: fitting.Run, *, members: int) -> keras.Model:
    """Trains ``members`` runs of :func:`train` with seeds ``run.seed``, + 1, ...; saves and exports their mean.

    Why: on a few hundred photos two trainings of the same recipe differ by up to 0.03 in
    cross-validated accuracy (other people wrong), and the mean of their probabilities beats
    their average and does not depend on one seed (docs/benchmarks.md section 9: ORL, three
    seeds 0.919-0.947, their mean 0.947). Member K trains in JOB/members/member-K with all of
    :func:`train`'s outputs but the export; JOB gets training_config.json (member 0's, with
    "ensemble": the members' seeds and folders), model.keras (:func:`ensembles.average_ensemble`)
    and export/. A member whose model.keras and training_config.json say it was trained with
    this model, these hyperparameters, data, seed and recipe is reused unless ``run.overwrite``:
    a killed ensemble run resumes at the member it was training (that one at its last epoch).
    """
    if members < 1:
        raise errors.UsageError(f"--ensemble {members}: give the number of models to train, at least 1")
    if distribute.is_multi_worker(run.strategy):
        raise errors.UsageError(
            "--ensemble with several workers: not supported (the members train one after the other in one "
            "process); train each member on the cluster with its own --seed and --job_dir instead"
        )
    job_dir = run.job_dir
    trained = []
    for k in range(members):
        member = dataclasses.replace(run, job_dir=_join(job_dir, job_layout.member_dir(k)), seed=run.seed + k)
        model = None if run.overwrite else _trained_member(member.job_dir, fitting.reuse_settings(member))
        if model is None:
            logging.info("ensemble member %d of %d (seed %d) in %s", k + 1, members, member.seed, member.job_dir)
            model = train(member, serving_export=False)
        else:
            logging.info(
                "ensemble member %d of %d: reusing %s (trained with these settings)", k + 1, members, member.job_dir
            )
        trained.append(model)
    config = records.read_config(_join(job_dir, job_layout.member_dir(0)))
    config.update(
        {
            "data_dir": run.data_dir.path,
            "seed": run.seed,
            "ensemble": {
                "members": members,
                "seeds": [run.seed + k for k in range(members)],
                "member_dirs": [job_layout.member_dir(k) for k in range(members)],
            },
        }
    )
    records.write_config(job_dir, config)
    if tf.io.gfile.exists(records.history_path(job_dir)):
        # An earlier single run's: evaluate would plot it as this model's curves.
        tf.io.gfile.remove(records.history_path(job_dir))
    with run.strategy.scope():
        model = ensembles.average_ensemble(trained)
    _save(model, run, serving_export=True)
    return model


def _trained_member(member_dir: str, expected: Mapping[str, Any]) -> keras.Model | None:
    """The member's saved model when its training_config.json holds ``expected``'s values
    (:func:`fitting.reuse_settings`), else None.

    A model.keras or training_config.json that does not read whole is not reused (one log line).
    """
    model_path = _join(member_dir, job_layout.MODEL_FILE)
    what = "ensemble member"
    if not checkpoints.trusted(model_path, what) or not checkpoints.trusted(records.config_path(member_dir), what):
        return None
    recorded = records.read_config(member_dir)
    if any(recorded.get(key) != value for key, value in expected.items()):
        return None
    return keras.saving.load_model(model_path)


def _save(model: keras.Model, run: fitting.Run, *, serving_export: bool) -> None:
    """JOB/model.keras and (``serving_export``) JOB/export; every worker saves, the chief into JOB."""
    job_dir, data_dir, strategy = run.job_dir, run.data_dir, run.strategy
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


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 of all the model's weights (equal on every worker after synchronous training)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()
