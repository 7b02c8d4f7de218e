"""Data lineage: the data fingerprint in training_config.json, the export, metrics.json and the tuning results."""

from __future__ import annotations

import json

import pytest

from trainer import data, export, task, tuning

OTHER_DATA = "0" * 64


@pytest.fixture(scope="module")
def two_data_dirs(make_data_dir):
    a = make_data_dir(
        "lineage_a", height=8, width=8, channels=3, n_per_class_split={"train": 4, "validation": 2, "test": 2}
    )
    b = make_data_dir(
        "lineage_b", height=8, width=8, channels=3, n_per_class_split={"train": 4, "validation": 2, "test": 3}
    )
    return a, b


def test_fingerprint_prefers_the_data_digest_and_is_stable_otherwise():
    assert data.DataDir("d", {"fingerprint": {"data": "abc", "files": "x"}}).fingerprint == "abc"
    today = data.DataDir("d", {"fingerprint": {"files": "f", "contents": "c", "options": "o", "about": "XOR of ..."}})
    reordered = data.DataDir("d", {"fingerprint": {"options": "o", "contents": "c", "files": "f", "about": "reworded"}})
    assert today.fingerprint == reordered.fingerprint and len(today.fingerprint) == 64
    assert (
        today.fingerprint
        != data.DataDir("d", {"fingerprint": {"files": "f", "contents": "other", "options": "o"}}).fingerprint
    )


def test_trained_on_a_evaluated_on_b_says_so(two_data_dirs, tmp_path, capsys):
    data_a, data_b = two_data_dirs
    fingerprint_a, fingerprint_b = data.DataDir.read(data_a).fingerprint, data.DataDir.read(data_b).fingerprint
    assert fingerprint_a != fingerprint_b
    job = tmp_path / "job"
    job.mkdir()
    best = {
        "model": "glasses_cnn",
        "hyperparameters": {"filters": 4, "units": 4, "batch_size": 4, "epochs": 1},
        "data_fingerprint": OTHER_DATA,
    }
    (job / "best_hyperparameters.json").write_text(json.dumps(best))
    task.main(["train", "--data_dir", data_a, "--job_dir", str(job), "--model", "glasses_cnn", "--verbose", "0"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "tuned on other data" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0]

    assert json.loads((job / "training_config.json").read_text())["data_fingerprint"] == fingerprint_a
    assert export.read_data_fingerprint(str(job / "export")) == fingerprint_a

    assert task.main(["evaluate", "--data_dir", data_a, "--job_dir", str(job)]) == 0
    assert "not the data the model was trained with" not in capsys.readouterr().out
    metrics = json.loads((job / "eval/metrics.json").read_text())
    assert metrics["same_data_as_training"] is True and metrics["data_fingerprint"] == fingerprint_a

    assert task.main(["evaluate", "--data_dir", data_b, "--job_dir", str(job)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "not the data the model was trained with" in line]
    assert len(notes) == 1
    metrics = json.loads((job / "eval/metrics.json").read_text())
    assert metrics["same_data_as_training"] is False
    assert (metrics["data_fingerprint"], metrics["training_data_fingerprint"]) == (fingerprint_b, fingerprint_a)


def test_best_hyperparameters_from_the_same_data_give_no_warning(tmp_path, capsys):
    best = {"model": "glasses_cnn", "hyperparameters": {"units": 4}, "data_fingerprint": "abc"}
    (tmp_path / "best_hyperparameters.json").write_text(json.dumps(best))
    assert tuning.read_best_hyperparameters(str(tmp_path), model="glasses_cnn", data_fingerprint="abc") == {"units": 4}
    assert "other data" not in capsys.readouterr().err
