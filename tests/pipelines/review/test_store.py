"""The review's state and files: decisions in the pipeline's CSV formats, resume, undo, filters.

Each test starts the server in-process on 127.0.0.1, port 0, over a copy of the glasses demo
data (tests/pipelines/review/conftest.py).
"""

from __future__ import annotations

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.testing.util import assert_that, equal_to

from pipelines import options
from pipelines.labels import parse_label
from pipelines.review.store import JOURNAL_HEADER
from pipelines.sources import LabelledImages
from tests.image_files import offline_test_pipeline
from tests.pipelines.review.client import CLASSES, read_rows, review_argv, serving, train_labels


def test_decisions_are_saved_at_once_in_the_formats_the_pipeline_reads(images, tmp_path):
    truth = train_labels(images)
    with serving(review_argv(images, tmp_path)) as (client, _):
        client.decide("1", "flip")
        client.decide("2", "flip")
        client.decide("2", "flip")  # Back to the original label: no override left.
        client.decide("3", "exclude")
        client.decide("4", "exclude")
        client.decide("4", "exclude")  # Re-included: no exclusion row left.
        client.decide("37", "flip")  # Unlabelled (test.csv) -> class 0.
        # Written before the answer came back, while the server still runs.
        overrides, exclusions = read_rows(tmp_path / "overrides.csv"), read_rows(tmp_path / "exclusions.csv")
    assert overrides == [["id", "glasses"], ["1", str(1 - truth["1"])], ["37", "0"]]
    assert parse_label(overrides[1][1], CLASSES) == 1 - truth["1"]
    assert exclusions == [["id"], ["3"]]
    journal = read_rows(tmp_path / "overrides.journal.csv")
    assert journal[0] == JOURNAL_HEADER
    assert [(row[1], row[2], row[3]) for row in journal[1:]] == [
        ("set", "1", "label"),
        ("set", "2", "label"),
        ("set", "2", "label"),
        ("set", "3", "excluded"),
        ("set", "4", "excluded"),
        ("set", "4", "excluded"),
        ("set", "37", "label"),
    ]

    # The pipeline's own source stage reads the final state: flipped, excluded, untouched.
    config, _ = options.parse_args(
        [
            "--images",
            str(images),
            "--dataset",
            "glasses",
            "--output",
            str(tmp_path / "out"),
            "--overrides_csv",
            str(tmp_path / "overrides.csv"),
            "--exclude",
            str(tmp_path / "exclusions.csv"),
        ]
    )
    p = offline_test_pipeline()
    resolved = p | LabelledImages(config)
    labels = (
        resolved["images"]
        | beam.Filter(lambda im: im.id in {"1", "2", "4", "37"})
        | beam.Map(lambda im: (im.id, im.label, im.overridden))
    )
    reasons = resolved["dead_letter"] | beam.Map(lambda r: (r["id"], r["reason"]))
    expected_reasons = [("3", "excluded"), ("38", "unlabelled"), ("39", "unlabelled"), ("40", "unlabelled")]
    assert_that(
        labels,
        equal_to([("1", 1 - truth["1"], True), ("2", truth["2"], False), ("4", truth["4"], False), ("37", 0, True)]),
    )
    assert_that(reasons, equal_to(expected_reasons), label="DeadLetters")
    p.run().wait_until_finish()


def test_a_restart_resumes_the_state_and_the_undo_history(images, tmp_path):
    truth = train_labels(images)
    # A hand-edited overrides file with two rows for id 9: the last one wins, as documented.
    (tmp_path / "overrides.csv").write_text(f"id,glasses\n9,{truth['9']}\n9,{1 - truth['9']}\n")
    with serving(review_argv(images, tmp_path)) as (client, _):
        client.decide("5", "flip")
        client.decide("10", "flip")
        assert client.post("/api/undo").json()["decision"]["id"] == "10"
        client.decide("6", "exclude")
        assert client.post("/api/reviewed", {"ids": ["7", "8", "no-such-id"]}).status == 200
    with serving(review_argv(images, tmp_path)) as (client, app):
        items = {t["id"]: t for t in client.get("/api/items?id=5&id=6&id=7&id=9").json()["items"]}
        assert items["5"]["label"] == 1 - truth["5"] and items["5"]["overridden"]
        assert items["6"]["excluded"] and items["7"]["reviewed"]
        assert items["9"]["label"] == 1 - truth["9"]
        assert app.store.progress() == {"reviewed": 6, "total": 40, "overridden": 2, "excluded": 1}
        # The rewritten file has one row per id, so the pipeline sees no conflicting overrides.
        assert read_rows(tmp_path / "overrides.csv")[1:] == [["5", str(1 - truth["5"])], ["9", str(1 - truth["9"])]]
        # Undo reaches decisions of the previous session, newest first.
        assert client.post("/api/undo").json()["decision"] == {
            "id": "6",
            "field": "excluded",
            "before": True,
            "after": False,
        }
        assert read_rows(tmp_path / "exclusions.csv") == [["id"]]
        assert client.post("/api/undo").json()["item"] == {**items["5"], "label": truth["5"], "overridden": False}
        assert client.post("/api/undo").json()["decision"] is None  # 9 came from the file, not a decision.
    assert read_rows(tmp_path / "overrides.csv")[1:] == [["9", str(1 - truth["9"])]]
    actions = [row[1] for row in read_rows(tmp_path / "overrides.journal.csv")[1:]]
    assert actions == ["set", "set", "undo", "set", "reviewed", "reviewed", "undo", "undo"]


def test_more_than_two_classes_cycle(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in (1, 2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((20, 20, 3), 100 * i, np.uint8))
    (tmp_path / "labels.csv").write_text("id,kind\n1,b\n2,0\n")
    argv = [
        "--images",
        str(folder),
        "--labels_csv",
        str(tmp_path / "labels.csv"),
        "--label_column",
        "kind",
        "--classes",
        "a,b,c",
        "--overrides_csv",
        str(tmp_path / "o.csv"),
        "--exclude_csv",
        str(tmp_path / "e.csv"),
    ]
    with serving(argv) as (client, _):
        assert [client.decide("1", "flip")["item"]["label"] for _ in range(3)] == [2, 0, 1]
        assert read_rows(tmp_path / "o.csv") == [["id", "kind"]]  # Back at "b": no override.
        client.decide("2", "flip")
    assert read_rows(tmp_path / "o.csv") == [["id", "kind"], ["2", "1"]]


def test_filters_follow_the_current_labels(images, tmp_path):
    with serving(review_argv(images, tmp_path)) as (client, _):
        assert client.ids("unlabelled") == ["37", "38", "39", "40"]
        assert client.ids("all")[:11] == [str(i) for i in range(1, 12)]  # Natural order: 2 before 10.
        client.decide("37", "flip")
        client.decide("12", "flip")
        client.decide("20", "exclude")
        assert client.ids("unlabelled") == ["38", "39", "40"]
        assert client.ids("overridden") == ["12", "20", "37"]
        first = client.get("/api/ids?filter=all").json()["first_unreviewed"]
        assert first == 0
        client.post("/api/reviewed", {"ids": [str(i) for i in range(1, 10)]})
        assert client.get("/api/ids?filter=all").json()["first_unreviewed"] == 9
        assert client.get("/api/ids?filter=nope").status == 400
