"""What train records in JOB next to the model: training_config.json and history.csv.

:func:`write_json` is the trainer's one JSON writer (training_config.json, metrics.json,
best_hyperparameters.json): strict JSON, whole or not at all (trainer/atomic.py).

history.csv has one row per epoch, appended across restarts: Keras' CSVLogger writes it
(single process), or :func:`append_history` with the same columns (the multi-worker
loop); :func:`read_history` reads it (evaluation's training curves).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from trainer import atomic, errors, job_layout

HISTORY_COLUMNS = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss")
# The key of training_config.json (and of best_hyperparameters.json, metrics.json) holding
# the fingerprint of the data it came from (``data.DataDir.fingerprint``).
DATA_FINGERPRINT_KEY = "data_fingerprint"


def history_path(job_dir: str) -> str:
    return tf.io.gfile.join(job_dir, job_layout.HISTORY_FILE)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities (which strict JSON has no spelling for) as None."""
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, value: Any) -> None:
    """Writes ``value`` as strict JSON (non-finite floats as ``null``), atomically."""
    atomic.write(path, json.dumps(_finite(value), indent=2, allow_nan=False) + "\n")


def config_path(job_dir: str) -> str:
    return tf.io.gfile.join(job_dir, job_layout.CONFIG_FILE)


def read_config(job_dir: str) -> dict[str, Any] | None:
    """JOB/training_config.json; None when there is none (json.JSONDecodeError when it is not JSON)."""
    path = config_path(job_dir)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_config(job_dir: str, config: Mapping[str, Any]) -> None:
    """Writes training_config.json (see trainer/training.py for its keys)."""
    write_json(config_path(job_dir), config)


# What must be equal for a killed run's backup to be resumed with a new command.
_RESUMED_KEYS = ("model", "hyperparameters", "image_shape", "classes")


def check_resumable(job_dir: str, config: Mapping[str, Any]) -> None:
    """Raises UsageError when JOB's recorded run trained something other than ``config``.

    Keras' BackupAndRestore would otherwise fail deep inside the restore ("objects that
    could not be loaded") or, worse, resume a run under other hyperparameters.
    """
    try:
        recorded = read_config(job_dir)
    except json.JSONDecodeError:
        return  # Not ours to judge; the restore itself says whether the backup fits.
    if recorded is None:
        return
    differences = []
    for key in _RESUMED_KEYS:
        old, new = recorded.get(key), _finite(config.get(key))
        if isinstance(old, dict) and isinstance(new, dict):
            differences += [
                f"{name} {old.get(name)!r} -> {new.get(name)!r}"
                for name in sorted(set(old) | set(new))
                if old.get(name) != new.get(name)
            ]
        elif old != new:
            differences.append(f"{key} {old!r} -> {new!r}")
    if differences:
        backup = tf.io.gfile.join(job_dir, job_layout.BACKUP_DIR)
        raise errors.UsageError(
            f"{job_dir} has a run with other hyperparameters ({', '.join(differences)}); "
            f"pass --overwrite to start afresh, or remove {backup}"
        )


def read_data_fingerprint(job_dir: str) -> str | None:
    """The data fingerprint training_config.json records; None when absent (or an older job)."""
    return (read_config(job_dir) or {}).get(DATA_FINGERPRINT_KEY)


def append_history(job_dir: str, row: Mapping[str, float]) -> None:
    """Appends one epoch to history.csv (CSVLogger's columns), writing the header first.

    The file is rewritten whole (atomically): a few rows per run, and a kill mid-write
    leaves the previous history, not half a row.
    """
    path = history_path(job_dir)
    buffer = io.StringIO()
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            buffer.write(f.read())
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS)
    if not buffer.tell():
        writer.writeheader()
    writer.writerow({k: row[k] for k in HISTORY_COLUMNS})
    atomic.write(path, buffer.getvalue())


def best_watched_row(history: Sequence[Mapping[str, float]], start_epoch: int) -> Mapping[str, float] | None:
    """The history row of the lowest val_loss from ``start_epoch`` on (the first of equal ones,
    as Keras' EarlyStopping keeps); None when no such epoch has run."""
    watched = [row for row in history if "val_loss" in row and int(row["epoch"]) >= start_epoch]
    return min(watched, key=lambda row: row["val_loss"]) if watched else None


def read_history(job_dir: str) -> list[dict[str, float]]:
    """history.csv rows, one per epoch (the last row wins when a resumed run repeated one).

    A malformed row (a kill in the middle of Keras' CSVLogger write) is skipped with a warning.
    """
    rows = []
    with tf.io.gfile.GFile(history_path(job_dir)) as f:
        for number, row in enumerate(csv.DictReader(f), start=2):
            try:
                if None in row or None in row.values():
                    raise ValueError("wrong number of fields")
                rows.append({k: float(v) for k, v in row.items() if v != ""})
            except ValueError as e:
                logging.warning("%s line %d skipped (%s): %s", history_path(job_dir), number, e, row)
    by_epoch = {int(row["epoch"]): row for row in rows if "epoch" in row}
    return [by_epoch[e] for e in sorted(by_epoch)]


def drop_partial_history_row(job_dir: str) -> None:
    """Cuts history.csv back to its last complete line: a killed CSVLogger may have written
    half a row, which the resumed run's first row would otherwise continue on the same line."""
    path = history_path(job_dir)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    if text and not text.endswith("\n"):
        logging.warning("%s: dropping the unfinished last row %r", path, text[text.rfind("\n") + 1 :])
        atomic.write(path, text[: text.rfind("\n") + 1])
