"""SIGKILL mid-run, restart with the same command: tuning (grid, random) and training resume.

The first run goes through a small wrapper that makes the process SIGKILL itself in the
middle of a chosen ``Model.fit`` call (a deterministic point, no timing race); the restart
is the plain CLI. The slowest tests of the trainer suite (each starts two processes).
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from trainer import models, tuning

ROOT = pathlib.Path(__file__).resolve().parents[2]

KILL_WRAPPER = r"""
import os, signal, sys
import keras

KILL_AT_FIT = int(os.environ["KILL_AT_FIT"])        # the n-th Model.fit call of the process
KILL_AT_EPOCH = int(os.environ["KILL_AT_EPOCH"])    # dies after the first batch of this epoch
_fit, _calls = keras.Model.fit, [0]


class _Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == KILL_AT_EPOCH:
            os.kill(os.getpid(), signal.SIGKILL)


def fit(self, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == KILL_AT_FIT:
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [_Kill()]
    return _fit(self, *args, **kwargs)


keras.Model.fit = fit
from trainer import task

sys.exit(task.main(sys.argv[1:]))
"""

pytestmark = pytest.mark.slow


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env.pop("TF_CONFIG", None)
    return env


def _run_killed(tmp_path, argv, *, kill_at_fit, kill_at_epoch):
    wrapper = tmp_path / "kill_wrapper.py"
    wrapper.write_text(KILL_WRAPPER)
    proc = subprocess.run(
        [sys.executable, str(wrapper), *argv],
        cwd=ROOT,
        env=_env(KILL_AT_FIT=str(kill_at_fit), KILL_AT_EPOCH=str(kill_at_epoch)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _run(argv):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.task", *argv], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _fits(log: str) -> list[str]:
    """The hyperparameter values of each trial fit, as logged by FaceHyperModel.fit."""
    return [line.split("trial fit start: ", 1)[1] for line in log.splitlines() if "trial fit start: " in line]


def _fit_inside_trial(trial: int) -> int:
    """The Model.fit call of the second fold of the n-th trial: rgb_dir validates on 16 images, so
    tune fits every point on VALIDATION_FOLDS folds (tuning.validation_folds); a kill there
    comes after one of the trial's folds has finished."""
    return (trial - 1) * tuning.VALIDATION_FOLDS + 2


def _completed_trials(project_dir: pathlib.Path) -> list[dict]:
    trials = [json.loads(p.read_text()) for p in sorted(project_dir.glob("trial_*/trial.json"))]
    return [t for t in trials if t["status"] == "COMPLETED"]


def test_grid_tuning_resumes_after_sigkill(rgb_dir, tmp_path):
    job_dir = tmp_path / "job"
    argv = [
        "tune",
        "--data_dir",
        rgb_dir,
        "--job_dir",
        str(job_dir),
        "--model",
        "glasses_cnn",
        "--search_space",
        "small",
        "--epochs",
        "1",
        "--verbose",
        "0",
    ]
    grid = tuning.grid_size({**models.GLASSES_CNN.space("small"), "epochs": [1]})
    assert grid == 4

    killed = _run_killed(tmp_path, argv, kill_at_fit=_fit_inside_trial(3), kill_at_epoch=0)  # dies inside trial 3
    assert f"{tuning.VALIDATION_FOLDS}-fold cross-validation" in killed
    first = _fits(killed)
    assert len(first) == 3
    project = job_dir / "tuning/glasses_cnn_grid"
    assert len(_completed_trials(project)) == 2
    assert not (job_dir / "best_hyperparameters.json").exists()

    second = _fits(_run(argv))  # stock keras-tuner 1.4.8 raises KeyError here
    completed = _completed_trials(project)
    assert len(completed) == grid
    assert len({json.dumps(t["hyperparameters"]["values"], sort_keys=True) for t in completed}) == grid
    # No trial runs twice: only the interrupted one is run again, finished ones are not.
    assert second[0] == first[2]
    assert len(second) == grid - 2 and not set(second) & set(first[:2])
    assert len(set(first[:2] + second)) == grid
    best = json.loads((job_dir / "best_hyperparameters.json").read_text())
    assert best["model"] == "glasses_cnn"
    with open(job_dir / "tuning/results.csv") as f:
        assert len(list(csv.DictReader(f))) == grid


def test_random_tuning_resumes_after_sigkill(rgb_dir, tmp_path):
    job_dir = tmp_path / "job"
    argv = ["tune", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--tuner", "random", "--max_trials", "3"]
    argv += ["--model", "glasses_cnn", "--search_space", "small", "--epochs", "1", "--verbose", "0"]
    first = _fits(_run_killed(tmp_path, argv, kill_at_fit=_fit_inside_trial(2), kill_at_epoch=0))
    assert len(first) == 2
    second = _fits(_run(argv))
    assert second[0] == first[1] and len(second) == 2 and first[0] not in second
    completed = _completed_trials(job_dir / "tuning/glasses_cnn_random")
    assert len(completed) == 3
    assert len({json.dumps(t["hyperparameters"]["values"], sort_keys=True) for t in completed}) == 3


def test_training_resumes_from_the_last_epoch_after_sigkill(rgb_dir, tmp_path):
    job_dir = tmp_path / "job"
    argv = ["train", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--epochs", "4", "--verbose", "2"]
    argv += ["--model", "glasses_cnn"]
    _run_killed(tmp_path, argv, kill_at_fit=1, kill_at_epoch=2)  # epochs 0 and 1 done
    assert (job_dir / "backup/training_metadata.json").exists()
    assert json.loads((job_dir / "backup/training_metadata.json").read_text())["epoch"] == 2
    assert not (job_dir / "model.keras").exists()

    log = _run(argv)
    assert "resuming the interrupted run" in log
    assert "Epoch 1/4" not in log and "Epoch 3/4" in log  # restarted at the third epoch
    with open(job_dir / "history.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [0, 1, 2, 3]
    assert sorted(p.name for p in (job_dir / "checkpoints").iterdir()) == [
        f"epoch-00{i}.weights.h5" for i in range(1, 5)
    ]
    assert not (job_dir / "backup").exists()  # BackupAndRestore cleans up after a finished run.
    assert (job_dir / "model.keras").exists() and (job_dir / "export/saved_model.pb").exists()
