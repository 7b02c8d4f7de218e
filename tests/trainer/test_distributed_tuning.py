"""Distributed tuning with keras-tuner's chief/worker mode: one oracle chief, two tuner workers.

The chief (KERASTUNER_TUNER_ID=chief) serves the ResumableGridSearchOracle over gRPC on
127.0.0.1 and trains nothing; the workers (tuner0, tuner1) train the trials it hands out.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys

import keras_tuner as kt
import pytest

from tests.processes import free_ports, stop_processes
from trainer import models, task, tuning

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
TUNER_IDS = ("chief", "tuner0", "tuner1")

# keras-tuner 1.4.8 calls threading.currentThread().getName() on every oracle call.
pytestmark = pytest.mark.filterwarnings("ignore:currentThread:DeprecationWarning", "ignore:getName:DeprecationWarning")


def fits(log: str) -> list[str]:
    """The hyperparameter values of each trial fit, as logged by FaceHyperModel.fit."""
    return [line.split("trial fit start: ", 1)[1] for line in log.splitlines() if "trial fit start: " in line]


@pytest.mark.slow
def test_chief_and_two_workers_cover_the_grid_exactly_once(rgb_dir, tmp_path):
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
    (port,) = free_ports(1)
    procs = {}
    with contextlib.ExitStack() as stack:
        logs = {tuner_id: stack.enter_context(open(tmp_path / f"{tuner_id}.log", "w+")) for tuner_id in TUNER_IDS}
        try:
            for tuner_id in TUNER_IDS:  # The chief first: it must be serving before the workers run out of trials.
                env = dict(
                    os.environ,
                    PYTHONPATH=str(ROOT),
                    TF_CPP_MIN_LOG_LEVEL="2",
                    KERASTUNER_TUNER_ID=tuner_id,
                    KERASTUNER_ORACLE_IP="127.0.0.1",
                    KERASTUNER_ORACLE_PORT=str(port),
                )
                env.pop("TF_CONFIG", None)
                procs[tuner_id] = subprocess.Popen(
                    [sys.executable, "-m", "trainer.task", *argv],
                    cwd=ROOT,
                    env=env,
                    stdout=logs[tuner_id],
                    stderr=subprocess.STDOUT,
                )
            codes = {tuner_id: proc.wait(timeout=TIMEOUT_S) for tuner_id, proc in procs.items()}
        finally:
            stop_processes(list(procs.values()))
        text = {}
        for tuner_id, log in logs.items():
            log.seek(0)
            text[tuner_id] = log.read()
    assert codes == dict.fromkeys(TUNER_IDS, 0), "\n\n".join(f"== {k}\n{v[-3000:]}" for k, v in text.items())

    # The workers trained the whole grid between them, no point twice; the chief trained nothing.
    assert fits(text["chief"]) == []
    worker_fits = fits(text["tuner0"]) + fits(text["tuner1"])
    assert len(worker_fits) == grid and len(set(worker_fits)) == grid

    project = job_dir / "tuning/glasses_cnn_grid"
    trials = [json.loads(p.read_text()) for p in sorted(project.glob("trial_*/trial.json"))]
    assert len(trials) == grid and all(t["status"] == "COMPLETED" for t in trials)
    assert len({json.dumps(t["hyperparameters"]["values"], sort_keys=True) for t in trials}) == grid
    assert {p.name for p in project.glob("tuner*.json")} == {"tuner0.json", "tuner1.json"}

    # best_hyperparameters.json: written once, by the chief, from the completed trials.
    writers = [tuner_id for tuner_id, log in text.items() if "wrote best hyperparameters" in log]
    assert writers == ["chief"]
    best = json.loads((job_dir / "best_hyperparameters.json").read_text())
    assert best["score"] == min(t["score"] for t in trials)  # val_loss: the lowest.
    assert "the chief writes the results" in text["tuner0"] and "the chief writes the results" in text["tuner1"]


def test_a_worker_may_not_overwrite_the_project(rgb_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(free_ports(1)[0]))
    project = tmp_path / "job/tuning/glasses_cnn_grid"
    project.mkdir(parents=True)
    (project / "oracle.json").write_text("{}")
    argv = ["tune", "--data_dir", rgb_dir, "--job_dir", str(tmp_path / "job"), "--search_space", "small", "--overwrite"]
    argv += ["--model", "glasses_cnn"]
    assert task.main(argv) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert re.search(r"only the chief .* may overwrite the project; drop --overwrite on the workers", error)
    assert (project / "oracle.json").read_text() == "{}"  # Untouched.
    assert tuning.role() == "worker"
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert tuning.role() == "chief"
    monkeypatch.delenv("KERASTUNER_ORACLE_IP")
    assert tuning.role() == "single"


def test_resumable_grid_oracle_resumes_a_chief_with_two_tuners_mid_trial(tmp_path):
    """The chief's oracle serves interleaved tuners; killed with both mid-trial, it resumes
    (both trials retried, the rest of the grid once) where the stock oracle raises KeyError."""

    def oracle_in(directory):
        hp = kt.HyperParameters()
        hp.Choice("a", [1, 2, 3])
        hp.Choice("b", [1, 2])
        oracle = tuning.ResumableGridSearchOracle(objective=kt.Objective("score", "max"), hyperparameters=hp)
        oracle._set_project_dir(str(directory), "project")
        return oracle

    def finish(oracle, trial):
        oracle.update_trial(trial.trial_id, {"score": float(trial.trial_id)})
        trial.status = kt.engine.trial.TrialStatus.COMPLETED
        oracle.end_trial(trial)
        oracle.save()

    def point(trial):
        return tuple(sorted(trial.hyperparameters.values.items()))

    oracle = oracle_in(tmp_path)
    first, second = oracle.create_trial("tuner0"), oracle.create_trial("tuner1")  # Both run at once.
    finish(oracle, second)  # tuner1 finishes first.
    third = oracle.create_trial("tuner1")
    done = [point(second)]
    oracle.save()  # The chief dies: first and third are mid-trial.

    oracle = oracle_in(tmp_path)
    oracle.reload()
    running, seen = {}, []
    while True:  # Two tuners again, alternating.
        for tuner_id in ("tuner0", "tuner1"):
            if tuner_id in running:
                finish(oracle, running.pop(tuner_id))
            trial = oracle.create_trial(tuner_id)
            if trial.status == kt.engine.trial.TrialStatus.RUNNING:
                running[tuner_id] = trial
                seen.append(point(trial))
        if not running:
            break
    assert {point(first), point(third)} <= set(seen[:2])  # The interrupted trials come back first.
    assert len(done + seen) == 6 and len(set(done + seen)) == 6
