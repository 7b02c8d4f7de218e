"""The README's first command: the whole job end to end, on a small demo set."""

from __future__ import annotations

import argparse
import json

import pytest

from pipelines.demo import job as demo

pytestmark = pytest.mark.slow


def test_demo_runs_every_stage_and_reports_where_the_results_are(tmp_path, capsys):
    status = demo.main(["--workdir", str(tmp_path), "--count", "80", "--size", "96"])
    assert status == 0
    out = capsys.readouterr().out
    for stage in ("generate demo data", "preprocess (Beam)", "tune (keras-tuner)", "train", "evaluate"):
        assert f"{stage} done in" in out
    job = tmp_path / "glasses" / "job"
    metrics = json.loads((job / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    low, high = metrics["accuracy_ci95"]
    assert f"Test accuracy {metrics['accuracy']:.4f} (95% interval {low:.3f}-{high:.3f}" in out
    assert (job / "export" / "saved_model.pb").exists()
    assert str(job / "eval" / "metrics.json") in out
    # Where both cards are: the model's (evaluate) and the data's (preprocess).
    assert f"model card:     {job / 'eval' / 'model_card.md'}" in out and (job / "eval" / "model_card.md").exists()
    croissant = tmp_path / "glasses" / "data" / "croissant.json"
    assert f"dataset card:   {croissant} (Croissant)" in out and croissant.exists()
    manifest = json.loads((tmp_path / "glasses" / "data" / "manifest.json").read_text())
    # The review's files were used: overrides label the unlabelled test ids, distorted ids are excluded.
    assert manifest["counts"]["overrides_applied"] > 0
    assert manifest["counts"]["excluded"] > 0
    assert sum(manifest["counts"]["written"]["test"].values()) > 0


def test_a_failing_stage_stops_the_job_with_its_status(tmp_path):
    status = demo.main(["--workdir", str(tmp_path), "--data_root", str(tmp_path / "missing")])
    assert status != 0
    assert not (tmp_path / "glasses" / "job").exists()


def test_the_demo_trains_the_candidate_with_the_best_validation_accuracy(tmp_path):
    for preset, score in (("glasses_cnn", 0.71), ("face_cnn", 0.83)):
        candidate = tmp_path / demo.CANDIDATES_DIR / preset
        candidate.mkdir(parents=True)
        (candidate / "best_hyperparameters.json").write_text(json.dumps({"score": score, "hyperparameters": {}}))
    preset, path, score = demo.choose_preset(str(tmp_path), ("glasses_cnn", "face_cnn"))
    assert (preset, score) == ("face_cnn", 0.83)
    assert path == str(tmp_path / demo.CANDIDATES_DIR / "face_cnn" / "best_hyperparameters.json")


def _preprocess_command(*argv: str) -> list[str]:
    defaults = {"dataset": "glasses", "count": None, "size": 96, "seed": 0, "tuner": "grid", "search_space": "small"}
    args = argparse.Namespace(**defaults, workdir="runs", data_root=None, beam_args=list(argv))
    (command,) = dict(demo._stages(args))["preprocess (Beam)"]()
    return command


def test_the_demo_caches_decoded_pixels_beside_its_data_unless_told_otherwise():
    command = _preprocess_command()
    cache_dir = command[command.index("--cache_dir") + 1]
    assert cache_dir.startswith("runs/glasses/") and not cache_dir.startswith("runs/glasses/data")
    assert _preprocess_command("--cache_dir=/elsewhere").count("--cache_dir") == 0
