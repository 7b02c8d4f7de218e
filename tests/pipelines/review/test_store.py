"""The review's state and files: decisions in the pipeline's CSV formats, resume, undo, filters.

Each test starts the server in-process on 127.0.0.1, port 0, over a copy of the glasses demo
data (tests/pipelines/review/conftest.py).
"""

from __future__ import annotations

import logging
import os
import stat

import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines import options
from pipelines.csv_rows import parse_label
from pipelines.review import store
from pipelines.review.store import JOURNAL_HEADER
from pipelines.sources import LabelledImages, resolve_vector_columns
from tests.image_files import offline_test_pipeline
from tests.pipelines.review.client import CLASSES, read_rows, review_argv, serving, train_labels, write_label_issues


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
    resolved = p | LabelledImages(resolve_vector_columns(config))
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("mode", [0o644, 0o664])
def test_rewritten_csvs_keep_their_file_mode(images, tmp_path, mode):
    overrides = tmp_path / "overrides.csv"
    overrides.write_text("id,glasses\n")
    overrides.chmod(mode)
    with serving(review_argv(images, tmp_path)) as (client, _):
        client.decide("1", "flip")
        client.decide("2", "exclude")
    assert stat.S_IMODE(overrides.stat().st_mode) == mode
    # A CSV the review creates gets the mode any new file gets (umask), not mkstemp's 0600.
    assert stat.S_IMODE((tmp_path / "exclusions.csv").stat().st_mode) == 0o666 & ~_umask()


def test_leftover_temp_files_of_the_csvs_are_removed_at_start_and_nothing_else(images, tmp_path):
    ours = [
        tmp_path / ".overrides.csv.facepipe-0123456789abcdef.tmp",
        tmp_path / ".exclusions.csv.facepipe-fedcba9876543210.tmp",
    ]
    others = [
        tmp_path / ".overrides.csv.x1y2z3w4.tmp",  # Not facepipe's name.
        tmp_path / ".labels.csv.facepipe-0123456789abcdef.tmp",  # Another CSV's.
        tmp_path / "overrides.csv.facepipe-0123456789abcdef.tmp",
        tmp_path / ".overrides.csv.facepipe-0123456789abcdef.tmp.bak",
    ]
    for path in ours + others:
        path.write_text("id,glasses\n1,0\n")
    folder = tmp_path / ".exclusions.csv.facepipe-00000000000000ff.tmp"
    folder.mkdir()
    with serving(review_argv(images, tmp_path)) as (client, _):
        client.decide("1", "flip")
    assert not any(path.exists() for path in ours)
    assert all(path.exists() for path in others) and folder.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if "facepipe-" in p.name) == sorted(
        p.name for p in [*others, folder] if "facepipe-" in p.name
    )


def test_a_failed_csv_write_changes_nothing_and_a_restart_agrees(images, tmp_path, monkeypatch):
    truth = train_labels(images)
    real_write = store.write_csv_atomic

    def failing_write(path, header, rows):
        if os.path.basename(path) == "overrides.csv":
            raise OSError(28, "No space left on device")
        real_write(path, header, rows)

    with serving(review_argv(images, tmp_path)) as (client, app):
        client.decide("1", "flip")
        monkeypatch.setattr(store, "write_csv_atomic", failing_write)
        failed = client.post("/api/decide", {"id": "2", "action": "flip"})
        assert failed.status == 500 and "No space left" in failed.json()["error"]
        assert client.post("/api/undo").status == 500  # Undoing 1 fails the same way.
        assert app.store.overrides == {"1": 1 - truth["1"]}
        client.decide("3", "exclude")  # The exclusions CSV is still written.
        monkeypatch.undo()
    journal = read_rows(tmp_path / "overrides.journal.csv")[1:]
    # Each failed change is in the journal, followed by its inverse: replaying it gives the state above.
    assert [(row[1], row[2]) for row in journal] == [
        ("set", "1"),
        ("set", "2"),
        ("undo", "2"),
        ("undo", "1"),
        ("set", "1"),
        ("set", "3"),
    ]
    with serving(review_argv(images, tmp_path)) as (client, app):
        assert app.store.overrides == {"1": 1 - truth["1"]} and list(app.store.excluded) == ["3"]
        assert client.post("/api/undo").json()["decision"]["id"] == "3"
        assert client.post("/api/undo").json()["decision"]["id"] == "1"
        assert client.post("/api/undo").json()["decision"] is None
    assert read_rows(tmp_path / "overrides.csv") == [["id", "glasses"]]


def test_a_decision_whose_inverse_cannot_be_journalled_stays_in_effect(images, tmp_path, monkeypatch):
    truth = train_labels(images)
    real_append = store.append_rows
    appends = []

    def append_once(path, rows):
        appends.append(rows)
        if len(appends) > 1:
            raise OSError(28, "No space left on device")
        real_append(path, rows)

    with serving(review_argv(images, tmp_path)) as (client, app):
        monkeypatch.setattr(store, "write_csv_atomic", lambda *args: (_ for _ in ()).throw(OSError(28, "full")))
        monkeypatch.setattr(store, "append_rows", append_once)
        failed = client.post("/api/decide", {"id": "1", "action": "flip"})
        monkeypatch.undo()
        assert failed.status == 500 and "decision stays" in failed.json()["error"]
        assert app.store.overrides == {"1": 1 - truth["1"]}  # As the journal says.
    assert read_rows(tmp_path / "overrides.csv") == [["id", "glasses"]]
    with serving(review_argv(images, tmp_path)) as (client, app):
        assert client.post("/api/undo").json()["decision"]["id"] == "1"


def test_a_failed_journal_append_changes_nothing(images, tmp_path, monkeypatch):
    with serving(review_argv(images, tmp_path)) as (client, app):
        monkeypatch.setattr(store, "append_rows", lambda path, rows: (_ for _ in ()).throw(OSError(5, "I/O error")))
        assert client.post("/api/decide", {"id": "1", "action": "flip"}).status == 500
        monkeypatch.undo()
        assert app.store.overrides == {}
    assert read_rows(tmp_path / "overrides.csv") == [["id", "glasses"]]
    assert read_rows(tmp_path / "overrides.journal.csv") == [JOURNAL_HEADER]


def test_a_crash_between_the_journal_and_the_csv_is_repaired_at_the_next_start(images, tmp_path):
    truth = train_labels(images)
    with serving(review_argv(images, tmp_path)) as (client, _):
        client.decide("1", "flip")
    # What a crash leaves: the journal's fsynced line of a flip of 2 that never reached the CSV,
    # then half a line of the next decision.
    with open(tmp_path / "overrides.journal.csv", "a") as f:
        f.write(f"2026-01-01T00:00:00+0000,set,2,label,,{1 - truth['2']}\n2026-01-01T00:00:01+0000,set,3,lab")
    assert read_rows(tmp_path / "overrides.csv")[1:] == [["1", str(1 - truth["1"])]]
    with serving(review_argv(images, tmp_path)) as (client, app):
        assert app.store.overrides == {"1": 1 - truth["1"], "2": 1 - truth["2"]}
        client.decide("4", "exclude")
    assert read_rows(tmp_path / "overrides.csv")[1:] == [["1", str(1 - truth["1"])], ["2", str(1 - truth["2"])]]
    # The torn line was dropped at the start: the next decision follows the last whole row.
    assert [row[1:3] for row in read_rows(tmp_path / "overrides.journal.csv")[1:]] == [
        ["set", "1"],
        ["set", "2"],
        ["set", "4"],
    ]


def test_a_hand_edit_of_a_decided_id_is_kept_and_adopted_into_the_journal(images, tmp_path, caplog):
    truth = train_labels(images)
    with serving(review_argv(images, tmp_path)) as (client, _):
        client.decide("5", "flip")
        client.decide("6", "exclude")
    # A person edits both CSVs by hand while the review is stopped.
    (tmp_path / "overrides.csv").write_text(f"id,glasses\n5,{truth['5']}\n9,{1 - truth['9']}\n")
    (tmp_path / "exclusions.csv").write_text("id\n")
    with caplog.at_level(logging.WARNING), serving(review_argv(images, tmp_path)) as (client, app):
        assert app.store.overrides == {"5": truth["5"], "9": 1 - truth["9"]}
        assert app.store.excluded == {}
        warnings = [r.getMessage() for r in caplog.records if "hand edits" in r.getMessage()]
        assert len(warnings) == 1 and "5 (label" in warnings[0] and "6 (excluded 1 -> 0)" in warnings[0]
        assert client.post("/api/undo").json()["decision"]["id"] == "6"  # The last adopted edit first.
        assert app.store.excluded == {"6": None}
    assert read_rows(tmp_path / "overrides.csv")[1:] == [["5", str(truth["5"])], ["9", str(1 - truth["9"])]]
    # A restart now changes nothing: the edits are the journal's.
    caplog.clear()
    with caplog.at_level(logging.WARNING), serving(review_argv(images, tmp_path)) as (client, app):
        assert app.store.overrides == {"5": truth["5"], "9": 1 - truth["9"]} and app.store.excluded == {"6": None}
    assert "hand edits" not in caplog.text


def test_accepting_a_suggestion_is_a_label_decision_saved_journalled_and_undone_like_a_flip(images, tmp_path):
    truth = train_labels(images)
    issues = write_label_issues(
        tmp_path / "label_issues.csv",
        [
            ("5", CLASSES[truth["5"]], CLASSES[1 - truth["5"]], -0.9, 1),
            # The shards held an override of 6; the model suggests the folder's own label back.
            ("6", CLASSES[1 - truth["6"]], CLASSES[truth["6"]], -0.4, 2),
        ],
    )
    with serving(review_argv(images, tmp_path, "--label_issues", str(issues))) as (client, _):
        client.decide("6", "flip")
        accepted = client.decide("5", "accept")
        assert accepted["item"]["label"] == 1 - truth["5"] and accepted["item"]["overridden"]
        assert client.decide("6", "accept")["item"]["overridden"] is False  # Back at its label: no override.
        assert read_rows(tmp_path / "overrides.csv") == [["id", "glasses"], ["5", str(1 - truth["5"])]]
        assert client.post("/api/decide", {"id": "7", "action": "accept"}).status == 400  # No suggestion for 7.
        assert client.post("/api/undo").json()["decision"]["id"] == "6"
        assert read_rows(tmp_path / "overrides.csv")[1:] == [["5", str(1 - truth["5"])], ["6", str(1 - truth["6"])]]
    journal = read_rows(tmp_path / "overrides.journal.csv")[1:]
    assert [row[1:] for row in journal] == [
        ["set", "6", "label", "", str(1 - truth["6"])],
        ["set", "5", "label", "", str(1 - truth["5"])],
        ["set", "6", "label", str(1 - truth["6"]), ""],
        ["undo", "6", "label", "", str(1 - truth["6"])],
    ]
    with serving(review_argv(images, tmp_path)) as (client, app):  # Without --label_issues: nothing to accept.
        assert client.post("/api/decide", {"id": "5", "action": "accept"}).status == 400
        assert app.store.overrides == {"5": 1 - truth["5"], "6": 1 - truth["6"]}
