"""The job's CSVs read as the pipeline reads them: label cells, headers, layouts, rows, --numeric_columns."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines import csv_rows
from pipelines.config import PreprocessConfig
from pipelines.csv_rows import parse_label, source_split_of
from pipelines.labels import resolve_label
from pipelines.records import LabelRow, Rejection
from tests.pipelines.label_inputs import IMAGE, job_config

CLASSES = ("no", "yes")


def _labels_config() -> PreprocessConfig:
    return job_config("--labels_csv", "/data/train.csv")


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


def test_a_labels_csv_row():
    layout = csv_rows.labels_csv_layout("/data/train.csv", ["id", "label", "note"], _labels_config())
    assert csv_rows.parse_label_row("7,yes,x", layout) == ("7", LabelRow(1, "train", "", ""))
    assert csv_rows.parse_label_row("8,,x", layout) == ("8", LabelRow(None, "train", "", ""))
    _, bad = csv_rows.parse_label_row("9,maybe,x", layout)
    assert bad.label is None and "maybe" in bad.error  # Rejected later, as bad_label.
    assert csv_rows.parse_label_row("  ", layout) is None
    for malformed in ("7,yes", ",1,x"):
        assert csv_rows.parse_label_row(malformed, layout) == Rejection(
            stage="labels", reason="malformed_csv_row", path="/data/train.csv", detail=malformed, is_image=False
        )
    with pytest.raises(ValueError, match="no id column"):
        csv_rows.labels_csv_layout("/data/train.csv", ["name", "label"], _labels_config())


def test_an_overrides_or_exclusions_row():
    glasses = job_config("--labels_csv", "/data/train.csv", "--label_column", "glasses")
    overrides = csv_rows.id_csv_layout("/r/o.csv", ["id", "glasses"], glasses, with_label=True)
    assert csv_rows.parse_id_row("7,1.0", overrides) == ("7", 1)
    assert csv_rows.parse_id_row("", overrides) is None
    for malformed in ("7,maybe", "7", " ,1"):
        rejected = csv_rows.parse_id_row(malformed, overrides)
        assert (rejected.stage, rejected.reason, rejected.is_image) == ("overrides", "malformed_csv_row", False)
        assert rejected.detail.startswith(f"{malformed}: ")
    exclusions = csv_rows.id_csv_layout("/r/e.csv", ["id"], _labels_config(), with_label=False)
    assert csv_rows.parse_id_row("7", exclusions) == ("7", None)
    with pytest.raises(csv_rows.CsvError, match="an overrides CSV needs those columns"):
        csv_rows.id_csv_layout("/r/o.csv", ["id"], _labels_config(), with_label=True)


@pytest.mark.parametrize("cell", ["inf", "-inf", "1e400", "nan", "Infinity"])
def test_non_finite_label_cells_are_invalid_not_a_crash(cell):
    with pytest.raises(ValueError, match="is not one of"):
        parse_label(cell, CLASSES)
    layout = csv_rows.labels_csv_layout("/data/train.csv", ["id", "label"], _labels_config())
    _, row = csv_rows.parse_label_row(f"7,{cell}", layout)
    assert row.label is None and cell in row.error
    assert resolve_label("7", [IMAGE], [row]).rejections[0].reason == "bad_label"
    overrides = csv_rows.id_csv_layout("/r/o.csv", ["id", "label"], _labels_config(), with_label=True)
    assert csv_rows.parse_id_row(f"7,{cell}", overrides).reason == "malformed_csv_row"


def test_rows_are_decoded_with_the_csv_encoding_and_undecodable_ones_are_malformed():
    layout = csv_rows.labels_csv_layout("/data/train.csv", ["id", "label", "note"], _labels_config())
    assert csv_rows.parse_label_row("7,yes,café".encode(), layout) == ("7", LabelRow(1, "train", "", ""))
    bad = csv_rows.parse_label_row(b"8,yes,caf\xe9", layout)
    assert (bad.reason, bad.stage, bad.is_image) == ("malformed_csv_row", "labels", False)
    assert "caf" in bad.detail and "utf-8" in bad.detail
    latin = csv_rows.labels_csv_layout(
        "/data/train.csv",
        ["id", "label", "note"],
        job_config("--labels_csv", "/data/l.csv", "--csv_encoding", "latin-1"),
    )
    assert csv_rows.parse_label_row(b"8,yes,caf\xe9", latin) == ("8", LabelRow(1, "train", "", ""))
    overrides = csv_rows.id_csv_layout("/r/o.csv", ["id", "label"], _labels_config(), with_label=True)
    assert csv_rows.parse_id_row(b"\xff7,1", overrides).reason == "malformed_csv_row"


@pytest.mark.parametrize(
    "first_line, problem, remedy",
    [
        # Only re-saving helps: no --csv_encoding reads a file split at newline bytes.
        ("id,label\n".encode("utf-16"), "byte-order mark", "; re-save it as UTF-8"),
        ("id,label\n".encode("utf-16-le"), "NUL bytes", "; re-save it as UTF-8"),
        (
            b"id,l\xe9bel\n",
            "header: 'utf-8' codec",
            "re-save it as UTF-8 or pass its encoding, e.g. --csv_encoding latin-1",
        ),
    ],
)
def test_a_header_in_another_encoding_is_one_clear_error(first_line, problem, remedy):
    with pytest.raises(csv_rows.CsvError) as error:
        csv_rows.decode_header(first_line, "/d/l.csv", "utf-8")
    message = str(error.value)
    assert message.startswith("/d/l.csv is not utf-8 text (") and problem in message
    assert message.endswith(remedy)


def test_a_header_may_have_a_utf8_bom_or_be_latin1_when_told():
    assert csv_rows.decode_header(b"\xef\xbb\xbfid, label\r\n", "/d/l.csv", "utf-8") == ["id", "label"]
    assert csv_rows.decode_header(b"id,l\xe9bel\n", "/d/l.csv", "latin-1") == ["id", "lébel"]


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
    layout = csv_rows.id_csv_layout(
        "/r/o.csv", header, job_config("--labels_csv", "/d/l.csv", *extra), with_label=with_label
    )
    assert (layout.id_index, layout.label_index) == expected


@pytest.mark.parametrize(
    "header, with_label",
    [(["foo", "bar"], True), (["id", "glasses"], True), (["label", "id2"], True), (["foo"], False)],
)
def test_overrides_and_exclusions_with_unknown_columns_are_refused(header, with_label):
    with pytest.raises(csv_rows.CsvError) as error:
        csv_rows.id_csv_layout("/r/o.csv", header, _labels_config(), with_label=with_label)
    message = str(error.value)
    assert message.startswith("/r/o.csv: header ") and str(header) in message and "'id'" in message


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
    assert csv_rows.resolve_columns(spec, HEADER, reserved=("id", "label")) == expected


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
        csv_rows.resolve_columns(spec, HEADER, reserved=("id", "label"))


def _vector_layout(header=("id", "label", "a", "b")):
    config = job_config("--labels_csv", "/data/train.csv", "--numeric_columns", "none")
    config = dataclasses.replace(config, vector_columns=("a", "b"))
    return csv_rows.labels_csv_layout("/data/train.csv", list(header), config)


def test_a_row_carries_its_vector_as_float32_bytes():
    _, row = csv_rows.parse_label_row("7,yes,0.1,-2.5e-3", _vector_layout())
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
    _, row = csv_rows.parse_label_row(f"7,yes,{cells}", _vector_layout())
    assert (row.vector, row.vector_error) == (b"", message)


def test_a_labels_csv_without_the_numeric_columns_is_refused():
    with pytest.raises(csv_rows.CsvError, match="1 --numeric_columns not in its header"):
        _vector_layout(header=("id", "label", "a"))


@pytest.mark.parametrize("cell", ["1_000", " 2.5 ", "\t-3", "+1", ".5", "5.", "\uff11", "3.4028235e38", "1e-50", "-0"])
def test_a_vector_cell_reads_as_pythons_float_rounded_to_float32(cell):
    _, row = csv_rows.parse_label_row(f"7,yes,{cell},0", _vector_layout())
    assert row.vector == np.array([float(cell), 0.0], np.float32).tobytes()


def test_vector_values_round_from_the_double_as_float_then_float32_did():
    # Decimals with up to 17 digits, some next to a float32 rounding boundary: parsed straight
    # to float32 they could round differently from the double that float() gives.
    rng = np.random.default_rng(0)
    doubles = np.concatenate([rng.standard_normal(500) * 10.0 ** rng.integers(-40, 38, 500), rng.standard_normal(500)])
    # Just above the midpoint of two float32s, 1.5 and 1.5 + 2**-23: its double is the midpoint,
    # which rounds to 1.5; straight to float32 it would round up.
    above_halfway = "1.500000059604644775390625001"
    cells = [repr(float(d)) for d in doubles] + [f"{d:.9g}" for d in doubles] + [above_halfway]
    names = tuple(f"c{i}" for i in range(len(cells)))
    layout = _vector_layout()._replace(
        width=2 + len(cells), vector_columns=names, vector_indices=tuple(range(2, 2 + len(cells)))
    )
    _, row = csv_rows.parse_label_row("7,yes," + ",".join(cells), layout)
    with np.errstate(over="ignore"):
        expected = np.array([float(cell) for cell in cells], np.float32)
    assert row.vector_error == "" and row.vector == expected.tobytes()
