"""trainer/tuner_files.py: a resumed search skips keras-tuner files that do not read, and finishes."""

from __future__ import annotations

import json
import logging
import shutil

import keras_tuner as kt
import pytest

from trainer import task, tuner_files, tuning

# keras-tuner 1.4.8 calls threading.currentThread().getName() on every oracle call.
pytestmark = pytest.mark.filterwarnings("ignore:currentThread:DeprecationWarning", "ignore:getName:DeprecationWarning")

GRID = 6  # Points of _oracle's space.


def _oracle(oracle_class, directory, **kwargs):
    hp = kt.HyperParameters()
    hp.Choice("a", [1, 2, 3])
    hp.Choice("b", [1, 2])
    oracle = oracle_class(objective=kt.Objective("score", "max"), hyperparameters=hp, **kwargs)
    oracle._set_project_dir(directory, "project")
    return oracle


def _point(trial):
    return tuple(sorted(trial.hyperparameters.values.items()))


def _run(oracle, trials=None):
    """Runs ``trials`` trials (all: until the oracle stops) and finishes each; returns their points."""
    done = []
    while trials is None or len(done) < trials:
        trial = oracle.create_trial("tuner0")
        if trial.status == kt.engine.trial.TrialStatus.STOPPED:
            break
        oracle.update_trial(trial.trial_id, {"score": float(len(done))})
        trial.status = kt.engine.trial.TrialStatus.COMPLETED
        oracle.end_trial(trial)
        oracle.save()
        done.append(_point(trial))
    return done


def _spoil(path, how):
    """Spoils keras-tuner's file ``path`` (a pathlib.Path) as a kill, a full disk or a person might."""
    if how == "zero_bytes":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif how == "not_a_state":
        path.write_text(json.dumps(["not", "a", "state"]))
    elif how == "missing":
        path.unlink()
    elif how == "folder_gone":
        shutil.rmtree(path.parent)


def _readable_trials(directory):
    points = []
    for path in sorted((directory / "project").glob("trial_*/trial.json")):
        try:
            state = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(state, dict) and state.get("status") == "COMPLETED":
            points.append(tuple(sorted(state["hyperparameters"]["values"].items())))
    return points


@pytest.mark.parametrize("how", ["zero_bytes", "truncated", "not_a_state", "missing", "folder_gone"])
@pytest.mark.parametrize("spoiled", ["0000", "0001", "0002"])  # The grid's first point, one inside, the last run.
def test_a_trial_file_that_does_not_read_is_skipped_and_its_point_tried_again(tmp_path, caplog, spoiled, how):
    _run(_oracle(tuning.ResumableGridSearchOracle, str(tmp_path)), trials=3)
    _spoil(tmp_path / f"project/trial_{spoiled}/trial.json", how)

    oracle = _oracle(tuning.ResumableGridSearchOracle, str(tmp_path))
    with caplog.at_level(logging.WARNING):
        oracle.reload()
    named = [
        r for r in caplog.records if f"trial_{spoiled}/" in r.getMessage() or f"trial {spoiled} " in r.getMessage()
    ]
    assert len(named) == 1  # One line names it.
    assert tuner_files.is_placeholder(oracle.trials[spoiled])
    _run(oracle)

    points = _readable_trials(tmp_path)
    assert len(points) == GRID and len(set(points)) == GRID  # Every grid point, none twice.
    # No new trial took the skipped trial's id (which would overwrite its files).
    assert len(list((tmp_path / "project").glob("trial_*"))) == GRID + (how != "folder_gone")


@pytest.mark.parametrize("how", ["zero_bytes", "truncated", "not_a_state", "missing"])
@pytest.mark.parametrize("mid_trial", [False, True])
def test_an_oracle_file_that_does_not_read_is_rebuilt_from_the_trials(tmp_path, caplog, how, mid_trial):
    oracle = _oracle(tuning.ResumableGridSearchOracle, str(tmp_path))
    done = _run(oracle, trials=2)
    if mid_trial:
        oracle.create_trial("tuner0")  # Killed while it runs.
    _spoil(tmp_path / "project/oracle.json", how)

    oracle = _oracle(tuning.ResumableGridSearchOracle, str(tmp_path))
    with caplog.at_level(logging.WARNING):
        oracle.reload()
    assert "rebuilding the search's state" in caplog.text
    rest = _run(oracle)
    assert len(done + rest) == GRID and len(set(done + rest)) == GRID


@pytest.mark.parametrize("oracle_class", [kt.oracles.RandomSearchOracle, kt.oracles.BayesianOptimizationOracle])
@pytest.mark.parametrize("spoiled", ["trial_1/trial.json", "oracle.json"])
def test_a_random_search_still_runs_max_trials_readable_trials(tmp_path, oracle_class, spoiled):
    _run(_oracle(oracle_class, str(tmp_path), max_trials=4, seed=1), trials=2)
    _spoil(tmp_path / "project" / spoiled, "zero_bytes")
    oracle = _oracle(oracle_class, str(tmp_path), max_trials=4, seed=1)
    oracle.reload()
    _run(oracle)
    points = _readable_trials(tmp_path)
    assert len(points) == 4 and len(set(points)) == 4


@pytest.fixture(scope="module")
def tuned_job(rgb_dir, tmp_path_factory):
    """A job with a finished two-trial grid search on the 16x16 RGB data."""
    job_dir = tmp_path_factory.mktemp("tuned_job")
    assert task.main(_tune_argv(rgb_dir, job_dir)) == 0
    return job_dir


def _tune_argv(rgb_dir, job_dir, max_trials=2):
    flags = ["--search_space", "small", "--epochs", "1", "--max_trials", str(max_trials), "--verbose", "0"]
    return ["tune", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--model", "glasses_cnn", *flags]


@pytest.mark.parametrize(
    "spoiled, how",
    [
        ("trial_1/trial.json", "zero_bytes"),
        ("oracle.json", "truncated"),
        ("tuner0.json", "zero_bytes"),
        ("tuner0.json", "missing"),
    ],
)
def test_tune_resumes_over_a_spoiled_project_file(rgb_dir, tuned_job, tmp_path, capsys, spoiled, how):
    job_dir = tmp_path / "job"
    shutil.copytree(tuned_job, job_dir)
    project = job_dir / "tuning/glasses_cnn_grid"
    _spoil(project / spoiled, how)

    assert task.main(_tune_argv(rgb_dir, job_dir, max_trials=3)) == 0
    assert "Traceback" not in capsys.readouterr().err
    states = [json.loads(p.read_text()) for p in project.glob("trial_*/trial.json") if p.stat().st_size]
    completed = [tuple(sorted(s["hyperparameters"]["values"].items())) for s in states if s["status"] == "COMPLETED"]
    assert len(completed) == 3 and len(set(completed)) == 3  # Nothing ran twice, no trial was overwritten.
    best = json.loads((job_dir / "best_hyperparameters.json").read_text())
    assert best["trial_id"] in {p.parent.name.removeprefix("trial_") for p in project.glob("trial_*/trial.json")}


@pytest.mark.parametrize("content", ["", '{"model": "glasses_cnn", "hyperp', "[1, 2]", '{"model": "glasses_cnn"}'])
def test_train_skips_best_hyperparameters_that_do_not_read(rgb_dir, tmp_path, capsys, content):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "best_hyperparameters.json").write_text(content)
    argv = ["train", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--model", "glasses_cnn", "--epochs", "1"]
    assert task.main([*argv, "--verbose", "0"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "skipping tuning results" in err
    config = json.loads((job_dir / "training_config.json").read_text())
    assert config["hyperparameters"]["filters"] == tuning.models.GLASSES_CNN.defaults["filters"]
    assert (job_dir / "best_hyperparameters.json").read_text() == content  # Left as it was.
