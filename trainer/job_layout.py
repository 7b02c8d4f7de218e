"""The job directory's layout: every file and folder the trainer writes under JOB.

What ``pipelines/features.py`` is for the data directory, this module is for the job
directory: the commands, the tests and the benchmarks name these paths only through it.

  best_hyperparameters.json   tune: {"model", "tuner", "trial_id", "score", "hyperparameters"}
  tuning/<model>_<tuner>/     tune: keras-tuner's project (oracle.json, trial_*/)
  tuning/results.csv, .md     tune: one row per trial, best first
  training_config.json        train: what was trained, and the command's flags (usable as --config)
  backup/                     train: epoch-N.weights.h5 (the last two) and training_metadata.json while training runs
  checkpoints/                train: epoch-NNN.weights.h5 (several workers: tf.train epoch-N.*)
  logs/train, logs/validation train: TensorBoard
  history.csv                 train: one row per epoch (trainer/history.py)
  model.keras                 train: the trained Keras model
  export/                     train: the serving SavedModel (trainer/export.py)
  members/member-K/           train --ensemble N: member K's own run (seed + K), as above
                              but without export/; JOB's model.keras averages them
  eval/                       evaluate: metrics.json, predictions.csv, the plots and the model
                              card (model_card.md, model_card.json: trainer/model_card.py)
  label_issues.csv            find_label_issues: the likely wrong labels, most likely first
  label_issues_summary.json   find_label_issues: per-class noise rates, thresholds, confident joint
  oof_probabilities.csv       find_label_issues: every labelled example's out-of-fold probabilities
  suggested_labels.csv        find_label_issues: the folds' mean prediction for the unlabelled images
  cross_validation/           find_label_issues: fold-K-of-N.csv, each fold's predictions as made
"""

from __future__ import annotations

import tempfile

# tune
BEST_HPARAMS_FILE = "best_hyperparameters.json"
TUNING_DIR = "tuning"
TUNING_RESULTS_CSV = "results.csv"
TUNING_RESULTS_MD = "results.md"

# train
CONFIG_FILE = "training_config.json"
# The key of CONFIG_FILE that holds the train command's flags (see trainer/task.py).
CONFIG_FLAGS_KEY = "flags"
BACKUP_DIR = "backup"
BACKUP_WEIGHTS_FILE = "epoch-{epoch}.weights.h5"  # Under BACKUP_DIR: the state after that many epochs.
BACKUP_METADATA_FILE = "training_metadata.json"  # {"epoch", "batch"}, as Keras' BackupAndRestore writes it.
CHECKPOINT_DIR = "checkpoints"
EPOCH_WEIGHTS_FILE = "epoch-{epoch:03d}.weights.h5"  # A file name pattern (1-based epoch).
CHECKPOINT_PREFIX = "epoch"  # tf.train.CheckpointManager's checkpoint_name: epoch-N.index, ...
CHECKPOINT_STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's list of checkpoints.
LOGS_DIR = "logs"
# The TensorBoard runs under LOGS_DIR (the names Keras' TensorBoard callback uses).
TRAIN_LOGS = "train"
VALIDATION_LOGS = "validation"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
EXPORT_DIR = "export"
MEMBERS_DIR = "members"

# evaluate
EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
TRAINING_CURVES_PLOT = "training_curves.png"
CONFUSION_MATRIX_PLOT = "confusion_matrix.png"
MISCLASSIFIED_PLOT = "misclassified.png"
MODEL_CARD_FILE = "model_card.md"
MODEL_CARD_JSON = "model_card.json"

# find_label_issues
LABEL_ISSUES_CSV = "label_issues.csv"
LABEL_ISSUES_SUMMARY = "label_issues_summary.json"
OOF_PROBABILITIES_CSV = "oof_probabilities.csv"
SUGGESTED_LABELS_CSV = "suggested_labels.csv"
CROSS_VALIDATION_DIR = "cross_validation"


def tuning_project(model: str, tuner: str) -> str:
    """The keras-tuner project name of a search, a folder under ``TUNING_DIR``."""
    return f"{model}_{tuner}"


def fold_file(fold: int, num_folds: int) -> str:
    """The held-out predictions of fold ``fold`` (0-based) of ``num_folds``, under ``CROSS_VALIDATION_DIR``."""
    return f"fold-{fold + 1}-of-{num_folds}.csv"


def fold_record(fold: int, num_folds: int) -> str:
    """What a rerun reuses of fold ``fold``: its settings and predictions, under ``CROSS_VALIDATION_DIR``."""
    return f"fold-{fold + 1}-of-{num_folds}.json"


def member_dir(member: int) -> str:
    """Ensemble member ``member``'s own job folder (0-based), under ``MEMBERS_DIR``."""
    return f"{MEMBERS_DIR}/member-{member}"


def write_dir(job_dir: str, *, chief: bool) -> str:
    """Where this worker writes: ``job_dir`` for the chief, else a new temporary folder.

    Saving takes part in collectives, so every worker of a cluster saves; the others save
    to a folder of their own, which the caller deletes.
    """
    return job_dir if chief else tempfile.mkdtemp(prefix="facepipe-worker-")
