"""trainer/evaluation.py and predict: outputs exist and the metrics agree with numpy."""

from __future__ import annotations

import csv
import json
import shutil

import cv2
import keras
import numpy as np
import pytest
from PIL import Image

from pipelines import features
from tests.trainer.test_eval_metrics import brute_force_auc
from trainer import data, eval_metrics, evaluation, predict, statistics, task


def test_evaluate_writes_metrics_plots_and_predictions(evaluated_job):
    _, job_dir = evaluated_job
    out = job_dir / "eval"
    for name in ("metrics.json", "predictions.csv", "training_curves.png", "confusion_matrix.png", "misclassified.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("training_curves.png", "confusion_matrix.png", "misclassified.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_examples"] == 16 and metrics["split"] == "test"
    for key in (
        "accuracy",
        "loss",
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "confusion_matrix",
        "errors_per_class",
        "misclassified",
    ):
        assert key in metrics
    assert [row["class"] for row in metrics["errors_per_class"]] == ["no", "yes"]


def test_metrics_recomputed_with_numpy_from_saved_predictions(evaluated_job):
    _, job_dir = evaluated_job
    metrics = json.loads((job_dir / "eval/metrics.json").read_text())
    with open(job_dir / "eval/predictions.csv") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["probability"]) for r in rows])
    predicted = (probs >= 0.5).astype(int)
    np.testing.assert_array_equal(predicted, [int(r["predicted"]) for r in rows])

    tp = int(((predicted == 1) & (labels == 1)).sum())
    tn = int(((predicted == 0) & (labels == 0)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    assert metrics["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert metrics["accuracy"] == pytest.approx((tp + tn) / len(rows))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    assert metrics["precision"] == pytest.approx(precision) and metrics["recall"] == pytest.approx(recall)
    assert metrics["f1"] == pytest.approx(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    assert metrics["roc_auc"] == pytest.approx(brute_force_auc(labels, probs))
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    assert metrics["loss"] == pytest.approx(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)), rel=1e-6)
    for index, row in enumerate(metrics["errors_per_class"]):
        assert row["count"] == int((labels == index).sum())
        assert row["errors"] == int(((labels == index) & (predicted != labels)).sum())
    wrong = {r["id"] for r, pr, lab in zip(rows, predicted, labels, strict=True) if pr != lab}
    assert {m["id"] for m in metrics["misclassified"]} == wrong


def test_saved_predictions_agree_with_keras_evaluate(evaluated_job):
    data_dir, job_dir = evaluated_job
    metrics = json.loads((job_dir / "eval/metrics.json").read_text())
    manifest = features.read_manifest(data_dir)
    model = keras.saving.load_model(job_dir / "model.keras")
    ds = data.make_dataset(
        data_dir,
        "test",
        manifest=manifest,
        tft_output=data.load_transform(data_dir, manifest),
        global_batch_size=7,
        training=False,
    )
    loss, accuracy = model.evaluate(ds, verbose=0)
    assert metrics["loss"] == pytest.approx(loss, abs=1e-4)
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_predict_on_a_folder_and_files(evaluated_job, tmp_path, capsys):
    _, job_dir = evaluated_job
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        image = rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)
        if i:
            image[15:20] = 230
        cv2.imwrite(str(folder / f"img{i}.png"), image)
    (folder / "notes.txt").write_text("not an image")
    output = tmp_path / "predictions.csv"
    task.main(["predict", "--job_dir", str(job_dir), "--input", str(folder), "--output", str(output)])
    printed = capsys.readouterr().out
    with open(output) as f:
        rows = list(csv.DictReader(f))
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    assert all(r["label"] == ("yes" if float(r["probability"]) >= 0.5 else "no") for r in rows)
    assert "path,probability,label" in printed
    single = predict.predict(str(job_dir / "export"), [str(folder / "img1.png")])
    assert single[0][1] == pytest.approx(float(rows[1]["probability"]), abs=1e-6)
    with pytest.raises(FileNotFoundError):
        predict.predict(str(job_dir / "export"), [str(tmp_path / "missing.png")])


def test_empty_test_split_fails_with_a_clear_message(make_data_dir, tmp_path):
    data_dir = make_data_dir(
        "no_test", height=8, width=8, channels=3, n_per_class_split={"train": 4, "validation": 2, "test": 0}
    )
    with pytest.raises(ValueError, match=r"test split .* is empty"):
        evaluation.evaluate(data_dir=data.DataDir.read(data_dir), job_dir=str(tmp_path / "job"))


def test_metrics_and_printed_table_carry_95_intervals(evaluated_job, tmp_path, capsys):
    data_dir, job_dir = evaluated_job
    metrics = json.loads((job_dir / "eval/metrics.json").read_text())
    correct = round(metrics["accuracy"] * metrics["num_examples"])
    assert metrics["accuracy_ci95"] == pytest.approx(list(statistics.wilson_interval(correct, 16)))
    low, high = metrics["roc_auc_ci95"]
    assert low <= metrics["roc_auc"] <= high
    job = tmp_path / "job"
    shutil.copytree(job_dir, job)
    assert task.main(["evaluate", "--data_dir", data_dir, "--job_dir", str(job)]) == 0
    printed = capsys.readouterr().out
    low, high = metrics["accuracy_ci95"]
    assert f"accuracy {metrics['accuracy']:.3f} [{low:.3f}, {high:.3f}]" in printed
    assert "identical outputs:" in printed and "dead units: layer dense" in printed
    assert "WARNING" not in printed  # A trained model has not collapsed.
    assert metrics["identical_outputs"]["share"] <= eval_metrics.MAX_IDENTICAL_OUTPUTS
    assert set(metrics["dead_units"]) == {"conv", "dense"}


def _collapsed_copy(job_dir, out_dir):
    """``job_dir`` with a model whose Dense ReLU layer is dead (zero kernel, negative bias): a constant output."""
    shutil.copytree(job_dir, out_dir, ignore=shutil.ignore_patterns("eval"))
    model = keras.saving.load_model(out_dir / "model.keras")
    dense = model.get_layer("dense")
    kernel, bias = dense.get_weights()
    dense.set_weights([np.zeros_like(kernel), -np.ones_like(bias)])
    head_kernel, head_bias = model.get_layer("probability").get_weights()
    model.get_layer("probability").set_weights([head_kernel, np.full_like(head_bias, 3.0)])  # Always "yes".
    model.save(out_dir / "model.keras")
    return out_dir


def test_collapsed_model_is_reported_dead_and_constant(evaluated_job, tmp_path, capsys):
    data_dir, job_dir = evaluated_job
    collapsed = _collapsed_copy(job_dir, tmp_path / "collapsed")
    assert task.main(["evaluate", "--data_dir", data_dir, "--job_dir", str(collapsed)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((collapsed / "eval/metrics.json").read_text())
    assert metrics["dead_units"]["dense"] == {"units": 128, "dead": 128, "share": 1.0}
    assert metrics["dead_units"]["conv"]["share"] < 1.0
    assert metrics["identical_outputs"]["share"] == 1.0
    assert metrics["identical_outputs"]["most_common_probability"] == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-6)
    assert "WARNING: 100% of the test outputs are identical" in printed
    assert "WARNING: layer dense: 128 of 128 ReLU units (100%)" in printed


def test_baseline_mcnemar_against_a_constant_predictor_and_itself(evaluated_job, tmp_path, capsys):
    data_dir, job_dir = evaluated_job
    job = tmp_path / "job"
    shutil.copytree(job_dir, job)
    trained_accuracy = json.loads((job / "eval/metrics.json").read_text())["accuracy"]
    constant = _collapsed_copy(job_dir, tmp_path / "constant")
    assert task.main(["evaluate", "--data_dir", data_dir, "--job_dir", str(constant)]) == 0

    assert task.main(["evaluate", "--data_dir", data_dir, "--job_dir", str(job), "--baseline", str(constant)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((job / "eval/metrics.json").read_text())["baseline"]
    assert result["accuracy"] == pytest.approx(trained_accuracy) and result["baseline_accuracy"] == 0.5
    assert result["b"] - result["c"] == round((trained_accuracy - 0.5) * 16)
    assert result["p_value"] == pytest.approx(
        statistics.mcnemar_exact(
            [True] * result["b"] + [False] * result["c"], [False] * result["b"] + [True] * result["c"]
        )["p_value"]
    )
    assert result["significant"] and result["p_value"] < 0.05
    assert f"b={result['b']}" in printed and "significant at 0.05" in printed and "not significant" not in printed

    assert task.main(["evaluate", "--data_dir", data_dir, "--job_dir", str(job), "--baseline", str(job)]) == 0
    result = json.loads((job / "eval/metrics.json").read_text())["baseline"]
    assert (result["b"], result["c"], result["p_value"], result["significant"]) == (0, 0, 1.0, False)
    assert "not significant at 0.05" in capsys.readouterr().out


def test_baseline_errors_are_one_line(evaluated_job, tmp_path, capsys):
    data_dir, job_dir = evaluated_job
    never_evaluated = tmp_path / "never_evaluated"
    never_evaluated.mkdir()
    assert (
        task.main(["evaluate", "--data_dir", data_dir, "--job_dir", str(job_dir), "--baseline", str(never_evaluated)])
        == 2
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]  # Not the log lines.
    assert len(err) == 1 and err[0].startswith("error: --baseline") and "run evaluate" in err[0]
    other = tmp_path / "other"
    (other / "eval").mkdir(parents=True)
    (other / "eval/predictions.csv").write_text("id,label,probability,predicted\nsomeone_else,0,0.1,0\n")
    assert task.main(["evaluate", "--data_dir", data_dir, "--job_dir", str(job_dir), "--baseline", str(other)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith("error: --baseline") and "other examples" in err[0]


def test_relu_layers_of_their_own_are_probed_and_a_model_without_any_evaluates(rgb_dir):
    # face_cnn's conv-BN-ReLU blocks: the ReLU is a layer of its own, after the BatchNorm.
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Activation("relu", name="act")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(keras.layers.GlobalAveragePooling2D()(x))
    blocks = keras.Model(inputs, outputs)
    assert [layer.name for layer in evaluation.relu_layers(blocks)] == ["relu", "act"]
    data_dir = data.DataDir.read(rgb_dir)
    assert set(evaluation.predict_split(blocks, data_dir, "test", batch_size=8)["unit_max"]) == {"relu", "act"}
    # No ReLU anywhere: the probe has one output, and Keras returns it bare.
    linear = keras.Sequential([keras.Input((16, 16, 3), name="image"), keras.layers.Flatten(), keras.layers.Dense(1)])
    result = evaluation.predict_split(linear, data_dir, "test", batch_size=8)
    assert result["probability"].shape == (16,) and result["unit_max"] == {}
