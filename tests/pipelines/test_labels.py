"""The label rules as plain functions: an id from a file name, and each id's resolved label."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import labels
from pipelines.labels import file_name_regex, resolve_label
from pipelines.records import NO_LABEL, LabelledImage, LabelRow, Rejection
from tests.pipelines.label_inputs import IMAGE, job_config


def _row(label: int | None = None, error: str = "") -> LabelRow:
    return LabelRow(label, "train", "", error)


@pytest.mark.parametrize(
    "pattern, name, expected",
    [
        ("face-{id}.png", "face-12.png", "12"),
        ("face-{id}.png", "FACE-3.PNG", "3"),
        ("{id}", "0042.jpg", "0042"),
        ("face-{id}.png", "other.png", None),
    ],
)
def test_file_name_regex(pattern, name, expected):
    match = file_name_regex(pattern).match(name)
    assert (match.group("id") if match else None) == expected


def test_key_image_takes_the_id_from_the_file_name_or_rejects_it():
    rule = labels.id_rule(job_config("--labels_csv", "/data/l.csv", "--file_pattern", "face-{id}.png"))
    assert labels.key_image("/data/face-7.png", 5, rule) == ("7", ("/data/face-7.png", 5, None, ""))
    assert labels.key_image("/data/cat.png", 5, rule) == Rejection(
        stage="list", reason="file_name_mismatch", path="/data/cat.png", detail="cat.png"
    )


def test_key_image_strips_the_id_as_a_csv_cell_is_stripped():
    rule = labels.id_rule(job_config("--labels_csv", "/data/l.csv"))
    assert labels.key_image("/d/ two  spaces .png", 1, rule)[0] == "two  spaces"
    assert labels.key_image("/d/  .png", 1, rule) == Rejection(
        stage="list", reason="file_name_mismatch", path="/d/  .png", detail="  .png"
    )


def test_key_image_with_class_folders_labels_and_groups_by_folder():
    rule = labels.id_rule(job_config("--dataset", "comics"))
    assert labels.key_image("/d/faces/12.jpg", 1, rule) == ("faces/12", ("/d/faces/12.jpg", 1, 1, "12"))
    rejected = labels.key_image("/d/other/12.jpg", 1, rule)
    assert (rejected.reason, rejected.image_id, rejected.detail) == ("unknown_class_folder", "12", "other")


def test_the_csv_label_is_used_when_nothing_else_decides():
    resolution = resolve_label("7", [IMAGE], [_row(1)])
    assert resolution == (LabelledImage("7", "/data/face-7.png", 123, 1, "7", "train", False), [], "labelled", None)


def test_an_override_wins_over_the_csv_label():
    resolution = resolve_label("7", [IMAGE], [_row(1)], overrides=[0])
    assert (resolution.image.label, resolution.image.overridden, resolution.outcome) == (0, True, "overrides_applied")


def test_an_exclusion_wins_over_labels_and_overrides():
    resolution = resolve_label("7", [IMAGE], [_row(1)], overrides=[0], excluded=True)
    assert resolution.image is None and resolution.outcome == "excluded"
    assert [(r.reason, r.stage, r.path) for r in resolution.rejections] == [
        ("excluded", "exclusions", "/data/face-7.png")
    ]


def test_conflicting_labels_and_overrides_are_rejected():
    labelled = resolve_label("7", [IMAGE], [_row(0), _row(1)])
    assert [(r.reason, r.detail) for r in labelled.rejections] == [("conflicting_labels", "[0, 1]")]
    overridden = resolve_label("7", [IMAGE], [_row(0)], overrides=[0, 1])
    assert [(r.reason, r.detail) for r in overridden.rejections] == [("conflicting_overrides", "[0, 1]")]
    assert labelled.image is overridden.image is None and labelled.outcome == overridden.outcome == ""


def test_a_bad_label_is_rejected_with_its_error():
    resolution = resolve_label("7", [IMAGE], [_row(error="label 'maybe' is not ...")])
    assert [(r.reason, r.detail) for r in resolution.rejections] == [("bad_label", "label 'maybe' is not ...")]


def test_unlabelled_rows_and_no_label_row_differ():
    unlabelled = resolve_label("7", [IMAGE], [_row(None)])
    no_row = resolve_label("7", [IMAGE], [])
    assert [r.reason for r in unlabelled.rejections] == ["unlabelled"]
    assert [r.reason for r in no_row.rejections] == ["no_label_row"]
    assert unlabelled.outcome == no_row.outcome == "unlabelled"
    # Both still go to the quality audit, with no label.
    assert unlabelled.image is None and unlabelled.audit_only.label == no_row.audit_only.label == NO_LABEL
    assert unlabelled.audit_only.path == "/data/face-7.png"


def test_a_folder_label_needs_no_csv_and_duplicates_are_reported():
    duplicate = ("/data/b/face-7.png", 9, 1, "g")
    resolution = resolve_label("7", [duplicate, ("/data/a/face-7.png", 5, 1, "g")], [])
    assert resolution.image == LabelledImage("7", "/data/a/face-7.png", 5, 1, "g", "", False)
    assert resolution.rejections == [
        Rejection(
            stage="labels", reason="duplicate_id", path="/data/b/face-7.png", image_id="7", detail="/data/a/face-7.png"
        )
    ]


def test_rows_without_an_image_name_what_they_refer_to():
    resolution = resolve_label("404", [], [_row(1)], overrides=[1], excluded=True)
    assert resolution.image is None and resolution.outcome == ""
    assert [(r.reason, r.is_image) for r in resolution.rejections] == [
        ("unknown_override_id", False),
        ("unknown_exclusion_id", False),
        ("label_without_image", False),
    ]


VECTOR = np.array([1.5, 2.5], np.float32).tobytes()


def _vector_row(label=1, vector=VECTOR, vector_error=""):
    return LabelRow(label, "train", "", "", vector, vector_error)


def test_with_a_vector_an_image_is_written_only_with_its_one_vector():
    good = resolve_label("7", [IMAGE], [_vector_row()], with_vector=True)
    assert good.image.vector == VECTOR and good.outcome == "labelled"

    def reason(rows, **kwargs):
        resolution = resolve_label("7", [IMAGE], rows, with_vector=True, **kwargs)
        assert resolution.image is None
        return resolution.rejections[-1].reason, resolution.rejections[-1].detail

    bad = _vector_row(vector=b"", vector_error="column v3: 'abc' is not a number")
    assert reason([bad]) == ("bad_vector", "column v3: 'abc' is not a number")
    assert reason([bad], overrides=[0]) == ("bad_vector", "column v3: 'abc' is not a number")
    assert reason([_vector_row(), _vector_row(vector=VECTOR[::-1])]) == ("bad_vector", "its rows disagree")
    assert reason([], overrides=[1]) == ("bad_vector", "no labels-CSV row")
    assert reason([]) == ("no_label_row", "")
    assert reason([bad], excluded=True) == ("excluded", "")
    # Without --numeric_columns nothing changes: no vector, no bad_vector.
    assert resolve_label("7", [IMAGE], [_row(1)]).image.vector == b""
