"""The review's findings: label issues and the quality audit, read for the suspects, quality and
duplicates filters; a wrong file is one line ``error: …`` and exit 2.

Over a copy of the glasses demo data (conftest.py); servers run in-process on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
import logging

import pytest

from pipelines.review.cli import create_app, parse_args
from tests.pipelines.review.client import (
    CLASSES,
    review_argv,
    serving,
    train_labels,
    write_label_issues,
    write_quality,
)

FLAGS = {"1": [], "2": ["blurry"], "3": ["dark", "low_contrast"], "4": [], "10": ["blurry"], "777": ["dark", "blurry"]}
GROUPS = [
    {"members": ["1", "8"], "member_splits": ["train", "train"], "kind": "exact"},
    {"members": ["4", "20", "33"], "member_splits": ["train", "test", "train"], "kind": "near"},
    {"members": ["15", "900"], "member_splits": ["train", "validation"], "kind": "near"},
]


def test_suspects_come_in_rank_order_with_their_given_and_suggested_labels(images, tmp_path):
    truth = train_labels(images)
    rows = [
        ("12", CLASSES[truth["12"]], CLASSES[1 - truth["12"]], -0.5, 2),
        ("5", CLASSES[truth["5"]], CLASSES[1 - truth["5"]], -0.9, 1),
        ("999", "glasses", "no_glasses", -0.1, 4),  # Not an image of this folder: left out.
        ("3", str(truth["3"]), str(1 - truth["3"]), -0.2, 3, 0),  # Class indices are labels too; past the estimate.
    ]
    issues = write_label_issues(tmp_path / "label_issues.csv", rows)
    with serving(review_argv(images, tmp_path, "--label_issues", str(issues))) as (client, _):
        filters = client.get("/api/state").json()["filters"]
        assert "suspects" in filters and "quality" not in filters and "duplicates" not in filters
        assert client.ids("suspects") == ["5", "12", "3"]
        item = client.get("/api/items?id=5").json()["items"][0]
        assert item["suspect"] == {
            "id": "5",
            "given": truth["5"],
            "suggested": 1 - truth["5"],
            "score": -0.9,
            "rank": 1,
            "issue": True,
        }
        assert client.get("/api/items?id=3").json()["items"][0]["suspect"]["issue"] is False
        assert item["flags"] == [] and item["duplicate"] is None
        assert client.get("/api/items?id=6").json()["items"][0]["suspect"] is None
    with serving(review_argv(images, tmp_path)) as (client, _):
        assert client.get("/api/ids?filter=suspects").status == 400  # Only with --label_issues.


def test_a_label_issues_file_without_the_issue_column_counts_every_row(images, tmp_path):
    truth = train_labels(images)
    issues = tmp_path / "label_issues.csv"  # as find_label_issues wrote it before the review list
    issues.write_text(f"id,path,given_label,suggested_label,score,rank\n5,,{truth['5']},{1 - truth['5']},-0.9,1\n")
    with serving(review_argv(images, tmp_path, "--label_issues", str(issues))) as (client, _):
        assert client.get("/api/items?id=5").json()["items"][0]["suspect"]["issue"] is True


def test_suspects_the_review_does_not_list_are_named_by_their_files(images, tmp_path, caplog):
    rows = [("999", "glasses", "no_glasses", -0.1, 1), ("998", "glasses", "no_glasses", -0.2, 2)]
    issues = write_label_issues(tmp_path / "label_issues.csv", rows, paths={"999": "/elsewhere/face-999.png"})
    with caplog.at_level(logging.WARNING, logger="pipelines.review.findings"):
        create_app(*parse_args(review_argv(images, tmp_path, "--label_issues", str(issues))))
    assert "2 label issues of ids the review does not list (another folder?), e.g. /elsewhere/face-999.png, 998" in (
        caplog.text
    )


def test_quality_outliers_most_reasons_first_and_duplicate_groups_leakage_first(images, tmp_path):
    quality = write_quality(tmp_path / "out" / "quality", FLAGS, GROUPS)
    with serving(review_argv(images, tmp_path, "--quality_dir", str(quality))) as (client, app):
        filters = client.get("/api/state").json()["filters"]
        assert "quality" in filters and "duplicates" in filters and "suspects" not in filters
        assert client.ids("quality") == ["3", "2", "10"]
        assert set(app.store.findings.flags) == {"2", "3", "10"}  # Unflagged images are not kept.
        assert client.get("/api/items?id=3").json()["items"][0]["flags"] == ["dark", "low_contrast"]

        answer = client.get("/api/ids?filter=duplicates").json()
        assert answer["ids"] == ["4", "20", "33", "15", "1", "8"]  # 900 is not an image of this folder.
        assert answer["groups"] == [
            {
                "members": ["4", "20", "33"],
                "splits": ["train", "test", "train"],
                "kind": "near",
                "kept": "4",
                "leakage": True,
            },
            {"members": ["15"], "splits": ["train"], "kind": "near", "kept": "15", "leakage": True},
            {"members": ["1", "8"], "splits": ["train", "train"], "kind": "exact", "kept": "1", "leakage": False},
        ]
        items = {t["id"]: t for t in client.get("/api/items?id=20&id=1&id=2").json()["items"]}
        assert items["20"]["duplicate"] == {"group": 0, "kind": "near", "leakage": True, "kept": "4", "split": "test"}
        assert items["1"]["duplicate"]["group"] == 2 and items["1"]["duplicate"]["kept"] == "1"
        assert items["2"]["duplicate"] is None
        assert client.decide("20", "exclude")["item"]["excluded"]  # Copies are excluded as any image.
    assert (tmp_path / "exclusions.csv").read_text() == "id\n20\n"


def test_an_empty_audit_offers_its_filters_with_nothing_in_them(images, tmp_path):
    quality = write_quality(tmp_path / "quality", {"1": [], "2": []}, [])
    with serving(review_argv(images, tmp_path, "--quality_dir", str(quality))) as (client, _):
        assert client.ids("quality") == [] and client.ids("duplicates") == []


def _not_json(folder):
    folder.mkdir()
    (folder / "images-00000-of-00001.jsonl").write_text('{"id": "1", "flags": []}\n{"id": "2", "fl\n')
    (folder / "duplicates-00000-of-00001.jsonl").write_text("")
    return folder


def _no_flags(folder):
    write_quality(folder, {"1": []}, [])
    (folder / "images-00000-of-00002.jsonl").write_text('{"id": "3", "split": "train"}\n')
    return folder


def _no_duplicates(folder):
    write_quality(folder, {"1": ["dark"]}, [])
    (folder / "duplicates-00000-of-00001.jsonl").unlink()
    return folder


def _splits_short(folder):
    write_quality(folder, {}, [])
    group = {"members": ["1", "2"], "member_splits": ["train"], "splits": ["train"], "kind": "near", "kept": "1"}
    (folder / "duplicates-00000-of-00001.jsonl").write_text(json.dumps({**group, "leakage": False}) + "\n")
    return folder


@pytest.mark.parametrize(
    ("flag", "make", "message"),
    [
        ("--label_issues", lambda p: p / "missing.csv", "cannot read it"),
        ("--label_issues", lambda p: p, "cannot read it"),  # A folder.
        (
            "--label_issues",
            lambda p: (p / "preds.csv", (p / "preds.csv").write_text("path,probability,label\na.png,0.5,x\n"))[0],
            "no column id,given_label,suggested_label,score,rank",
        ),
        (
            "--label_issues",
            lambda p: write_label_issues(p / "issues.csv", [("1", "glasses", "cat", -0.5, 1)]),
            "line 2: suggested_label 'cat' is not one of ['no_glasses', 'glasses']",
        ),
        (
            "--label_issues",
            lambda p: (
                p / "bin.csv",
                (p / "bin.csv").write_bytes(b"id,given_label,suggested_label,score,rank\n\xff\n"),
            )[0],
            "not a CSV",
        ),
        ("--quality_dir", lambda p: p / "nowhere", "no images-*.jsonl"),
        ("--quality_dir", lambda p: _no_duplicates(p / "q"), "no duplicates-*.jsonl"),
        ("--quality_dir", lambda p: _not_json(p / "q"), "line 2 is not JSON"),
        ("--quality_dir", lambda p: _no_flags(p / "q"), "line 1 has no id/flags"),
        ("--quality_dir", lambda p: _splits_short(p / "q"), "line 1 has no members/member_splits"),
    ],
)
def test_a_wrong_findings_file_is_one_error_line_naming_it_and_its_flag(images, tmp_path, capsys, flag, make, message):
    given = make(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        create_app(*parse_args(review_argv(images, tmp_path, flag, str(given))))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} {tmp_path}"), lines
    assert message in lines[0]
