"""Weights a later run reads back: written whole, and checked before they are trusted.

A run killed while a checkpoint was being written must not leave a 0-byte or half-written
``.weights.h5`` that the next run takes for a checkpoint, crashes on, and (Keras'
BackupAndRestore deleting its folder at the end of a fit) loses the backup with. Here:

* :func:`save_weights` writes through :mod:`trainer.atomic` (a temporary name, renamed when
  whole), so a kill leaves the previous file or none, never a partial one under the name;
* :func:`problem` checks a file before it is read (every HDF5 dataset readable, every zip
  member's CRC for ``.keras``, JSON parses): a bad one, such as a file an older version or
  another tool left, is skipped in favour of the last good one, with one log line;
* :class:`BackupAndRestore` keeps the last two epochs' backups (``backup/epoch-N.weights.h5``
  and ``training_metadata.json``), restores the newest good one, and never deletes the
  backup itself: the caller does, once the final model is saved.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import zipfile
from typing import Any

import h5py
import keras
import tensorflow as tf

from pipelines import atomic as pipelines_atomic
from trainer import atomic, job_layout

_BACKUP_WEIGHTS = re.compile(r"^epoch-(\d+)\.weights\.h5$")
BACKUPS_KEPT = 2  # The newest and the one before it, for when the newest turns out bad.


def problem(path: str) -> str | None:
    """Why the checkpoint file ``path`` cannot be trusted, or None when it reads whole.

    ``.h5``: every dataset is read; ``.keras`` (a zip): every member's CRC is checked;
    ``.json``: it parses. The check is of the file's form, not of what it holds.
    """
    if not tf.io.gfile.exists(path):
        return "missing"
    if tf.io.gfile.isdir(path):
        return "a folder, not a file"
    size = tf.io.gfile.stat(path).length
    if size == 0:
        return "empty (0 bytes)"
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            if path.endswith(".h5"):
                with h5py.File(f, "r") as h5:
                    h5.visititems(_read_dataset)
            elif path.endswith(".keras"):
                with zipfile.ZipFile(f) as archive:
                    bad = archive.testzip()
                    if bad is not None:
                        return f"{bad} fails its CRC"
            elif path.endswith(".json"):
                json.loads(f.read())
    except Exception as e:  # h5py, zipfile and json each raise their own kinds.
        return f"unreadable ({size} bytes): {type(e).__name__}: {str(e)[:120]}"
    return None


def _read_dataset(_: str, item: h5py.Group | h5py.Dataset) -> None:
    if isinstance(item, h5py.Dataset):
        item[()]  # Reads every byte of it; returning None keeps visititems going.


def trusted(path: str, what: str) -> bool:
    """True when ``path`` exists and :func:`problem` finds nothing; one warning line when it is bad."""
    reason = problem(path)
    if reason is None:
        return True
    if reason != "missing":
        logging.warning("skipping %s %s: %s", what, path, reason)
    return False


def read_json(path: str, what: str) -> Any | None:
    """The JSON in ``path``, or None when it is missing or :func:`trusted` finds it bad (one warning line)."""
    if not trusted(path, what):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def save_weights(model: keras.Model, path: str) -> None:
    """``model.save_weights(path)``, whole or not at all."""
    with atomic.writing(path) as temporary:
        model.save_weights(temporary)


def remove_stale_temporaries(folder: str) -> None:
    """Deletes the temporary files and folders (pipelines/atomic.py's names) a killed run left in ``folder``.

    Only one run writes a job folder at a time (pipelines/locks.py), so they are a dead run's;
    files facepipe did not name so are left alone.
    """
    if not tf.io.gfile.isdir(folder):
        return
    for name in tf.io.gfile.listdir(folder):
        path = posixpath.join(folder, name)
        if pipelines_atomic.final_name(name) is not None:
            logging.info("removing %s (left by a killed run)", path)
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)  # A folder being written: an export.
            else:
                tf.io.gfile.remove(path)


def remove_stale_job_temporaries(job_dir: str) -> None:
    """:func:`remove_stale_temporaries` in every folder of ``job_dir`` (a kill as model.keras, the
    export, an ensemble member, eval/, a fold or a tuning project's oracle.json was written), but
    a tuning project's trial folders: the workers of a distributed search write there beside
    the chief, which holds the lock."""
    if not tf.io.gfile.isdir(job_dir):
        return
    root = job_dir.rstrip("/") + "/"
    for folder, _, _ in list(tf.io.gfile.walk(job_dir)):
        parts = (folder.rstrip("/") + "/").removeprefix(root).split("/")
        if not (parts[0] == job_layout.TUNING_DIR and len(parts) > 3):  # tuning/PROJECT/TRIAL/...
            remove_stale_temporaries(folder)


def backup_epochs(backup_dir: str) -> list[int]:
    """The epochs (numbers of epochs done) that ``backup_dir`` holds weights for, newest first."""
    if not tf.io.gfile.isdir(backup_dir):
        return []
    found = (_BACKUP_WEIGHTS.match(name) for name in tf.io.gfile.listdir(backup_dir))
    return sorted((int(m.group(1)) for m in found if m), reverse=True)


def has_backup(backup_dir: str) -> bool:
    """Whether a killed run left a backup to resume from (good or bad: the restore judges)."""
    metadata = posixpath.join(backup_dir, job_layout.BACKUP_METADATA_FILE)
    return bool(backup_epochs(backup_dir)) or tf.io.gfile.exists(metadata)


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, kill-safe: whole files, the last two epochs, the newest good one restored.

    At each epoch's end the weights (with the optimizer's state) go to
    ``backup/epoch-N.weights.h5`` (N epochs done) and then ``training_metadata.json``
    (``{"epoch": N, "batch": 0}``, as Keras writes it), each whole; older epochs than the
    last two are then deleted. At the fit's start the newest backup that reads whole is
    restored; a bad one is skipped with one log line. Nothing is deleted at the end.
    """

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, delete_checkpoint=False)

    def _load_model(self) -> None:
        for epoch in backup_epochs(self.backup_dir):
            path = posixpath.join(self.backup_dir, job_layout.BACKUP_WEIGHTS_FILE.format(epoch=epoch))
            if not trusted(path, "backup"):
                continue
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(path)
            self.model._initial_epoch = epoch  # What Keras' own restore sets.
            logging.info("restored %s: resuming after epoch %d", path, epoch)
            return
        if tf.io.gfile.isdir(self.backup_dir):
            logging.warning("no usable backup in %s: training from the first epoch", self.backup_dir)

    def _save_model(self) -> None:
        tf.io.gfile.makedirs(self.backup_dir)
        epoch = self._current_epoch
        save_weights(self.model, posixpath.join(self.backup_dir, job_layout.BACKUP_WEIGHTS_FILE.format(epoch=epoch)))
        metadata = json.dumps({"epoch": epoch, "batch": self._last_batch_seen})
        atomic.write(posixpath.join(self.backup_dir, job_layout.BACKUP_METADATA_FILE), metadata)
        for old in backup_epochs(self.backup_dir)[BACKUPS_KEPT:]:
            tf.io.gfile.remove(posixpath.join(self.backup_dir, job_layout.BACKUP_WEIGHTS_FILE.format(epoch=old)))


class EpochCheckpoint(keras.callbacks.Callback):
    """Every epoch's weights to ``pattern.format(epoch=epoch + 1)``, whole (ModelCheckpoint's weights-only files)."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = pattern

    def on_epoch_end(self, epoch, logs=None):
        save_weights(self.model, self.pattern.format(epoch=epoch + 1))
