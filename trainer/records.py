"""What train records in JOB next to the model: training_config.json and history.csv.

history.csv has one row per epoch, appended across restarts: Keras' CSVLogger writes it
(single process), or :func:`append_history` with the same columns (the multi-worker
loop); :func:`read_history` reads it (evaluation's training curves).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from trainer import job_layout

HISTORY_COLUMNS = ("epoch", "accuracy", "loss", "val_accuracy", "val_loss")
# The key of training_config.json (and of best_hyperparameters.json, metrics.json) holding
# the fingerprint of the data it came from (``data.DataDir.fingerprint``).
DATA_FINGERPRINT_KEY = "data_fingerprint"


def history_path(job_dir: str) -> str:
    return tf.io.gfile.join(job_dir, job_layout.HISTORY_FILE)


def write_config(job_dir: str, config: Mapping[str, Any]) -> None:
    """Writes training_config.json (see trainer/training.py for its keys)."""
    with tf.io.gfile.GFile(tf.io.gfile.join(job_dir, job_layout.CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)


def read_data_fingerprint(job_dir: str) -> str | None:
    """The data fingerprint training_config.json records; None when absent (or an older job)."""
    path = tf.io.gfile.join(job_dir, job_layout.CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f).get(DATA_FINGERPRINT_KEY)


def append_history(job_dir: str, row: Mapping[str, float]) -> None:
    """Appends one epoch to history.csv (CSVLogger's columns), writing the header first."""
    path = history_path(job_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS)
    if not tf.io.gfile.exists(path):
        writer.writeheader()
    writer.writerow({k: row[k] for k in HISTORY_COLUMNS})
    with tf.io.gfile.GFile(path, "a") as f:
        f.write(buffer.getvalue())


def read_history(job_dir: str) -> list[dict[str, float]]:
    """history.csv rows, one per epoch (the last row wins when a resumed run repeated one)."""
    with tf.io.gfile.GFile(history_path(job_dir)) as f:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    by_epoch = {int(row["epoch"]): row for row in rows}
    return [by_epoch[e] for e in sorted(by_epoch)]
