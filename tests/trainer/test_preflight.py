"""trainer/preflight.py: each check fails with what to fix, and the CLI exits 1 then."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from trainer import preflight, task


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
    for name in ("TPU_NAME", "TF_CONFIG", "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def data_dir(make_data_dir, tmp_path) -> pathlib.Path:
    """A private copy of a real pipeline output, for the tests that break it."""
    source = make_data_dir(
        "rgb16", height=16, width=16, channels=3, n_per_class_split={"train": 24, "validation": 8, "test": 8}
    )
    return pathlib.Path(shutil.copytree(source, tmp_path / "data"))


def run(capsys, data_dir, job_dir, *flags) -> tuple[int, list[str]]:
    code = task.main(["preflight", "--data_dir", str(data_dir), "--job_dir", str(job_dir), *flags])
    return code, capsys.readouterr().out.splitlines()


def failures(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL")]


def edit_manifest(data_dir: pathlib.Path, **image) -> None:
    path = data_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["image"].update(image)
    path.write_text(json.dumps(manifest))


def test_a_good_local_job_passes(data_dir, tmp_path, capsys):
    code, lines = run(capsys, data_dir, tmp_path / "job")
    assert code == 0 and lines[-1] == "preflight passed" and not failures(lines)
    assert "ok    train: 2 shard(s)" in lines
    # No --model: the default for the data's shape, and why.
    assert any(
        line.startswith("ok    face_cnn builds on 16x16x3 rgb images (default for 16x16 RGB images: ") for line in lines
    )
    assert (
        "ok    glasses_cnn builds on 16x16x3 rgb images"
        in run(capsys, data_dir, tmp_path / "job", "--model", "glasses_cnn")[1]
    )


def test_tpu_needs_gcs_paths(data_dir, tmp_path, capsys):
    code, lines = run(capsys, data_dir, tmp_path / "job", "--tpu", "my-tpu")
    assert code == 1 and lines[-1] == "2 problem(s) found"
    assert any(
        f"--data_dir {data_dir} is not a gs:// path" in line and "gsutil -m cp -r" in line for line in failures(lines)
    )
    assert any("--job_dir" in line and "pass --job_dir gs://BUCKET/JOB" in line for line in failures(lines))
    assert preflight.check_paths(data_dir="gs://b/data", job_dir="gs://b/job", tpu="my-tpu") == [
        preflight.Finding(True, "--data_dir gs://b/data is on GCS, reachable from TPU 'my-tpu'"),
        preflight.Finding(True, "--job_dir gs://b/job is on GCS, reachable from TPU 'my-tpu'"),
    ]


def test_fewer_train_shards_than_workers(data_dir, tmp_path, capsys, monkeypatch):
    workers = [f"127.0.0.1:{2222 + i}" for i in range(3)]
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}})
    )
    code, lines = run(capsys, data_dir, tmp_path / "job")
    assert code == 1
    assert failures(lines) == [
        (
            "FAIL  train has 2 shard(s) for 3 workers: each worker cannot read its own files, so every worker "
            "decodes the whole split. Re-run pipelines.preprocess with --num_shards 3 (or a multiple of it)"
        )
    ]
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": workers[:2]}, "task": {"type": "worker", "index": 0}})
    )
    assert run(capsys, data_dir, tmp_path / "job")[0] == 0


def test_a_missing_shard(data_dir, tmp_path, capsys):
    (data_dir / "test-00001-of-00002.tfrecord.gz").unlink()
    code, lines = run(capsys, data_dir, tmp_path / "job")
    assert code == 1 and failures(lines) == [
        (
            f"FAIL  test: 1 shard(s) in {data_dir}, the manifest lists 2 (missing test-00001-of-00002.tfrecord.gz): "
            "copy the complete preprocessing output"
        )
    ]


def test_missing_transform_output(data_dir, tmp_path, capsys):
    shutil.rmtree(data_dir / "transform")
    code, lines = run(capsys, data_dir, tmp_path / "job")
    assert code == 1 and len(failures(lines)) == 1
    assert f"{data_dir}/transform/transform_fn is missing" in failures(lines)[0]


def test_missing_manifest_stops_the_data_checks(data_dir, tmp_path, capsys):
    (data_dir / "manifest.json").unlink()
    code, lines = run(capsys, data_dir, tmp_path / "job")
    assert code == 1 and len(failures(lines)) == 1 and "manifest.json not found" in failures(lines)[0]
    assert not any("shard" in line for line in lines)


def test_model_preset_disagrees_with_the_manifest(data_dir, tmp_path, capsys):
    code, lines = run(capsys, data_dir, tmp_path / "job", "--model", "comics_cnn")
    assert code == 1 and failures(lines) == [
        (
            "FAIL  --model comics_cnn expects 1-channel (grayscale) images, the data is 3-channel (rgb): pass "
            "--model face_cnn or re-run pipelines.preprocess with --color_mode grayscale"
        )
    ]
    edit_manifest(data_dir, color_mode="grayscale")  # Says grayscale, holds 3 channels.
    code, lines = run(capsys, data_dir, tmp_path / "job")
    assert code == 1 and "the manifest says color_mode 'grayscale' but 3 channel(s)" in failures(lines)[0]


def test_images_too_small_for_the_model(data_dir, tmp_path, capsys):
    edit_manifest(data_dir, height=2, width=2)
    code, lines = run(capsys, data_dir, tmp_path / "job", "--model", "glasses_cnn")
    assert code == 1 and len(failures(lines)) == 1
    assert failures(lines)[0].startswith("FAIL  glasses_cnn cannot be built for 2x2x3 images with 2 classes")


def test_strategy_prerequisites(data_dir, tmp_path, capsys):
    code, lines = run(capsys, data_dir, tmp_path / "job", "--strategy", "multi_worker")
    assert code == 1 and failures(lines)[0].startswith("FAIL  --strategy multi_worker needs TF_CONFIG")
    code, lines = run(capsys, data_dir, tmp_path / "job", "--strategy", "tpu")
    assert code == 1 and failures(lines) == [
        "FAIL  --strategy tpu needs --tpu NAME (or the TPU_NAME environment variable)"
    ]


def test_an_existing_tuning_project_would_be_overwritten(data_dir, tmp_path, capsys, monkeypatch):
    project = tmp_path / "job/tuning/face_cnn_grid"  # The default model's project.
    for i in range(3):
        (project / f"trial_{i:04d}").mkdir(parents=True)
        (project / f"trial_{i:04d}/trial.json").write_text("{}")
    code, lines = run(capsys, data_dir, tmp_path / "job")
    assert code == 0 and f"ok    tuning project {project} exists: tune resumes its 3 trial(s)" in lines
    code, lines = run(capsys, data_dir, tmp_path / "job", "--overwrite")
    assert code == 1 and failures(lines) == [
        (
            f"FAIL  --overwrite would delete {project} and its 3 trial(s): drop --overwrite to resume them, "
            "or choose a new --job_dir"
        )
    ]
    assert run(capsys, data_dir, tmp_path / "job", "--overwrite", "--tuner", "random")[0] == 0  # Another project.
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner1")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    code, lines = run(capsys, data_dir, tmp_path / "job", "--overwrite", "--tuner", "random")
    assert (
        code == 1
        and "KERASTUNER_TUNER_ID=tuner1 is a worker: only the chief may pass --overwrite" in failures(lines)[0]
    )
    assert project.exists()  # Preflight deletes nothing.


def test_on_comics_data_tune_trains_no_trial_so_overwrite_deletes_no_project(data_dir, tmp_path, capsys):
    (tmp_path / "job/tuning/face_cnn_grid/trial_0000").mkdir(parents=True)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    (data_dir / "manifest.json").write_text(json.dumps({**manifest, "dataset": "comics"}))
    code, lines = run(capsys, data_dir, tmp_path / "job", "--overwrite")
    assert code == 0 and "ok    face_cnn's small space holds one point on this data: tune trains no trial" in lines


def test_an_empty_split_fails(make_data_dir, tmp_path, capsys):
    data_dir = make_data_dir(
        "no_test", height=8, width=8, channels=3, n_per_class_split={"train": 4, "validation": 2, "test": 0}
    )
    code, lines = run(capsys, data_dir, tmp_path / "job")
    assert code == 1 and lines[-1] != "preflight passed"
    assert any(line.startswith(f"FAIL  split test is empty in {data_dir} (manifest: 0 examples)") for line in lines)
