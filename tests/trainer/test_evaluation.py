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
from trainer import data, evaluation, predict, statistics, task


def _brute_force_auc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


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
    assert metrics["roc_auc"] == pytest.approx(_brute_force_auc(labels, probs))
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


def test_compute_metrics_on_known_values():
    labels = np.array([0, 0, 1, 1, 1, 0])
    probs = np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.6])
    metrics = evaluation.compute_metrics(labels, probs, class_names=["a", "b"], ids=list("uvwxyz"))
    assert metrics["confusion_matrix"] == [[1, 2], [1, 2]]
    assert metrics["precision"] == pytest.approx(0.5) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(4 / 7)
    assert metrics["roc_auc"] == pytest.approx(_brute_force_auc(labels, probs))  # 0.1, 0.6 x2 ties
    assert metrics["errors_per_class"] == [
        {
            "class": "a",
            "count": 3,
            "errors": 2,
            "error_rate": pytest.approx(2 / 3),
            "error_rate_ci95": pytest.approx([0.2077, 0.9385], abs=1e-4),  # Wilson 2/3 by hand.
        },
        {
            "class": "b",
            "count": 3,
            "errors": 1,
            "error_rate": pytest.approx(1 / 3),
            "error_rate_ci95": pytest.approx([0.0615, 0.7923], abs=1e-4),
        },
    ]
    assert metrics["accuracy_ci95"] == pytest.approx([0.1876, 0.8124], abs=1e-4)  # Wilson 3/6.
    assert metrics["precision_ci95"] == pytest.approx(list(statistics.wilson_interval(2, 4)))
    assert metrics["recall_ci95"] == pytest.approx(list(statistics.wilson_interval(2, 3)))
    assert metrics["roc_auc_ci95"] == pytest.approx(list(statistics.auc_interval(labels, probs)))
    assert [m["id"] for m in metrics["misclassified"]] == ["v", "x", "z"]
    assert metrics["misclassified"][1] == {"id": "x", "label": "b", "predicted": "a", "probability": 0.4}
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 200), np.round(rng.random(200), 1)  # Many ties.
    assert evaluation.roc_auc(labels, scores) == pytest.approx(_brute_force_auc(labels, scores))


def test_misclassified_grid_plot(tmp_path):
    rows = [{"label": "no", "predicted": "yes", "probability": 0.7 + i / 100} for i in range(7)]
    pixels = np.random.default_rng(0).integers(0, 255, (7, 16, 16, 1), dtype=np.uint8)
    evaluation.plot_misclassified(pixels, rows, str(tmp_path / "grid.png"))
    with Image.open(tmp_path / "grid.png") as image:
        assert image.width > 300 and image.height > 250  # 5 columns x 2 rows


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
    assert metrics["identical_outputs"]["share"] <= evaluation.MAX_IDENTICAL_OUTPUTS
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


def test_errors_per_group_from_the_examples_groups():
    groups = evaluation.example_groups(list("uvwxyz"), ["s1", "s1", "s2", "s2", "s3", "s3"])
    assert groups == {"u": "s1", "v": "s1", "w": "s2", "x": "s2", "y": "s3", "z": "s3"}
    metrics = evaluation.compute_metrics(
        [0, 0, 1, 1, 1, 0], [0.1, 0.6, 0.8, 0.4, 0.3, 0.6], class_names=["a", "b"], ids=list("uvwxyz"), groups=groups
    )
    assert metrics["errors_per_group"] == [  # Most errors first, then by name.
        {"group": "s3", "count": 2, "errors": 2, "error_rate": 1.0},
        {"group": "s1", "count": 2, "errors": 1, "error_rate": 0.5},
        {"group": "s2", "count": 2, "errors": 1, "error_rate": 0.5},
    ]
    # Every example its own group (no --group_by), or shards without groups: nothing to report.
    assert evaluation.example_groups(["u", "v"], ["u", "v"]) is None
    assert evaluation.example_groups(["u", "v"], ["", ""]) is None


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
