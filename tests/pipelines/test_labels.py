"""The label rules as plain functions: ids, label cells, CSV rows and each id's resolved label."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines import labels
from pipelines.config import PreprocessConfig
from pipelines.labels import file_name_regex, parse_label, resolve_label, source_split_of
from pipelines.options import parse_args
from pipelines.records import NO_LABEL, LabelledImage, LabelRow, Rejection

CLASSES = ("no", "yes")
IMAGE = ("/data/face-7.png", 123, None, "")  # (path, size, folder_label, group)


def _config(*extra: str) -> PreprocessConfig:
    config, _ = parse_args(["--images", "/data", "--output", "/dev/null", "--classes", "no,yes", *extra])
    return config


def _labels_config() -> PreprocessConfig:
    return _config("--labels_csv", "/data/train.csv")


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


def test_parse_label_and_source_split():
    assert parse_label("1", ("no", "yes")) == 1
    assert parse_label("1.0", ("no", "yes")) == 1
    assert parse_label("yes", ("no", "yes")) == 1
    for bad in ("2", "0.5", "maybe"):
        with pytest.raises(ValueError):
            parse_label(bad, ("no", "yes"))
    assert [source_split_of(p) for p in ("gs://b/train.csv", "/x/test.csv", "val.csv", "labels.csv")] == [
        "train",
        "test",
        "validation",
        "",
    ]


@pytest.mark.parametrize("cell, expected", [("no", 0), (" yes ", 1), ("1", 1), ("1.0", 1), ("0", 0)])
def test_a_label_cell_is_a_class_name_or_its_index(cell, expected):
    assert parse_label(cell, CLASSES) == expected


@pytest.mark.parametrize("cell", ["0.5", "maybe", "2", "-1", ""])
def test_other_label_cells_are_invalid(cell):
    with pytest.raises(ValueError):
        parse_label(cell, CLASSES)


def test_key_image_takes_the_id_from_the_file_name_or_rejects_it():
    rule = labels.id_rule(_config("--labels_csv", "/data/l.csv", "--file_pattern", "face-{id}.png"))
    assert labels.key_image("/data/face-7.png", 5, rule) == ("7", ("/data/face-7.png", 5, None, ""))
    assert labels.key_image("/data/cat.png", 5, rule) == Rejection(
        stage="list", reason="file_name_mismatch", path="/data/cat.png", detail="cat.png"
    )


def test_key_image_strips_the_id_as_a_csv_cell_is_stripped():
    rule = labels.id_rule(_config("--labels_csv", "/data/l.csv"))
    assert labels.key_image("/d/ two  spaces .png", 1, rule)[0] == "two  spaces"
    assert labels.key_image("/d/  .png", 1, rule) == Rejection(
        stage="list", reason="file_name_mismatch", path="/d/  .png", detail="  .png"
    )


def test_key_image_with_class_folders_labels_and_groups_by_folder():
    rule = labels.id_rule(_config("--dataset", "comics"))
    assert labels.key_image("/d/faces/12.jpg", 1, rule) == ("faces/12", ("/d/faces/12.jpg", 1, 1, "12"))
    rejected = labels.key_image("/d/other/12.jpg", 1, rule)
    assert (rejected.reason, rejected.image_id, rejected.detail) == ("unknown_class_folder", "12", "other")


def test_a_labels_csv_row():
    layout = labels.labels_csv_layout("/data/train.csv", ["id", "label", "note"], _labels_config())
    assert labels.parse_label_row("7,yes,x", layout) == ("7", LabelRow(1, "train", "", ""))
    assert labels.parse_label_row("8,,x", layout) == ("8", LabelRow(None, "train", "", ""))
    _, bad = labels.parse_label_row("9,maybe,x", layout)
    assert bad.label is None and "maybe" in bad.error  # Rejected later, as bad_label.
    assert labels.parse_label_row("  ", layout) is None
    for malformed in ("7,yes", ",1,x"):
        assert labels.parse_label_row(malformed, layout) == Rejection(
            stage="labels", reason="malformed_csv_row", path="/data/train.csv", detail=malformed, is_image=False
        )
    with pytest.raises(ValueError, match="no id column"):
        labels.labels_csv_layout("/data/train.csv", ["name", "label"], _labels_config())


def test_an_overrides_or_exclusions_row():
    glasses = _config("--labels_csv", "/data/train.csv", "--label_column", "glasses")
    overrides = labels.id_csv_layout("/r/o.csv", ["id", "glasses"], glasses, with_label=True)
    assert labels.parse_id_row("7,1.0", overrides) == ("7", 1)
    assert labels.parse_id_row("", overrides) is None
    for malformed in ("7,maybe", "7", " ,1"):
        rejected = labels.parse_id_row(malformed, overrides)
        assert (rejected.stage, rejected.reason, rejected.is_image) == ("overrides", "malformed_csv_row", False)
        assert rejected.detail.startswith(f"{malformed}: ")
    exclusions = labels.id_csv_layout("/r/e.csv", ["id"], _labels_config(), with_label=False)
    assert labels.parse_id_row("7", exclusions) == ("7", None)
    with pytest.raises(labels.CsvError, match="an overrides CSV needs those columns"):
        labels.id_csv_layout("/r/o.csv", ["id"], _labels_config(), with_label=True)


@pytest.mark.parametrize("cell", ["inf", "-inf", "1e400", "nan", "Infinity"])
def test_non_finite_label_cells_are_invalid_not_a_crash(cell):
    with pytest.raises(ValueError, match="is not one of"):
        parse_label(cell, CLASSES)
    layout = labels.labels_csv_layout("/data/train.csv", ["id", "label"], _labels_config())
    _, row = labels.parse_label_row(f"7,{cell}", layout)
    assert row.label is None and cell in row.error
    assert resolve_label("7", [IMAGE], [row]).rejections[0].reason == "bad_label"
    overrides = labels.id_csv_layout("/r/o.csv", ["id", "label"], _labels_config(), with_label=True)
    assert labels.parse_id_row(f"7,{cell}", overrides).reason == "malformed_csv_row"


def test_rows_are_decoded_with_the_csv_encoding_and_undecodable_ones_are_malformed():
    layout = labels.labels_csv_layout("/data/train.csv", ["id", "label", "note"], _labels_config())
    assert labels.parse_label_row("7,yes,café".encode(), layout) == ("7", LabelRow(1, "train", "", ""))
    bad = labels.parse_label_row(b"8,yes,caf\xe9", layout)
    assert (bad.reason, bad.stage, bad.is_image) == ("malformed_csv_row", "labels", False)
    assert "caf" in bad.detail and "utf-8" in bad.detail
    latin = labels.labels_csv_layout(
        "/data/train.csv", ["id", "label", "note"], _config("--labels_csv", "/data/l.csv", "--csv_encoding", "latin-1")
    )
    assert labels.parse_label_row(b"8,yes,caf\xe9", latin) == ("8", LabelRow(1, "train", "", ""))
    overrides = labels.id_csv_layout("/r/o.csv", ["id", "label"], _labels_config(), with_label=True)
    assert labels.parse_id_row(b"\xff7,1", overrides).reason == "malformed_csv_row"


@pytest.mark.parametrize(
    "first_line, problem",
    [
        ("id,label\n".encode("utf-16"), "byte-order mark"),
        ("id,label\n".encode("utf-16-le"), "NUL bytes"),
        (b"id,l\xe9bel\n", "header: 'utf-8' codec"),
    ],
)
def test_a_header_in_another_encoding_is_one_clear_error(first_line, problem):
    with pytest.raises(labels.CsvError) as error:
        labels.decode_header(first_line, "/d/l.csv", "utf-8")
    message = str(error.value)
    assert message.startswith("/d/l.csv is not utf-8 text (") and problem in message
    assert message.endswith("re-save it as UTF-8 or pass --csv_encoding latin-1")


def test_a_header_may_have_a_utf8_bom_or_be_latin1_when_told():
    assert labels.decode_header(b"\xef\xbb\xbfid, label\r\n", "/d/l.csv", "utf-8") == ["id", "label"]
    assert labels.decode_header(b"id,l\xe9bel\n", "/d/l.csv", "latin-1") == ["id", "lébel"]


@pytest.mark.parametrize(
    "header, extra, with_label, expected",
    [
        (["image", "glasses", "x"], ("--id_column", "image", "--label_column", "glasses"), True, (0, 1)),
        (["note", "label", "id"], (), True, (2, 1)),
        (["id", "label"], ("--id_column", "image", "--label_column", "glasses"), True, (0, 1)),
        (["id", "glasses"], ("--id_column", "image", "--label_column", "glasses"), True, (0, 1)),
        (["id"], ("--id_column", "image"), False, (0, None)),
        (["x", "id"], (), False, (1, None)),
    ],
)
def test_overrides_and_exclusions_columns_are_found_by_name(header, extra, with_label, expected):
    layout = labels.id_csv_layout(
        "/r/o.csv", header, _config("--labels_csv", "/d/l.csv", *extra), with_label=with_label
    )
    assert (layout.id_index, layout.label_index) == expected


@pytest.mark.parametrize(
    "header, with_label",
    [(["foo", "bar"], True), (["id", "glasses"], True), (["label", "id2"], True), (["foo"], False)],
)
def test_overrides_and_exclusions_with_unknown_columns_are_refused(header, with_label):
    with pytest.raises(labels.CsvError) as error:
        labels.id_csv_layout("/r/o.csv", header, _labels_config(), with_label=with_label)
    message = str(error.value)
    assert message.startswith("/r/o.csv: header ") and str(header) in message and "'id'" in message


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


# --- The --numeric_columns vector ---------------------------------------------------------

HEADER = ["id", "v2", "v1", "v10", "x", "label"]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("v1,v2", ("v2", "v1")),  # header order, not the flag's
        ("v1..v2", ("v2", "v1")),
        ("v*", ("v2", "v1", "v10")),
        ("v1?", ("v10",)),
        ("x, v1..v2,v2", ("v2", "v1", "x")),  # mixed items, each column once
    ],
)
def test_numeric_columns_resolve_against_the_header_in_its_order(spec, expected):
    assert labels.resolve_columns(spec, HEADER, reserved=("id", "label")) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("v1..v3", "1 columns not in the header: v3"),
        ("v1..w2", "one prefix"),
        ("v..v2", "one prefix"),
        ("v3..v1", "empty range"),
        ("w*", "matches no column"),
        ("v1,,v2", "empty item"),
        ("nope", "not in the header: nope"),
        ("*", "id/label column 'id'"),
        ("v1,label", "id/label column 'label'"),
    ],
)
def test_numeric_columns_that_do_not_fit_the_header_are_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        labels.resolve_columns(spec, HEADER, reserved=("id", "label"))


def _vector_layout(header=("id", "label", "a", "b")):
    config = _config("--labels_csv", "/data/train.csv", "--numeric_columns", "none")
    config = dataclasses.replace(config, vector_columns=("a", "b"))
    return labels.labels_csv_layout("/data/train.csv", list(header), config)


def test_a_row_carries_its_vector_as_float32_bytes():
    _, row = labels.parse_label_row("7,yes,0.1,-2.5e-3", _vector_layout())
    assert row.vector == np.array([0.1, -2.5e-3], np.float32).tobytes()
    assert row.vector_error == "" and row.label == 1


@pytest.mark.parametrize(
    "cells, message",
    [
        ("0.1,", "column b: missing"),
        ("abc,1", "column a: 'abc' is not a number"),
        ("1,inf", "column b: 'inf' is not a finite float32"),
        ("nan,1", "column a: 'nan' is not a finite float32"),
        ("1e39,1", "column a: '1e39' is not a finite float32"),  # finite as a double, not as float32
        ("inf,abc", "column a: 'inf' is not a finite float32"),  # the first bad column is named
    ],
)
def test_a_bad_vector_value_is_kept_as_the_rows_vector_error(cells, message):
    _, row = labels.parse_label_row(f"7,yes,{cells}", _vector_layout())
    assert (row.vector, row.vector_error) == (b"", message)


def test_a_labels_csv_without_the_numeric_columns_is_refused():
    with pytest.raises(labels.CsvError, match="1 --numeric_columns not in its header"):
        _vector_layout(header=("id", "label", "a"))


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
