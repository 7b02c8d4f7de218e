"""The review's listing: the pipeline's labels, and predictions matched to images.

Over a copy of the glasses demo data (conftest.py); servers run in-process on 127.0.0.1, port 0.
"""

from __future__ import annotations

import csv

import pytest

from pipelines.review.cli import parse_args
from pipelines.review.listing import build_index, images_root
from tests.pipelines.review.client import CLASSES, review_argv, serving, train_labels


def test_the_index_holds_the_pipelines_labels_in_natural_order(images, tmp_path):
    args, config = parse_args(review_argv(images, tmp_path))
    items = build_index(config, images_root(args.images))
    assert list(items) == [str(i) for i in range(1, 41)]
    truth = train_labels(images)
    assert {i: items[i].label for i in truth} == truth
    assert all(items[i].note == "" for i in truth)
    assert [(items[i].label, items[i].note) for i in ("37", "38", "39", "40")] == [(None, "unlabelled")] * 4


def test_predictions_put_the_likely_mistakes_first(images, tmp_path):
    truth = train_labels(images)
    faces = images / "faces-spring-2020"
    # P(glasses) per id: 3 is the most wrong, then 1, then 2; 4 agrees with its label.
    wrongness = {"3": 0.95, "1": 0.8, "2": 0.6, "4": 0.05}
    probability = {i: (1 - w if truth[i] else w) for i, w in wrongness.items()}
    rows = [(str(faces / f"face-{i}.png"), p) for i, p in probability.items() if i != "1"]
    rows.append(("some/other/place/face-1.png", probability["1"]))  # Matched by the file name.
    rows.append(("/elsewhere/face-777.png", 0.5))  # No such image: ignored.
    with open(tmp_path / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "probability", "label"])
        writer.writerows((path, f"{p:.6f}", CLASSES[p >= 0.5]) for path, p in rows)

    with serving(review_argv(images, tmp_path)) as (client, _):
        assert client.get("/api/ids?filter=disagree").status == 400  # Only with --predictions.
    with serving(review_argv(images, tmp_path, "--predictions", str(tmp_path / "predictions.csv"))) as (client, _):
        assert "disagree" in client.get("/api/state").json()["filters"]
        ordered = client.ids("disagree")
        assert ordered[:4] == ["3", "1", "2", "4"]
        assert sorted(ordered) == sorted(client.ids("all"))  # Ids without a prediction follow.
        assert client.get("/api/items?id=3").json()["items"][0]["probability"] == pytest.approx(
            probability["3"], abs=1e-5
        )
        client.decide("3", "flip")  # Fixed: now it agrees with the model.
        assert client.ids("disagree")[:4] == ["1", "2", "3", "4"]
