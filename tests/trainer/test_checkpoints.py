"""Checkpoints a later run reads back: whole files, bad ones skipped, and kills at the moment a file appears.

The kill tests start the real CLI, watch the job folder for a named file (a checkpoint's
temporary name while it is being written, or its final name the instant it is renamed)
and SIGKILL the process by its PID then; the rerun is the same command.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from trainer import checkpoints, job_layout, records, training

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.01), loss="mse")
    return model


def _data():
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    return x, x[:, :2]


def test_problem_tells_whole_files_from_empty_truncated_and_damaged_ones(tmp_path):
    model = _tiny_model()
    whole = str(tmp_path / "whole.weights.h5")
    checkpoints.save_weights(model, whole)
    assert checkpoints.problem(whole) is None
    assert checkpoints.problem(str(tmp_path / "absent.weights.h5")) == "missing"
    empty = tmp_path / "empty.weights.h5"
    empty.write_bytes(b"")
    assert checkpoints.problem(str(empty)) == "empty (0 bytes)"
    truncated = tmp_path / "truncated.weights.h5"
    truncated.write_bytes(pathlib.Path(whole).read_bytes()[:96])  # What a kill mid-write left.
    assert checkpoints.problem(str(truncated)).startswith("unreadable (96 bytes)")

    saved = tmp_path / "model.keras"
    model.save(saved)
    assert checkpoints.problem(str(saved)) is None
    cut = tmp_path / "cut.keras"
    cut.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    assert checkpoints.problem(str(cut)).startswith("unreadable")
    (tmp_path / "half.json").write_text('{"model": "glas')
    assert checkpoints.problem(str(tmp_path / "half.json")).startswith("unreadable")


def test_save_weights_leaves_the_previous_file_when_the_write_fails(tmp_path, monkeypatch):
    model = _tiny_model()
    path = str(tmp_path / "epoch-001.weights.h5")
    checkpoints.save_weights(model, path)
    before = pathlib.Path(path).read_bytes()

    def fail(self, filepath, **kwargs):
        pathlib.Path(filepath).write_bytes(b"\x89HDF\r\n")  # Half a file, then the disk is full.
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", fail)
    with pytest.raises(OSError):
        checkpoints.save_weights(model, path)
    assert pathlib.Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["epoch-001.weights.h5"]  # No temporary file left.


def test_backup_restores_the_newest_whole_epoch_and_skips_a_bad_one(tmp_path, caplog):
    x, y = _data()
    backup_dir = str(tmp_path / "backup")
    model = _tiny_model()
    model.fit(x, y, epochs=3, verbose=0, callbacks=[checkpoints.BackupAndRestore(backup_dir)])
    # The last two epochs are kept; the backup outlives the fit (the caller deletes it).
    assert checkpoints.backup_epochs(backup_dir) == [3, 2]
    newest = tmp_path / "backup" / job_layout.BACKUP_WEIGHTS_FILE.format(epoch=3)
    newest.write_bytes(newest.read_bytes()[:96])

    resumed = _tiny_model()
    with caplog.at_level(logging.INFO):
        history = resumed.fit(x, y, epochs=5, verbose=0, callbacks=[checkpoints.BackupAndRestore(backup_dir)])
    assert len(history.history["loss"]) == 3  # Epochs 3, 4 and 5: resumed after epoch 2.
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping backup")]
    assert len(skipped) == 1 and "epoch-3.weights.h5" in skipped[0]
    assert checkpoints.backup_epochs(backup_dir) == [5, 4]


def test_a_backup_with_no_whole_file_trains_from_the_first_epoch(tmp_path, caplog):
    x, y = _data()
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / job_layout.BACKUP_WEIGHTS_FILE.format(epoch=2)).write_bytes(b"")
    with caplog.at_level(logging.INFO):
        history = _tiny_model().fit(x, y, epochs=3, verbose=0, callbacks=[checkpoints.BackupAndRestore(str(backup))])
    assert len(history.history["loss"]) == 3
    assert any("no usable backup" in r.getMessage() for r in caplog.records)


def test_stale_temporaries_of_a_killed_run_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".epoch-002.weights.h5.facepipe-0123456789abcdef.tmp.weights.h5").write_bytes(b"half")
    (tmp_path / "epoch-001.weights.h5").write_bytes(b"kept")
    (tmp_path / ".notes.txt.facepipe-draft.tmp").write_text("not ours")
    checkpoints.remove_stale_temporaries(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".notes.txt.facepipe-draft.tmp", "epoch-001.weights.h5"]


def test_an_ensemble_member_whose_model_does_not_read_whole_is_not_reused(tmp_path, caplog):
    member = tmp_path / "member-0"
    member.mkdir()
    (member / job_layout.MODEL_FILE).write_bytes(b"PK\x03\x04")
    (member / job_layout.CONFIG_FILE).write_text('{"model": "glasses_cnn"}')
    with caplog.at_level(logging.WARNING):
        assert training._trained_member(str(member), {"model": "glasses_cnn"}) is None
    assert any("skipping ensemble member" in r.getMessage() for r in caplog.records)


# --- Kill tests: the real CLI, SIGKILLed the moment a named file appears. ---


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    return env


def kill_when_file_appears(argv: list[str], pattern: str, root: pathlib.Path, *, timeout: float = 300) -> str:
    """Runs the CLI with ``argv`` and SIGKILLs it (by PID) as soon as ``root.glob(pattern)`` finds a file."""
    log = root.parent / f"killed-{len(list(root.parent.glob('killed-*')))}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "trainer.task", *argv], cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        try:
            while not any(root.glob(pattern)):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{pattern} never appeared under {root}:\n{log.read_text()[-3000:]}")
                time.sleep(0.002)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    return log.read_text()


def _run(argv: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.task", *argv], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _epochs(job_dir: pathlib.Path) -> list[int]:
    """The epochs of history.csv as read back (a repeated epoch's last row wins)."""
    return [int(row["epoch"]) for row in records.read_history(str(job_dir))]


@pytest.mark.slow
@pytest.mark.parametrize(
    "pattern",
    [
        "backup/.epoch-2.weights.h5.facepipe-*.tmp.weights.h5",  # The second epoch's backup, while it is being written.
        "checkpoints/epoch-002.weights.h5",  # The instant the second epoch's checkpoint is renamed.
    ],
)
def test_training_killed_as_a_checkpoint_file_appears_resumes(rgb_dir, tmp_path, pattern):
    job_dir = tmp_path / "job"
    argv = ["train", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--epochs", "4", "--verbose", "2"]
    argv += ["--model", "glasses_cnn"]  # The seed's preset: small and quick.
    kill_when_file_appears(argv, pattern, job_dir)
    assert not (job_dir / job_layout.MODEL_FILE).exists()

    log = _run(argv)
    assert "resuming the interrupted run" in log
    assert "Epoch 1/4" not in log  # Resumed after the first or second epoch, not from scratch.
    assert _epochs(job_dir) == [0, 1, 2, 3]
    assert sorted(p.name for p in (job_dir / job_layout.CHECKPOINT_DIR).iterdir()) == [
        job_layout.EPOCH_WEIGHTS_FILE.format(epoch=i) for i in range(1, 5)
    ]
    assert not (job_dir / job_layout.BACKUP_DIR).exists()
    assert checkpoints.problem(str(job_dir / job_layout.MODEL_FILE)) is None


@pytest.mark.slow
def test_training_resumes_past_truncated_files_a_kill_left_without_losing_the_backup(rgb_dir, tmp_path):
    job_dir = tmp_path / "job"
    argv = ["train", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--epochs", "4", "--verbose", "2"]
    argv += ["--model", "glasses_cnn"]  # The seed's preset: small and quick.
    kill_when_file_appears(argv, "backup/epoch-3.weights.h5", job_dir)
    # What an older writer killed mid-write left: the newest backup cut to 96 bytes, an
    # epoch checkpoint of 0 bytes (the best epoch's, read back at the end).
    newest = job_dir / "backup" / job_layout.BACKUP_WEIGHTS_FILE.format(epoch=3)
    newest.write_bytes(newest.read_bytes()[:96])
    for epoch in (1, 2, 3):
        (job_dir / job_layout.CHECKPOINT_DIR / job_layout.EPOCH_WEIGHTS_FILE.format(epoch=epoch)).write_bytes(b"")

    log = _run([*argv, "--patience", "0"])
    assert "Epoch 3/4" in log and "Epoch 2/4" not in log  # Resumed from epoch 2's backup.
    assert sum("skipping backup" in line for line in log.splitlines()) == 1
    assert _epochs(job_dir) == [0, 1, 2, 3]
    assert (job_dir / job_layout.MODEL_FILE).exists()


@pytest.mark.slow
def test_tuning_killed_as_a_trial_checkpoint_is_written_resumes(rgb_dir, tmp_path):
    job_dir = tmp_path / "job"
    argv = ["tune", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--search_space", "small"]
    argv += ["--model", "glasses_cnn"]  # The seed's preset: small and quick.
    argv += ["--epochs", "1", "--verbose", "0"]
    kill_when_file_appears(argv, "tuning/*/trial_0001/.checkpoint.weights.h5.facepipe-*", job_dir)
    assert not (job_dir / job_layout.BEST_HPARAMS_FILE).exists()

    _run(argv)
    project = job_dir / job_layout.TUNING_DIR / job_layout.tuning_project("glasses_cnn", "grid")
    trials = [json.loads(p.read_text()) for p in sorted(project.glob("trial_*/trial.json"))]
    assert [t["status"] for t in trials] == ["COMPLETED"] * 4  # The grid of 4, each trial once.
    for trial in trials:
        assert checkpoints.problem(str(project / f"trial_{trial['trial_id']}" / "checkpoint.weights.h5")) is None
    assert json.loads((job_dir / job_layout.BEST_HPARAMS_FILE).read_text())["model"] == "glasses_cnn"


@pytest.mark.slow
def test_an_ensemble_killed_in_its_second_member_reuses_the_first_and_resumes_the_second(rgb_dir, tmp_path):
    job_dir = tmp_path / "job"
    argv = ["train", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--epochs", "2", "--ensemble", "2"]
    argv += ["--model", "glasses_cnn"]  # The seed's preset: small and quick.
    argv += ["--verbose", "2"]
    kill_when_file_appears(argv, "members/member-1/backup/epoch-1.weights.h5", job_dir)

    log = _run(argv)
    assert "ensemble member 1 of 2: reusing" in log
    assert "restored" in log and "resuming after epoch 1" in log
    assert _epochs(job_dir / job_layout.member_dir(1)) == [0, 1]
    assert checkpoints.problem(str(job_dir / job_layout.MODEL_FILE)) is None


def test_a_killed_runs_temporaries_anywhere_in_the_job_are_removed_but_in_the_trial_folders(tmp_path):
    job = tmp_path / "job"
    export = job / ".export.facepipe-0123456789abcdef.tmp"  # A folder: the export being written.
    (export / "variables").mkdir(parents=True)
    (job / ".model.keras.facepipe-0123456789abcdef.tmp.keras").write_bytes(b"half")
    (job / "members" / "member-1").mkdir(parents=True)
    (job / "members" / "member-1" / ".model.keras.facepipe-fedcba9876543210.tmp.keras").write_bytes(b"half")
    (job / "eval").mkdir()
    (job / "eval" / ".metrics.json.facepipe-0123456789abcdef.tmp").write_text("{")
    trial = job / "tuning" / "glasses_cnn_grid" / "trial_0001"
    trial.mkdir(parents=True)
    (trial / ".checkpoint.weights.h5.facepipe-0123456789abcdef.tmp.weights.h5").write_bytes(b"a worker's")
    (trial.parent / ".oracle.json.facepipe-0123456789abcdef.tmp").write_text("{")  # The chief's.
    (job / "model.keras").write_bytes(b"kept")
    (job / ".notes.txt.facepipe-draft.tmp").write_text("not ours")
    checkpoints.remove_stale_job_temporaries(str(job))
    assert sorted(str(p.relative_to(job)) for p in job.rglob("*") if p.is_file()) == [
        ".notes.txt.facepipe-draft.tmp",
        "model.keras",
        "tuning/glasses_cnn_grid/trial_0001/.checkpoint.weights.h5.facepipe-0123456789abcdef.tmp.weights.h5",
    ]
    assert not export.exists()


@pytest.mark.slow
def test_training_killed_as_its_export_is_written_leaves_no_temporary_after_the_rerun(rgb_dir, tmp_path):
    job_dir = tmp_path / "job"
    argv = ["train", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--epochs", "1", "--verbose", "0"]
    argv += ["--model", "glasses_cnn"]  # The seed's preset: small and quick.
    kill_when_file_appears(argv, ".export.facepipe-*.tmp/saved_model.pb", job_dir)
    _run(argv)
    assert [p.name for p in job_dir.rglob("*.facepipe-*")] == []
    assert checkpoints.problem(str(job_dir / job_layout.MODEL_FILE)) is None
    assert (job_dir / job_layout.EXPORT_DIR / "saved_model.pb").exists()
