"""trainer/task.py: the CLI picks the preset from the manifest unless --model says otherwise."""

from __future__ import annotations

import json

import keras
import pytest

from trainer import task


@pytest.fixture(scope="module")
def gray_dir(make_data_dir):
    return make_data_dir(
        "gray24", height=24, width=24, channels=1, n_per_class_split={"train": 24, "validation": 8, "test": 8}
    )


def test_grayscale_data_defaults_to_comics_cnn_end_to_end(gray_dir, tmp_path, capsys):
    job_dir = tmp_path / "job"
    task.main(["train", "--data_dir", gray_dir, "--job_dir", str(job_dir), "--epochs", "1", "--verbose", "0"])
    assert "serving export in" in capsys.readouterr().out
    config = json.loads((job_dir / "training_config.json").read_text())
    assert config["model"] == "comics_cnn" and config["image_shape"] == [24, 24, 1]
    model = keras.saving.load_model(job_dir / "model.keras")
    assert model.input_shape == (None, 24, 24, 1) and model.output_shape == (None, 2)
    task.main(["evaluate", "--data_dir", gray_dir, "--job_dir", str(job_dir)])
    metrics = json.loads((job_dir / "eval/metrics.json").read_text())
    assert metrics["num_examples"] == 16 and 0.0 <= metrics["accuracy"] <= 1.0


def test_explicit_model_flag_wins_and_shape_comes_from_the_manifest(gray_dir, tmp_path):
    job_dir = tmp_path / "job"
    task.main(
        [
            "train",
            "--data_dir",
            gray_dir,
            "--job_dir",
            str(job_dir),
            "--model",
            "glasses_cnn",
            "--epochs",
            "1",
            "--verbose",
            "0",
        ]
    )
    assert json.loads((job_dir / "training_config.json").read_text())["model"] == "glasses_cnn"
    assert keras.saving.load_model(job_dir / "model.keras").input_shape == (None, 24, 24, 1)


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        task.main(["train", "--job_dir", str(tmp_path)])  # --data_dir missing
    with pytest.raises(SystemExit):
        task.main(["tune", "--data_dir", "d", "--job_dir", "j", "--tuner", "annealing"])
    with pytest.raises(FileNotFoundError, match=r"manifest\.json not found"):
        task.main(["train", "--data_dir", str(tmp_path), "--job_dir", str(tmp_path / "job")])
