"""trainer/label_issues.py and trainer/folds.py: confident learning, grouped folds, the command."""

from __future__ import annotations

import csv
import json
import os
import pathlib

import numpy as np
import pytest

from tests.image_files import labelled_image
from trainer import fitting, folds, label_issues, task

FLIPPED = ("img_03", "img_10", "img_17")
UNLABELLED = ("new_1", "new_2")


def _planted(n: int = 200, flips: int = 10, seed: int = 0):
    """Two classes, ``flips`` labels flipped (the model is confidently of the other class)."""
    rng = np.random.default_rng(seed)
    true = np.repeat([0, 1], n // 2)
    # Clean examples: the true class with 0.92-0.99, noise around the rest.
    confidence = rng.uniform(0.92, 0.99, size=n)
    probabilities = np.where(true[:, None] == np.arange(2), confidence[:, None], 1 - confidence[:, None])
    flipped = np.concatenate(
        [rng.choice(n // 2, flips // 2, replace=False), n // 2 + rng.choice(n // 2, flips // 2, replace=False)]
    )
    given = true.copy()
    given[flipped] = 1 - given[flipped]
    return probabilities, given, np.sort(flipped)


def test_confident_learning_finds_exactly_the_planted_wrong_labels():
    probabilities, given, flipped = _planted()
    result = label_issues.find_label_issues(probabilities, given)
    assert sorted(result.issues.tolist()) == flipped.tolist()
    np.testing.assert_allclose(result.noise_rates, [0.05, 0.05])
    np.testing.assert_array_equal(result.confident_joint, [[95, 5], [5, 95]])
    assert (result.suggested[flipped] == 1 - given[flipped]).all()
    assert (result.suggested[np.setdiff1d(np.arange(200), flipped)] == -1).all()
    # Most confidently contradicted first: the scores of the issues rise along the ranking.
    assert (np.diff(result.scores[result.issues]) >= 0).all() and (result.scores[result.issues] < 0).all()


def test_the_review_list_goes_past_the_estimate_to_every_example_the_model_disputes():
    probabilities, given, flipped = _planted()
    # Two clean examples the model gets wrong unsurely (below every threshold, so not counted),
    # and one flipped label the model only just contradicts.
    unsure_clean, unsure_flip = [20, 150], 40
    probabilities[unsure_clean] = np.where(np.arange(2) == given[unsure_clean, None], 0.45, 0.55)
    given[unsure_flip] = 1 - given[unsure_flip]
    probabilities[unsure_flip] = np.where(np.arange(2) == given[unsure_flip], 0.4, 0.6)
    result = label_issues.find_label_issues(probabilities, given)

    assert sorted(result.issues.tolist()) == flipped.tolist()  # the estimate counts the confident ones only
    listed = [*flipped.tolist(), *unsure_clean, unsure_flip]
    assert sorted(result.review.tolist()) == sorted(listed)
    # Ranked by the score, lowest first: the confident issues, then the flip at -0.2, then the clean ones at -0.1.
    assert (np.diff(result.scores[result.review]) >= 0).all()
    assert result.review[: flipped.size].tolist() == result.issues.tolist()
    assert result.review[flipped.size] == unsure_flip
    assert (result.suggested[listed] == 1 - given[listed]).all()
    unlisted = np.setdiff1d(np.arange(given.size), listed)
    assert (result.suggested[unlisted] == -1).all() and (result.scores[unlisted] > 0).all()


def test_no_planted_errors_no_issues():
    probabilities, _, _ = _planted(flips=0)
    given = np.repeat([0, 1], 100)
    result = label_issues.find_label_issues(probabilities, given)
    assert result.issues.size == 0 and (result.noise_rates == 0).all()


def test_thresholds_and_confident_joint_by_hand():
    probabilities = np.array(
        [
            [0.9, 0.1],  # given 0
            [0.7, 0.3],  # given 0
            [0.2, 0.8],  # given 0: confidently 1
            [0.4, 0.6],  # given 1
            [0.1, 0.9],  # given 1
            [0.6, 0.4],  # given 1: above no threshold
        ]
    )
    given = np.array([0, 0, 0, 1, 1, 1])
    thresholds = label_issues.per_class_thresholds(probabilities, given)
    # t_0 = (0.9 + 0.7 + 0.2) / 3 = 0.6; t_1 = (0.6 + 0.9 + 0.4) / 3 = 0.6333...
    np.testing.assert_allclose(thresholds, [0.6, 1.9 / 3])
    joint = label_issues.confident_joint(probabilities, given, thresholds)
    # Row 0: 0.9 and 0.7 >= t_0 -> class 0; 0.8 >= t_1 -> class 1. Row 1: 0.6 < t_1 and
    # 0.4 < t_0 -> not counted; 0.9 -> class 1; 0.6 >= t_0 -> class 0.
    np.testing.assert_array_equal(joint, [[2, 1], [1, 1]])
    calibrated = label_issues.calibrate(joint, np.array([3, 3]))
    np.testing.assert_allclose(calibrated, [[2, 1], [1.5, 1.5]])
    result = label_issues.find_label_issues(probabilities, given)
    np.testing.assert_allclose(result.noise_rates, [1 / 3, 0.5])
    # round(1) of class 0 -> example 2; round(1.5) = 2 of class 1 -> the two with the largest p0 - p1.
    assert sorted(result.issues.tolist()) == [2, 3, 5]
    assert result.issues[0] == 2  # margin 0.2 - 0.8 = -0.6, the lowest.


def test_an_example_above_two_thresholds_counts_for_its_most_probable_class():
    probabilities = np.array([[0.5, 0.4, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    thresholds = np.array([0.3, 0.3, 0.5])
    joint = label_issues.confident_joint(probabilities, np.array([2, 1, 2]), thresholds)
    assert joint[2, 0] == 1 and joint[2, 1] == 0 and joint.sum() == 3


def test_grouped_folds_put_each_group_in_one_fold_and_are_balanced_and_deterministic():
    rng = np.random.default_rng(1)
    groups = rng.choice([f"subject{i}" for i in range(37)], size=400)
    assigned = folds.assign_folds(groups, 5)
    for group in np.unique(groups):
        assert np.unique(assigned[groups == group]).size == 1
    sizes = np.bincount(assigned, minlength=5)
    assert sizes.sum() == 400 and sizes.min() > 0
    assert sizes.max() - sizes.min() <= np.unique(groups, return_counts=True)[1].max()
    # The same groups, in another order, get the same folds.
    order = rng.permutation(400)
    np.testing.assert_array_equal(folds.assign_folds(groups[order], 5), assigned[order])
    # One group per example (the ids): sizes differ by at most one.
    ids = np.array([f"id{i}" for i in range(23)])
    assert np.ptp(np.bincount(folds.assign_folds(ids, 5))) <= 1
    with pytest.raises(ValueError, match="groups cannot fill"):
        folds.assign_folds(ids[:3], 5)


def test_class_probabilities_of_both_heads():
    np.testing.assert_allclose(folds.class_probabilities(np.array([[0.25]])), [[0.75, 0.25]])
    np.testing.assert_allclose(folds.class_probabilities(np.array([[0.3, 0.7]])), [[0.3, 0.7]])


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def flipped_dir(tmp_path_factory) -> str:
    """24 labelled 16x16 images of 6 subjects (4 each) in three splits, three labels flipped,
    two images with no label row."""
    import cv2

    from pipelines.preprocess import run

    root = tmp_path_factory.mktemp("label_issues")
    (root / "images").mkdir()
    rows = ["id,label,subject"]
    for index in range(24):
        image_id, label = f"img_{index:02d}", index % 2
        cv2.imwrite(str(root / "images" / f"{image_id}.png"), labelled_image(label, index, height=16, width=16))
        rows.append(f"{image_id},{1 - label if image_id in FLIPPED else label},s{index // 4}")
    for index, image_id in enumerate(UNLABELLED):
        cv2.imwrite(
            str(root / "images" / f"{image_id}.png"), labelled_image(index % 2, 100 + index, height=16, width=16)
        )
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    output = root / "data"
    run(
        [
            "--images",
            str(root / "images"),
            "--labels_csv",
            str(root / "labels.csv"),
            "--output",
            str(output),
            "--classes",
            "no,yes",
            "--splits",
            "train=0.5,validation=0.25,test=0.25",
            "--group_by",
            "subject",
            "--balance",
            "none",
            "--image_size",
            "16,16",
            "--color_mode",
            "rgb",
        ]
    )
    return str(output)


@pytest.mark.slow
def test_find_label_issues_command_end_to_end(flipped_dir, tmp_path, capsys):
    job_dir = tmp_path / "job"
    # An unlabelled image gone since preprocessing: an error in its row, the others predicted.
    (pathlib.Path(flipped_dir).parent / "images" / f"{UNLABELLED[1]}.png").unlink()
    task.main(
        [
            "find_label_issues",
            "--data_dir",
            flipped_dir,
            "--job_dir",
            str(job_dir),
            "--folds",
            "2",
            "--epochs",
            "1",
            "--verbose",
            "0",
        ]
    )
    assert "likely wrong labels of 24" in capsys.readouterr().out
    oof = _rows(job_dir / "oof_probabilities.csv")
    # Every labelled example of every split scored exactly once, out of fold.
    assert sorted(row["id"] for row in oof) == [f"img_{i:02d}" for i in range(24)]
    assert {row["fold"] for row in oof} == {"1", "2"}
    # A subject is scored by one fold only: never in the folds it was trained on.
    folds_of_subject = {}
    for row in oof:
        folds_of_subject.setdefault(int(row["id"][4:]) // 4, set()).add(row["fold"])
    assert all(len(f) == 1 for f in folds_of_subject.values()), folds_of_subject
    for row in oof:
        p = float(row["p_no"]), float(row["p_yes"])
        assert abs(sum(p) - 1) < 1e-5 and float(row["probability"]) == pytest.approx(p[1], abs=1e-6)
        index = int(row["id"][4:])
        assert row["given_label"] == ("no", "yes")[1 - index % 2 if row["id"] in FLIPPED else index % 2]
    fold_files = sorted(p.name for p in (job_dir / "cross_validation").glob("*.csv"))
    assert fold_files == ["fold-1-of-2.csv", "fold-2-of-2.csv"]
    assert sorted(p.name for p in (job_dir / "cross_validation").glob("*.json")) == [
        "fold-1-of-2.json",
        "fold-2-of-2.json",
    ]
    assert sum(len(_rows(job_dir / "cross_validation" / name)) for name in fold_files) == 24
    with open(job_dir / "label_issues.csv", newline="") as f:
        reader = csv.DictReader(f)
        issues = list(reader)
    assert tuple(reader.fieldnames) == label_issues.LABEL_ISSUES_COLUMNS
    assert [int(row["rank"]) for row in issues] == list(range(1, len(issues) + 1))
    assert all(row["suggested_label"] != row["given_label"] for row in issues)
    # The review list: the estimate's issues (issue 1) and every other label the models contradict.
    scores = {row["id"]: float(row["score"]) for row in issues}
    assert [float(row["score"]) for row in issues] == sorted(scores.values())
    disputed = {row["id"] for row in oof if row["label"] != row["given_label"]}
    assert {row["id"] for row in issues if row["issue"] == "0"} == disputed - {
        row["id"] for row in issues if row["issue"] == "1"
    }
    assert {row["issue"] for row in issues} <= {"0", "1"}
    # Every labelled image named by its file, from the preprocess output's examples index.
    assert all(os.path.basename(row["path"]) == f"{row['id']}.png" for row in [*issues, *oof])
    assert all(os.path.exists(row["path"]) for row in oof)
    summary = json.loads((job_dir / "label_issues_summary.json").read_text())
    assert summary["num_examples"] == 24 and summary["num_listed"] == len(issues)
    assert summary["num_issues"] == sum(row["issue"] == "1" for row in issues)
    assert sum(c["given"] for c in summary["classes"].values()) == 24
    assert np.array(summary["confident_joint"]).shape == (2, 2) and summary["unlabelled"] == 2
    assert summary["model"] == "face_cnn" and summary["hyperparameters"]["input_norm"] == "local"  # the defaults
    suggested = _rows(job_dir / "suggested_labels.csv")
    assert sorted(row["id"] for row in suggested) == list(UNLABELLED)
    assert all(row["path"].endswith(f"{row['id']}.png") for row in suggested)
    found, gone = sorted(suggested, key=lambda row: row["id"])
    assert found["error"] == "" and found["suggested_label"] in ("no", "yes") and 0.5 <= float(found["confidence"]) <= 1
    assert gone["error"] == "no such file" and gone["suggested_label"] == gone["probability"] == ""
    assert not list(job_dir.rglob("*.tmp"))


@pytest.mark.slow
def test_a_rerun_refits_only_the_folds_not_fitted_with_its_settings(flipped_dir, tmp_path, monkeypatch):
    job_dir = tmp_path / "job"
    command = ["find_label_issues", "--data_dir", flipped_dir, "--job_dir", str(job_dir), "--folds", "2"]
    command += ["--epochs", "1", "--verbose", "0"]
    real_fit, fitted = fitting.fit, []

    def counting_fit(run, **kwargs):
        fitted.append(run.seed)  # Fold K fits with seed --seed + K.
        return real_fit(run, **kwargs)

    monkeypatch.setattr(fitting, "fit", counting_fit)
    outputs = ("oof_probabilities.csv", "label_issues.csv", "suggested_labels.csv")

    def runs(*extra: str) -> tuple[list[int], dict[str, bytes]]:
        fitted.clear()
        assert task.main([*command, *extra]) == 0
        return list(fitted), {name: (job_dir / name).read_bytes() for name in outputs}

    fits, first = runs()
    assert fits == [0, 1]
    assert runs() == ([], first)  # Nothing refitted, the same outputs to the byte.
    (job_dir / "cross_validation" / "fold-2-of-2.json").unlink()  # Killed before fold 2 was recorded.
    assert runs()[0] == [1]
    assert runs("--overwrite")[0] == [0, 1]
    (job_dir / "cross_validation" / "fold-1-of-2.json").write_text("{")  # Cut short: not trusted.
    assert runs()[0] == [0]
    assert runs("--epochs", "2")[0] == [0, 1]  # Other settings: other folds.


def test_folds_below_two_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        task.main(["find_label_issues", "--data_dir", str(tmp_path), "--job_dir", str(tmp_path), "--folds", "1"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_one_class_data_is_warned_of_by_preprocess_and_refused_by_find_label_issues(tmp_path, capsys):
    import cv2

    from pipelines.preprocess import run

    (tmp_path / "images").mkdir()
    for index in range(8):
        cv2.imwrite(str(tmp_path / "images" / f"img_{index}.png"), labelled_image(1, index, height=16, width=16))
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"img_{i},yes\n" for i in range(8)))
    output = tmp_path / "data"
    argv = ["--images", str(tmp_path / "images"), "--labels_csv", str(tmp_path / "labels.csv")]
    run([*argv, "--output", str(output), "--classes", "no,yes", "--balance", "none", "--image_size", "16,16"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "one class only" in line]
    assert warnings == [
        "WARNING: one class only: every example written is 'yes'; a classifier needs two "
        "(check the labels CSV, --label_column, --class_folders)"
    ]

    job_dir = tmp_path / "job"
    status = task.main(["find_label_issues", "--data_dir", str(output), "--job_dir", str(job_dir)])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: --data_dir {output}: every labelled example is of class 'yes'; find_label_issues "
        "needs examples of at least two classes"
    ]
    assert not job_dir.exists()


def test_more_folds_than_labelled_examples_is_refused_up_front(flipped_dir, tmp_path, capsys):
    status = task.main(["find_label_issues", "--data_dir", flipped_dir, "--job_dir", str(tmp_path), "--folds", "25"])
    assert status == 2
    assert capsys.readouterr().err.strip() == (
        "error: --folds 25: more than the 24 labelled examples of --data_dir; pass at most 24"
    )
