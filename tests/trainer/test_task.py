"""trainer/task.py: the CLI picks the preset from the manifest unless --model says otherwise."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os

import keras
import pytest
import tensorflow as tf

from pipelines import locks
from tests.failing_files import patch_local_writes
from tests.image_files import write_glasses_like
from trainer import errors, flags, task


@pytest.fixture(scope="module")
def gray_dir(make_data_dir):
    return make_data_dir(
        "gray24", height=24, width=24, channels=1, n_per_class_split={"train": 24, "validation": 8, "test": 8}
    )


def test_grayscale_data_defaults_to_face_cnn_end_to_end_and_logs_why(gray_dir, tmp_path, capsys):
    job_dir = tmp_path / "job"
    task.main(["train", "--data_dir", gray_dir, "--job_dir", str(job_dir), "--epochs", "1", "--verbose", "0"])
    captured = capsys.readouterr()
    assert "serving export in" in captured.out
    assert "model: face_cnn (default for 24x24 grey images: best under subject-grouped cross-validation" in captured.err
    config = json.loads((job_dir / "training_config.json").read_text())
    assert config["model"] == "face_cnn" and config["image_shape"] == [24, 24, 1]
    model = keras.saving.load_model(job_dir / "model.keras")
    assert model.input_shape == (None, 24, 24, 1) and model.output_shape == (None, 1)
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


def _error_line(capsys) -> str:
    """The one line a user mistake ends with on stderr (after the run's progress logs), no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("error: "), lines
    assert sum(line.startswith("error: ") for line in lines) == 1, lines
    return lines[-1]


def test_user_mistakes_are_one_line_with_their_exit_status(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FACEPIPE_DEBUG", raising=False)
    job = str(tmp_path / "job")
    assert task.main(["train", "--data_dir", str(tmp_path), "--job_dir", job]) == 1
    assert "manifest.json not found" in _error_line(capsys)
    assert task.main(["evaluate", "--data_dir", str(tmp_path / "nowhere"), "--job_dir", job]) == 1
    assert "--data_dir " in _error_line(capsys)
    assert task.main(["predict", "--job_dir", job, "--input", str(tmp_path)]) == 1
    assert "no serving SavedModel" in _error_line(capsys)
    with pytest.raises(errors.DataError, match=r"manifest\.json not found"):
        task.main(["train", "--data_dir", str(tmp_path), "--job_dir", job, "--debug"])


def test_missing_hyperparameters_file_and_model(gray_dir, tmp_path, capsys):
    job = str(tmp_path / "job")
    missing = str(tmp_path / "best.json")
    assert task.main(["train", "--data_dir", gray_dir, "--job_dir", job, "--hyperparameters", missing]) == 1
    assert _error_line(capsys) == f"error: --hyperparameters {missing}: no such file"
    assert task.main(["evaluate", "--data_dir", gray_dir, "--job_dir", job]) == 1
    assert "model.keras not found" in _error_line(capsys)


@pytest.fixture(scope="module")
def no_test_dir(make_data_dir):
    # Module-scoped: built before capsys starts capturing the test's own output.
    return make_data_dir(
        "no_test", height=8, width=8, channels=3, n_per_class_split={"train": 4, "validation": 2, "test": 0}
    )


def test_an_empty_split_is_named_before_anything_is_built(no_test_dir, tmp_path, capsys):
    data_dir = no_test_dir
    assert task.main(["evaluate", "--data_dir", data_dir, "--job_dir", str(tmp_path / "job")]) == 1
    assert _error_line(capsys).startswith(f"error: split test is empty in {data_dir} (manifest: 0 examples); ")


def test_resuming_with_other_hyperparameters_says_what_to_do(gray_dir, tmp_path, capsys):
    job = tmp_path / "job"
    (job / "backup").mkdir(parents=True)
    (job / "backup" / "training_metadata.json").write_text("{}")  # What a killed run leaves.
    (job / "training_config.json").write_text(
        json.dumps({"model": "comics_cnn", "hyperparameters": {"epochs": 7}, "image_shape": [24, 24, 1]})
    )
    argv = ["train", "--data_dir", gray_dir, "--job_dir", str(job), "--model", "comics_cnn", "--epochs", "1"]
    assert task.main([*argv, "--verbose", "0"]) == 2
    line = _error_line(capsys)
    assert "has a run with other hyperparameters (" in line and "epochs 7 -> 1" in line
    assert line.endswith(f"pass --overwrite to start afresh, or remove {job}/backup")


def test_a_config_file_without_the_commands_object_says_so(capsys, write_config):
    config = write_config({"about": "text", "train": {"data_dir": "d", "job_dir": "j"}})
    with pytest.raises(SystemExit):
        task.main(["preflight", "--config", config])
    assert _error_line(capsys).startswith(
        f"error: unknown key 'about' in --config {config}: not a flag of python -m trainer.task preflight, "
        "and the file has no 'preflight' object"
    )


@pytest.mark.parametrize("command", flags.COMMANDS)
def test_unknown_config_key_is_a_one_line_error(capsys, command, write_config):
    config = write_config({"job_dir": "j", "epoch": 3})
    with pytest.raises(SystemExit) as exit_info:
        task.main([command, "--config", config])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: unknown key 'epoch'" in error and config in error


def test_config_values_get_the_flags_choices(capsys, write_config):
    with pytest.raises(SystemExit) as exit_info:
        task.main(["train", "--config", write_config({"data_dir": "d", "job_dir": "j", "strategy": "horovod"})])
    assert exit_info.value.code == 2
    assert "'horovod' is not one of" in capsys.readouterr().err


def test_training_config_reruns_the_same_command(gray_dir, tmp_path):
    job_dir = tmp_path / "job"
    argv = ["train", "--data_dir", gray_dir, "--job_dir", str(job_dir), "--epochs", "1", "--verbose", "0"]
    argv += ["--model", "comics_cnn", "--seed", "3", "--strategy", "default"]
    task.main(argv)
    written = str(job_dir / "training_config.json")
    assert vars(flags.parse_args(["train", "--config", written])) == {**vars(flags.parse_args(argv)), "config": written}


def test_an_ensemble_of_no_model_is_a_one_line_error(gray_dir, tmp_path, capsys):
    argv = ["train", "--data_dir", gray_dir, "--job_dir", str(tmp_path / "job"), "--ensemble", "0"]
    assert task.main(argv) == 2
    assert _error_line(capsys) == "error: --ensemble 0: give the number of models to train, at least 1"


def test_the_default_model_follows_the_datas_shape_and_find_label_issues_takes_the_image_one(latent_dir, caplog):
    from trainer import data

    data_dir = data.DataDir.read(latent_dir)  # 16x16 RGB with a 4-value vector.
    args = flags.parse_args(["train", "--data_dir", latent_dir, "--job_dir", "j"])
    with caplog.at_level(logging.INFO):
        assert task._preset(args, data_dir).name == "image_latent"
        args = flags.parse_args(["find_label_issues", "--data_dir", latent_dir, "--job_dir", "j"])
        assert task._preset(args, data_dir, vector=False).name == "face_cnn"  # It scores the images alone.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model: ")]
    assert lines[0].startswith("model: image_latent (default for 16x16 RGB images with a 4-value vector: ")
    assert lines[1].startswith("model: face_cnn (default for 16x16 RGB images: best under subject-grouped")


@pytest.mark.parametrize("command", ["train", "tune", "evaluate", "find_label_issues"])
def test_a_second_writer_of_a_job_dir_is_refused_with_one_line(tmp_path, capsys, command):
    job_dir = tmp_path / "job"
    with locks.held(str(job_dir)):  # The first writer, still running.
        status = task.main([command, "--data_dir", str(tmp_path / "data"), "--job_dir", str(job_dir)])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {job_dir} is being written by PID {os.getpid()} on ") and "\n" not in err


def test_a_search_worker_and_a_clusters_other_workers_leave_the_job_lock_to_their_chief(tmp_path, monkeypatch):
    job_dir = str(tmp_path / "job")
    tune = flags.parse_args(["tune", "--data_dir", str(tmp_path), "--job_dir", job_dir])
    train = flags.parse_args(["train", "--data_dir", str(tmp_path), "--job_dir", job_dir])
    assert isinstance(task._job_lock(tune), contextlib._GeneratorContextManager)
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    assert isinstance(task._job_lock(tune), contextlib.nullcontext)
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert not isinstance(task._job_lock(tune), contextlib.nullcontext)
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert isinstance(task._job_lock(train), contextlib.nullcontext)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert not isinstance(task._job_lock(train), contextlib.nullcontext)


ODD_IDS = ["é日本 {}", "o'neil {}", 'say "hi" {}', "a,b {}", "x{}"]  # Spaces, letters beyond ASCII, quotes, commas.


@pytest.mark.slow
def test_ids_with_spaces_non_ascii_letters_quotes_and_commas_work_in_every_command(tmp_path, capsys):
    import csv
    import glob
    import pathlib
    import urllib.parse

    import cv2

    from pipelines.preprocess import run
    from tests.image_files import labelled_image

    images = tmp_path / "images"
    images.mkdir()
    ids = [ODD_IDS[i % len(ODD_IDS)].format(i) for i in range(20)]
    with open(tmp_path / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        for i, image_id in enumerate(ids):
            cv2.imwrite(str(images / f"{image_id}.png"), labelled_image(i % 2, i, height=16, width=16))
            writer.writerow([image_id, ("no", "yes")[i % 2]])
    data_dir, job_dir = str(tmp_path / "data"), str(tmp_path / "job")
    inputs = ["--images", str(images), "--labels_csv", str(tmp_path / "labels.csv"), "--output", data_dir]
    run(
        [
            *inputs,
            "--classes",
            "no,yes",
            "--balance",
            "none",
            "--image_size",
            "16,16",
            "--splits",
            "train=0.5,validation=0.25,test=0.25",
        ]
    )
    common = ["--data_dir", data_dir, "--job_dir", job_dir]
    tune = ["tune", *common, "--search_space", "small", "--max_trials", "1", "--epochs", "1", "--verbose", "0"]
    assert task.main(tune) == 0
    assert task.main(["train", *common, "--epochs", "1", "--verbose", "0"]) == 0
    assert task.main(["evaluate", *common]) == 0
    with open(tmp_path / "job" / "eval" / "predictions.csv", encoding="utf-8", newline="") as f:
        assert {row["id"] for row in csv.DictReader(f)} <= set(ids)
    assert task.main(["find_label_issues", *common, "--folds", "2", "--epochs", "1", "--verbose", "0"]) == 0
    with open(tmp_path / "job" / "oof_probabilities.csv", encoding="utf-8", newline="") as f:
        assert sorted(row["id"] for row in csv.DictReader(f)) == sorted(ids)
    output = tmp_path / "predictions.csv"
    assert task.main(["predict", "--job_dir", job_dir, "--input", str(images), "--output", str(output)]) == 0
    with open(output, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(os.path.basename(row["path"])[: -len(".png")] for row in rows) == sorted(ids)
    assert all(row["error"] == "" for row in rows)

    # The review tool over the same images with every file the commands wrote about them.
    from tests.pipelines.review.client import serving

    review = [*inputs[:4], "--classes", "no,yes", "--predictions", str(output), "--quality_dir", f"{data_dir}/quality"]
    review += ["--label_issues", f"{job_dir}/label_issues.csv", "--port", "0"]
    review += ["--overrides_csv", str(tmp_path / "o.csv"), "--exclude_csv", str(tmp_path / "x.csv")]
    with serving(review) as (client, _):
        assert sorted(client.ids("disagree")) == sorted(ids)  # Every prediction found its image.
        with open(f"{job_dir}/label_issues.csv", encoding="utf-8", newline="") as f:
            assert sorted(client.ids("suspects")) == sorted(row["id"] for row in csv.DictReader(f))
        flagged = [
            json.loads(line)
            for path in glob.glob(f"{data_dir}/quality/images-*.jsonl")
            for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines()
        ]
        assert sorted(client.ids("quality")) == sorted(r["id"] for r in flagged if r["flags"])
        assert client.get("/thumb/" + urllib.parse.quote(ids[0], safe="")).status == 200
        client.decide(ids[0], "flip")
    with open(tmp_path / "o.csv", encoding="utf-8", newline="") as f:
        assert [row["id"] for row in csv.DictReader(f)] == [ids[0]]


def test_a_job_dir_that_is_a_file_is_one_line_saying_what_to_do(tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    status = task.main(["train", "--data_dir", str(tmp_path), "--job_dir", str(tmp_path / "file")])
    assert status == 1
    assert (
        _error_line(capsys)
        == f"error: {tmp_path / 'file'}: File exists; a file is in the way: give the path of a folder"
    )
    assert (tmp_path / "file").read_text() == "a file, not a folder"


def test_predict_on_a_full_disk_is_one_line_naming_the_output_and_leaves_no_temporary(tmp_path, capsys, monkeypatch):
    from trainer import export

    def serving(image_bytes):
        count = [tf.shape(image_bytes)[0]]
        return {"probability": tf.fill(count, 0.5), "label": tf.fill(count, b"yes")}

    monkeypatch.setattr(export, "load_serving", lambda export_dir: (serving, None))
    monkeypatch.setattr(export, "read_serving_config", lambda export_dir: {"inputs": ["image"], "min_side": 8})
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "saved_model.pb").write_bytes(b"")
    images = write_glasses_like(tmp_path, [0, 1])

    def full_disk(file, content):  # The file is made; no byte fits on the disk.
        raise OSError(errno.ENOSPC, "No space left on device")

    patch_local_writes(monkeypatch, full_disk)
    (tmp_path / "out").mkdir()
    output = tmp_path / "out" / "predictions.csv"
    status = task.main(["predict", "--job_dir", str(tmp_path), "--input", str(images), "--output", str(output)])
    assert status == 1
    assert _error_line(capsys).startswith(f"error: {output}: No space left on device; the disk is full")
    assert list((tmp_path / "out").iterdir()) == []


def test_predict_output_that_is_a_folder_is_refused_up_front(tmp_path, capsys):
    status = task.main(["predict", "--job_dir", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path)])
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --output {tmp_path} is a folder: name a file, e.g. {tmp_path}/predictions.csv"
    )


def test_a_job_dir_that_cannot_be_made_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    job_dir = tmp_path / "file" / "job"
    status = task.main(["train", "--data_dir", str(tmp_path), "--job_dir", str(job_dir)])
    assert status == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {job_dir}") and "\n" not in err
