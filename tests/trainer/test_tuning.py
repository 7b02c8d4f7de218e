"""trainer/tuning.py: keras-tuner search, results, best hyperparameters, the grid-resume fix."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import tempfile
import types

import keras
import keras_tuner as kt
import numpy as np
import pytest

from trainer import data, models, task, tuning
from trainer import folds as trainer_folds
from trainer.recipe import DEFAULT_RECIPE

# keras-tuner 1.4.8 calls threading.currentThread().getName() on every oracle call.
pytestmark = pytest.mark.filterwarnings("ignore:currentThread:DeprecationWarning", "ignore:getName:DeprecationWarning")


# ---------------------------------------------------------------------------------------
# The GridSearchOracle resume bug, reproduced on the oracle alone (no training: fast).


def _grid_oracle(oracle_class, directory):
    hp = kt.HyperParameters()
    hp.Choice("a", [1, 2, 3])
    hp.Choice("b", [1, 2])
    oracle = oracle_class(objective=kt.Objective("score", "max"), hyperparameters=hp)
    oracle._set_project_dir(directory, "project")
    return oracle


def _finish(oracle, trial):
    oracle.update_trial(trial.trial_id, {"score": float(trial.trial_id)})
    trial.status = kt.engine.trial.TrialStatus.COMPLETED
    oracle.end_trial(trial)
    oracle.save()  # As BaseTuner.on_trial_end does after end_trial.


def _run_to_end(oracle):
    seen = []
    while True:
        trial = oracle.create_trial("tuner0")
        if trial.status == kt.engine.trial.TrialStatus.STOPPED:
            return seen
        seen.append(tuple(sorted(trial.hyperparameters.values.items())))
        _finish(oracle, trial)


def _kill_after(oracle_class, directory, *, finished, mid_trial):
    """Runs ``finished`` trials then, if mid_trial, starts one more: the process 'dies' there."""
    oracle = _grid_oracle(oracle_class, directory)
    done = []
    for _ in range(finished):
        trial = oracle.create_trial("tuner0")
        done.append(tuple(sorted(trial.hyperparameters.values.items())))
        _finish(oracle, trial)
    if mid_trial:
        oracle.create_trial("tuner0")
    return done


def test_stock_grid_oracle_cannot_resume_mid_trial(tmp_path):
    """Documents keras-tuner 1.4.8's bug; when it fails, upstream fixed it and the patch can go."""
    _kill_after(kt.oracles.GridSearchOracle, str(tmp_path), finished=2, mid_trial=True)
    oracle = _grid_oracle(kt.oracles.GridSearchOracle, str(tmp_path))
    oracle.reload()
    retried = oracle.create_trial("tuner0")  # The interrupted trial comes back from the retry queue...
    _finish(oracle, retried)
    with pytest.raises(KeyError):  # ...and proposing its successor looks it up in an empty linked list.
        oracle.create_trial("tuner0")


def test_stock_grid_oracle_stops_early_when_killed_between_trials(tmp_path):
    _kill_after(kt.oracles.GridSearchOracle, str(tmp_path), finished=2, mid_trial=False)
    oracle = _grid_oracle(kt.oracles.GridSearchOracle, str(tmp_path))
    oracle.reload()
    assert _run_to_end(oracle) == []  # 4 of 6 grid points silently never tried.


@pytest.mark.parametrize("finished, mid_trial", [(0, True), (2, True), (2, False), (5, True), (6, False)])
def test_resumable_grid_oracle_finishes_the_grid_exactly_once(tmp_path, finished, mid_trial):
    done = _kill_after(tuning.ResumableGridSearchOracle, str(tmp_path), finished=finished, mid_trial=mid_trial)
    oracle = _grid_oracle(tuning.ResumableGridSearchOracle, str(tmp_path))
    oracle.reload()
    rest = _run_to_end(oracle)
    assert len(done) + len(rest) == 6
    assert len(set(done + rest)) == 6  # Every grid point, none twice.
    # The same order as an uninterrupted search.
    with tempfile.TemporaryDirectory() as fresh:
        assert done + rest == _run_to_end(_grid_oracle(tuning.ResumableGridSearchOracle, fresh))


def test_resumable_grid_oracle_does_not_rerun_a_trial_killed_after_it_ended(tmp_path):
    """end_trial saves oracle.json before it forgets the trial was ongoing: a kill right then
    would put the finished trial in the retry queue on reload."""
    oracle = _grid_oracle(tuning.ResumableGridSearchOracle, str(tmp_path))
    first = oracle.create_trial("tuner0")
    oracle.update_trial(first.trial_id, {"score": 1.0})
    first.status = kt.engine.trial.TrialStatus.COMPLETED
    oracle.end_trial(first)  # Killed before the tuner's save.
    oracle.ongoing_trials = {"tuner0": oracle.trials[first.trial_id]}
    oracle.save()
    oracle = _grid_oracle(tuning.ResumableGridSearchOracle, str(tmp_path))
    oracle.reload()
    rest = _run_to_end(oracle)
    assert len(rest) == 5 and tuple(sorted(first.hyperparameters.values.items())) not in rest


def test_resumable_grid_oracle_survives_two_kills(tmp_path):
    done = _kill_after(tuning.ResumableGridSearchOracle, str(tmp_path), finished=1, mid_trial=True)
    oracle = _grid_oracle(tuning.ResumableGridSearchOracle, str(tmp_path))
    oracle.reload()
    for _ in range(2):
        trial = oracle.create_trial("tuner0")
        done.append(tuple(sorted(trial.hyperparameters.values.items())))
        _finish(oracle, trial)
    oracle.create_trial("tuner0")  # Dies again, mid-trial.
    oracle = _grid_oracle(tuning.ResumableGridSearchOracle, str(tmp_path))
    oracle.reload()
    rest = _run_to_end(oracle)
    assert len(done + rest) == 6 and len(set(done + rest)) == 6


@pytest.mark.parametrize("per_class, warned", [((10, 5), True), ((15, 15), False)])
def test_a_search_on_few_validation_examples_warns_that_its_choice_is_a_guess(caplog, per_class, warned):
    manifest = {"counts": {"written": {"validation": {"0": per_class[0], "1": per_class[1]}}}}
    run = types.SimpleNamespace(data_dir=types.SimpleNamespace(manifest=manifest), examples=data.FitExamples())
    with caplog.at_level("WARNING"):
        tuning._warn_if_few_validation_examples(run)
    warnings = [r.getMessage() for r in caplog.records if "validation loss of" in r.getMessage()]
    assert len(warnings) == int(warned)
    assert all(
        w.startswith(f"the search chose by the validation loss of {sum(per_class)} example(s)") for w in warnings
    )


@pytest.mark.parametrize("tuner_name, validation, folds", [("grid", (15, 15), 0), ("hyperband", (5, 5), 0)])
def test_tune_keeps_one_fit_a_point_on_a_large_validation_split_or_with_hyperband(tuner_name, validation, folds):
    manifest = {"counts": {"written": {"validation": {"0": validation[0], "1": validation[1]}}}}
    run = types.SimpleNamespace(data_dir=types.SimpleNamespace(manifest=manifest), examples=data.FitExamples())
    assert len(tuning.validation_folds(run, tuner_name)) == folds


@pytest.mark.parametrize("class_1_groups, folds", [(3, 3), (1, 0)])
def test_tune_keeps_one_fit_a_point_when_a_fold_would_train_without_a_class(monkeypatch, class_1_groups, folds):
    # Class 0: twelve people of one photo; class 1: people of three photos each (the largest groups,
    # spread over the folds first). With one such person, two folds would train without class 1.
    groups = [f"p{i}" for i in range(12)] + [f"q{i}" for i in range(class_1_groups) for _ in range(3)]
    n = len(groups)
    examples = trainer_folds.Examples(
        ids=np.array([f"id{i}" for i in range(n)]),
        labels=np.array([0] * 12 + [1] * (n - 12)),
        groups=np.array(groups),
        splits=np.array(["train", "validation"] * (n // 2) + ["train"] * (n % 2)),
    )
    monkeypatch.setattr(trainer_folds, "read_examples", lambda data_dir: examples)
    manifest = {"counts": {"written": {"validation": {"0": 5, "1": 5}}}}
    run = types.SimpleNamespace(data_dir=types.SimpleNamespace(manifest=manifest), examples=data.FitExamples())
    assert len(tuning.validation_folds(run, "grid")) == folds


# ---------------------------------------------------------------------------------------
# Real searches over the small data set, in process.


def test_grid_tune_runs_the_whole_grid_and_train_picks_up_the_best(rgb_dir, tmp_path, capsys):
    job_dir = str(tmp_path / "job")
    space = models.GLASSES_CNN.space("small")
    grid = tuning.grid_size({**space, "epochs": [1]})
    assert grid == 4

    task.main(
        [
            "tune",
            "--data_dir",
            rgb_dir,
            "--job_dir",
            job_dir,
            "--model",
            "glasses_cnn",
            "--search_space",
            "small",
            "--epochs",
            "1",
            "--verbose",
            "0",
        ]
    )
    printed = capsys.readouterr().out

    trials = [
        json.loads(p.read_text()) for p in sorted((tmp_path / "job/tuning/glasses_cnn_grid").glob("trial_*/trial.json"))
    ]
    assert len(trials) == grid and all(t["status"] == "COMPLETED" for t in trials)
    points = {tuple(sorted(t["hyperparameters"]["values"].items())) for t in trials}
    assert len(points) == grid
    with open(tmp_path / "job/tuning/results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == grid and {"trial", "status", "score", "filters", "units", "batch_size", "epochs"} <= set(
        rows[0]
    )
    assert [float(r["score"]) for r in rows] == sorted(float(r["score"]) for r in rows)  # val_loss: best first.
    assert "| trial | status | score |" in (tmp_path / "job/tuning/results.md").read_text()
    assert "| trial | status | score |" in printed

    best = json.loads((tmp_path / "job/best_hyperparameters.json").read_text())
    assert best["model"] == "glasses_cnn" and best["score"] == pytest.approx(float(rows[0]["score"]))
    assert best["hyperparameters"]["filters"] == int(rows[0]["filters"])

    # A rerun of the finished search trains nothing more.
    task.main(
        [
            "tune",
            "--data_dir",
            rgb_dir,
            "--job_dir",
            job_dir,
            "--model",
            "glasses_cnn",
            "--search_space",
            "small",
            "--epochs",
            "1",
            "--verbose",
            "0",
        ]
    )
    assert len(list((tmp_path / "job/tuning/glasses_cnn_grid").glob("trial_*"))) == grid

    # train reads best_hyperparameters.json: make its values differ from the preset defaults.
    best["hyperparameters"].update({"filters": 32, "units": 64, "kernel_size": 5})
    (tmp_path / "job/best_hyperparameters.json").write_text(json.dumps(best))
    task.main(["train", "--data_dir", rgb_dir, "--job_dir", job_dir, "--model", "glasses_cnn", "--verbose", "0"])
    config = json.loads((tmp_path / "job/training_config.json").read_text())
    assert config["hyperparameters"]["filters"] == 32 and config["hyperparameters"]["epochs"] == 1
    model = keras.saving.load_model(tmp_path / "job/model.keras")
    assert model.get_layer("conv").filters == 32 and model.get_layer("conv").kernel_size == (5, 5)
    assert model.get_layer("dense").units == 64


def test_train_without_tuning_uses_preset_defaults_and_epochs_override(rgb_dir, tmp_path):
    job_dir = tmp_path / "job"
    argv = ["train", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--model", "glasses_cnn", "--epochs", "1"]
    task.main([*argv, "--verbose", "0"])
    config = json.loads((job_dir / "training_config.json").read_text())
    assert config["hyperparameters"] == {**models.GLASSES_CNN.defaults, "epochs": 1}
    # A best-hyperparameters file tuned for the other model is ignored.
    (job_dir / "best_hyperparameters.json").write_text(
        json.dumps({"model": "comics_cnn", "hyperparameters": {"dropout": 0.7}})
    )
    assert tuning.read_best_hyperparameters(str(job_dir), model="glasses_cnn") is None


def test_on_comics_data_tune_has_nothing_to_search_and_train_uses_the_settled_values(rgb_dir, tmp_path, capsys):
    data_dir, job_dir = tmp_path / "comics", tmp_path / "job"
    shutil.copytree(rgb_dir, data_dir)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    (data_dir / "manifest.json").write_text(
        json.dumps({**manifest, "dataset": "comics"})
    )  # preprocess --dataset comics
    where = ["--data_dir", str(data_dir), "--job_dir", str(job_dir), "--verbose", "0"]
    task.main(["tune", *where])
    printed = capsys.readouterr()
    assert "nothing to search in the small space" in printed.out
    (line,) = [line for line in printed.err.splitlines() if "model: " in line]
    assert "model: face_cnn (default for 16x16 RGB images: " in line
    assert "for the comics data set input_norm none: " in line
    assert not (job_dir / "tuning/face_cnn_grid").exists()  # No trial was trained.
    best = json.loads((job_dir / "best_hyperparameters.json").read_text())
    assert (best["model"], best["score"], best["hyperparameters"]) == (
        "face_cnn",
        None,
        {**models.FACE_CNN.defaults, "input_norm": "none"},
    )
    task.main(["train", *where, "--epochs", "1"])
    config = json.loads((job_dir / "training_config.json").read_text())
    assert config["hyperparameters"]["input_norm"] == "none"
    model = keras.saving.load_model(job_dir / "model.keras")
    assert "local_contrast" not in {layer.name for layer in model.layers}
    task.main(["evaluate", "--data_dir", str(data_dir), "--job_dir", str(job_dir)])
    assert "tune's search space held one point, so no trial ran" in (job_dir / "eval/model_card.md").read_text()


@pytest.mark.parametrize("tuner_name", ["hyperband", "bayesian"])
def test_other_tuners_run(rgb_dir, tmp_path, tuner_name):
    job_dir = tmp_path / "job"
    argv = ["tune", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--search_space", "small", "--tuner", tuner_name]
    argv += ["--model", "glasses_cnn", "--verbose", "0"] + (
        ["--epochs", "2"] if tuner_name == "hyperband" else ["--epochs", "1", "--max_trials", "2"]
    )
    task.main(argv)
    best = json.loads((job_dir / "best_hyperparameters.json").read_text())
    assert best["tuner"] == tuner_name and not any(k.startswith("tuner/") for k in best["hyperparameters"])
    trials = list((job_dir / f"tuning/glasses_cnn_{tuner_name}").glob("trial_*/trial.json"))
    assert len(trials) >= 2


def test_results_markdown():
    table = tuning.format_markdown(
        [{"trial": "0", "score": 0.5, "units": 64}, {"trial": "1", "score": None, "units": 128}]
    )
    assert table.splitlines() == ["| trial | score | units |", "|---|---|---|", "| 0 | 0.5000 | 64 |", "| 1 |  | 128 |"]


@pytest.mark.parametrize(("space", "expected"), [("wide", "hyperband"), ("small", "grid")])
def test_wide_space_makes_tune_pick_hyperband(rgb_dir, tmp_path, monkeypatch, space, expected):
    seen = {}

    def fake_tune(**kwargs):
        seen.update(kwargs)
        return {"score": 1.0, "hyperparameters": {}}

    monkeypatch.setattr(tuning, "tune", fake_tune)
    argv = ["tune", "--data_dir", rgb_dir, "--job_dir", str(tmp_path / "job"), "--model", "glasses_cnn"]
    task.main([*argv, "--search_space", space])
    assert seen["hypermodel"].tuner_name == expected
    hypermodel = seen["hypermodel"]
    assert hypermodel.space["filters"] == (
        [50, 100, 150, 200, 250, 300] if space == "wide" else models.GLASSES_CNN.space("small")["filters"]
    )
    run = hypermodel.run
    assert run.recipe == DEFAULT_RECIPE and run.job_dir is None
    assert dataclasses.replace(run, hyperparameters={"batch_size": 8}).steps_per_epoch == 6  # 48 train images.
    # An explicit --tuner still wins.
    task.main(
        [
            "tune",
            "--data_dir",
            rgb_dir,
            "--job_dir",
            str(tmp_path / "job"),
            "--model",
            "glasses_cnn",
            "--search_space",
            space,
            "--tuner",
            "random",
        ]
    )
    assert seen["hypermodel"].tuner_name == "random"


def test_tune_cross_validates_each_point_when_the_validation_split_is_small(rgb_dir, tmp_path, capsys):
    # rgb_dir validates on 16 images (< FEW_VALIDATION_EXAMPLES): every point is fitted on 3 folds
    # of the 64 train and validation images pooled, and scored by the mean of their best val_loss.
    job_dir = tmp_path / "job"
    argv = ["tune", "--data_dir", rgb_dir, "--job_dir", str(job_dir), "--model", "glasses_cnn"]
    task.main([*argv, "--search_space", "small", "--epochs", "1", "--verbose", "0"])
    messages = [line.split(": ", 1)[-1] for line in capsys.readouterr().err.splitlines()]  # The log lines' messages.
    assert any("3-fold cross-validation over the train and validation splits' 64 examples" in m for m in messages)
    scored = [m for m in messages if m.startswith("trial scored by 3 folds")]
    assert len(scored) == tuning.grid_size(models.GLASSES_CNN.space("small"))
    assert not any("validation loss of" in m for m in messages)  # The few-examples warning: not needed.
    best = json.loads((job_dir / "best_hyperparameters.json").read_text())
    fold_losses = [json.loads(m.split("val_loss ", 1)[1]) for m in scored]
    assert best["score"] == pytest.approx(min(sum(losses) / 3 for losses in fold_losses))
