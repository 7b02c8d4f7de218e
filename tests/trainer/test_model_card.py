"""trainer/model_card.py: evaluate's model card says what metrics.json, the manifest and the job say."""

from __future__ import annotations

import json
import os

import keras
import yaml

from pipelines import features
from trainer import architectures, data, job_layout, model_card, models, task

SPLITS = {"train": 24, "validation": 8, "test": 8}  # evaluated_job's data (tests/trainer/conftest.py)


def _card(job_dir) -> tuple[dict, dict, str]:
    text = (job_dir / "eval" / job_layout.MODEL_CARD_FILE).read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    return front, json.loads((job_dir / "eval" / job_layout.MODEL_CARD_JSON).read_text()), text


def test_the_cards_figures_are_metrics_jsons(evaluated_job):
    _, job_dir = evaluated_job
    metrics = json.loads((job_dir / "eval" / "metrics.json").read_text())
    front, card, text = _card(job_dir)
    (result,) = front["model-index"][0]["results"]
    assert result["dataset"]["split"] == "test"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {
        key: metrics[key] for key in ("accuracy", "precision", "recall", "f1", "roc_auc")
    }
    evaluation = card["evaluation"]
    for key, interval in evaluation["ci95"].items():
        assert interval == metrics.get(f"{key}_ci95")  # f1 has none
    assert all(evaluation["ci95"][key] for key in ("accuracy", "precision", "recall", "roc_auc"))
    assert evaluation["errors_per_class"] == metrics["errors_per_class"]
    assert evaluation["threshold"] == metrics["threshold"] == architectures.THRESHOLD
    low, high = metrics["accuracy_ci95"]
    assert f"| Accuracy | {metrics['accuracy']:.3f} [{low:.3f}, {high:.3f}] |" in text


def test_the_card_describes_the_model_data_and_export_from_the_jobs_files(evaluated_job):
    data_dir, job_dir = evaluated_job
    manifest = features.read_manifest(data_dir)
    config = json.loads((job_dir / "training_config.json").read_text())
    _, card, text = _card(job_dir)
    assert card["model"]["preset"] == config["model"] == models.GLASSES_CNN.name
    assert card["model"]["hyperparameters"] == config["hyperparameters"]
    assert card["model"]["parameters"] == keras.saving.load_model(job_dir / "model.keras").count_params()
    assert card["data"]["fingerprint"] == data.DataDir.read(data_dir).fingerprint == manifest["fingerprint"]["data"]
    assert card["data"]["written"] == {
        split: {name: manifest["counts"]["written"][split][str(i)] for i, name in enumerate(manifest["classes"])}
        for split in features.SPLITS
    }
    assert "| train | 24 | 24 |" in text
    assert card["data"]["croissant"] == os.path.join(data_dir, features.CROISSANT_FILE)
    assert os.path.exists(card["data"]["croissant"])
    assert card["data"]["audit"]["flagged_images"] == manifest["quality"]["flagged_images"]
    assert card["usage"]["inputs"] == [architectures.IMAGE_INPUT]
    assert "signatures['serving_default']" in text and "image_bytes=" in text
    assert model_card.EXIF_HANDLING in card["limitations"]
    assert card["data"]["label_issues"] is None  # find_label_issues never ran in this job


def test_misclassified_examples_are_named_by_their_files(evaluated_job):
    _, job_dir = evaluated_job
    metrics = json.loads((job_dir / "eval" / "metrics.json").read_text())
    for row in metrics["misclassified"]:
        assert os.path.basename(row["path"]) == f"{row['id']}.png" and os.path.exists(row["path"])


def test_a_changed_data_set_changes_the_cards_fingerprint(evaluated_job, make_data_dir, capsys):
    data_dir, job_dir = evaluated_job
    _, before, _ = _card(job_dir)
    other = make_data_dir("rgb16_other", height=16, width=16, channels=3, n_per_class_split={**SPLITS, "test": 6})
    task.main(["evaluate", "--data_dir", other, "--job_dir", str(job_dir)])
    assert f"model card: {job_dir}/eval/{job_layout.MODEL_CARD_FILE}" in capsys.readouterr().out
    _, after, _ = _card(job_dir)
    assert after["data"]["fingerprint"] == data.DataDir.read(other).fingerprint != before["data"]["fingerprint"]
    assert after["data"]["training_data_fingerprint"] == before["data"]["fingerprint"]
    assert any("not the data the model was trained with" in line for line in after["limitations"])
    task.main(["evaluate", "--data_dir", data_dir, "--job_dir", str(job_dir)])  # Back, for the other tests.


def test_label_issue_summary_is_in_the_card_when_the_job_has_one(evaluated_job):
    data_dir, job_dir = evaluated_job
    summary = {"num_examples": 40, "num_issues": 3, "classes": {}, "folds": 5, "model": "face_cnn"}
    (job_dir / "label_issues_summary.json").write_text(json.dumps(summary))
    parameters = _card(job_dir)[1]["model"]["parameters"]
    try:
        model_card.write(str(job_dir), data_dir, parameters=parameters)
        _, card, text = _card(job_dir)
        assert card["data"]["label_issues"] == summary
        assert "3 likely wrong labels of 40" in text
    finally:
        (job_dir / "label_issues_summary.json").unlink()
        model_card.write(str(job_dir), data_dir, parameters=parameters)


def test_the_card_skips_a_tuning_result_or_label_issue_summary_that_does_not_read(evaluated_job, caplog):
    data_dir, job_dir = evaluated_job
    spoiled = {job_layout.BEST_HPARAMS_FILE: "", job_layout.LABEL_ISSUES_SUMMARY: "[1, 2]"}
    for name, content in spoiled.items():
        (job_dir / name).write_text(content)
    parameters = _card(job_dir)[1]["model"]["parameters"]
    try:
        model_card.write(str(job_dir), data_dir, parameters=parameters)
        card = _card(job_dir)[1]
        assert card["model"]["tuning"] is None and card["data"]["label_issues"] is None
        assert all(name in caplog.text for name in spoiled)
    finally:
        for name in spoiled:
            (job_dir / name).unlink()
        model_card.write(str(job_dir), data_dir, parameters=parameters)
