"""The job's CSVs as the pipeline reads them: labels, overrides and exclusions, line by line.

A header is decoded (its encoding checked once, for the whole file), its columns found by
the job's flags (a layout), and each line parsed into a labels row
(:class:`~pipelines.records.LabelRow`, with its --numeric_columns vector) or an override or
exclusion ``(id, label or None)``. A row that cannot be used comes back as a
:class:`~pipelines.records.Rejection`, the fields of its dead letter; a file that cannot be
read at all is a :class:`CsvError`. The Beam sources (pipelines/sources.py) and the label
review (pipelines/review/) both read their CSVs with these; pipelines/labels.py decides
each id's label from the rows.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import math
import posixpath
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pipelines.records import LabelRow, Rejection

if TYPE_CHECKING:
    from pipelines.config import PreprocessConfig


def parse_label(value: str, classes: tuple[str, ...]) -> int:
    """A label cell ('1', '1.0', or a class name) -> class index; ValueError when invalid."""
    value = value.strip()
    if value in classes:
        return classes.index(value)
    number = float(value)
    # inf, 1e400 and nan are no class index (int() of them would raise OverflowError).
    if not math.isfinite(number) or number != int(number) or not 0 <= int(number) < len(classes):
        raise ValueError(f"label {value!r} is not one of 0..{len(classes) - 1} or {list(classes)}")
    return int(number)


class CsvError(ValueError):
    """A CSV the job cannot read at all (missing, wrong encoding, wrong columns): one line for the user."""


def resolve_columns(spec: str, header: list[str], *, reserved: Iterable[str] = ()) -> tuple[str, ...]:
    """A --numeric_columns value -> the header's columns it names, in header order.

    ``spec`` is a comma list of names (``v1,v2``), ranges (``v1..v512``: the prefix and every
    number from the first to the last) and globs (``v*``). A name or range member missing from
    the header, a glob that matches nothing or a ``reserved`` column (id, label) is a ValueError.
    """
    wanted: set[str] = set()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            raise ValueError(f"--numeric_columns {spec!r}: empty item")
        if ".." in item:
            first, _, last = item.partition("..")
            prefix = first.rstrip("0123456789")
            if prefix == first or not last.startswith(prefix) or not last[len(prefix) :].isdigit():
                raise ValueError(f"--numeric_columns {item!r}: a range is NAME1..NAME2 with one prefix, e.g. v1..v512")
            start, stop = int(first[len(prefix) :]), int(last[len(prefix) :])
            names = [f"{prefix}{i}" for i in range(start, stop + 1)]
            if not names:
                raise ValueError(f"--numeric_columns {item!r}: empty range")
        elif any(ch in item for ch in "*?["):
            names = [column for column in header if fnmatch.fnmatchcase(column, item)]
            if not names:
                raise ValueError(f"--numeric_columns {item!r} matches no column of the header {header[:8]}")
        else:
            names = [item]
        missing = [name for name in names if name not in header]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise ValueError(f"--numeric_columns {item!r}: {len(missing)} columns not in the header: {shown}")
        wanted.update(names)
    clash = sorted(wanted.intersection(reserved))
    if clash:
        raise ValueError(f"--numeric_columns {spec!r} takes the id/label column {clash[0]!r}")
    return tuple(column for column in header if column in wanted)


def parse_vector(row: list[str], indices: tuple[int, ...], names: tuple[str, ...]) -> bytes:
    """A row's --numeric_columns cells -> float32 bytes; ValueError naming the column when one is
    missing, not a number, or not finite (inf, nan, or too large for float32)."""
    # One numpy conversion of the row's strings: the Kaggle layout has 512 columns, and a Python
    # float() a cell was the largest part of the labels CSV's parse (docs/benchmarks.md section 1).
    # numpy converts a str as float() does (underscores, spaces, other scripts' digits), then
    # rounds the double to float32: the values are those of float() a cell, bit for bit.
    try:
        with np.errstate(over="ignore"):  # 1e39 becomes inf, rejected below.
            values = np.array([row[index] for index in indices], np.float32)
    except ValueError:
        raise ValueError(_first_vector_problem(row, indices, names)) from None
    if not np.isfinite(values).all():
        raise ValueError(_first_vector_problem(row, indices, names))
    return values.tobytes()


def _first_vector_problem(row: list[str], indices: tuple[int, ...], names: tuple[str, ...]) -> str:
    """What is wrong with the first bad --numeric_columns cell of a row that has one."""
    for index, name in zip(indices, names, strict=True):
        cell = row[index].strip()
        try:
            value = float(cell)
        except ValueError:
            return f"column {name}: " + (f"{cell[:40]!r} is not a number" if cell else "missing")
        with np.errstate(over="ignore"):
            if not np.isfinite(np.float32(value)):
                return f"column {name}: {cell[:40]!r} is not a finite float32"
    raise AssertionError("a row that failed to parse has no bad cell")


# Byte-order marks of encodings that are not an 8-bit superset of ASCII.
_FOREIGN_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def decode_header(first_line: bytes, csv_path: str, encoding: str) -> list[str]:
    """A CSV's raw first line -> its column names, stripped; CsvError when the file is not ``encoding`` text.

    UTF-8 accepts (and drops) a byte-order mark. A UTF-16/32 mark or a NUL byte means the file
    is in another encoding from the start: rejecting it here beats a dead letter on every row.
    """
    # Lines are split at newline bytes, so a 16/32-bit encoding cannot be read under any flag.
    remedy = "re-save it as UTF-8"
    problem = ""
    if first_line.startswith(_FOREIGN_BOMS):
        problem = "it starts with a UTF-16/32 byte-order mark"
    elif b"\0" in first_line:
        problem = "its header has NUL bytes (UTF-16?)"
    else:
        try:
            text = first_line.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
        except UnicodeDecodeError as e:
            problem = f"header: {e}"
            remedy += " or pass its encoding, e.g. --csv_encoding latin-1"
    if problem:
        raise CsvError(f"{csv_path} is not {encoding} text ({problem}); {remedy}")
    return [h.strip() for h in next(csv.reader([text.rstrip("\r\n")]), [])]


def _decoded(line: bytes | str, csv_path: str, encoding: str, stage: str) -> str | Rejection:
    """A CSV line as read (bytes on the workers) -> text, or a ``malformed_csv_row`` when it cannot be decoded."""
    if isinstance(line, str):
        return line
    try:
        return line.decode(encoding)
    except UnicodeDecodeError as e:
        return Rejection(
            path=csv_path, stage=stage, reason="malformed_csv_row", detail=f"{line[:200]!r}: {e}", is_image=False
        )


def source_split_of(csv_path: str) -> str:
    """The split a labels CSV stands for, from its name: train.csv -> train, test.csv -> test."""
    stem = posixpath.basename(csv_path).rsplit(".", 1)[0].lower()
    return {
        "train": "train",
        "val": "validation",
        "valid": "validation",
        "validation": "validation",
        "test": "test",
    }.get(stem, "")


class LabelsCsvLayout(NamedTuple):
    """Where a labels CSV keeps what the pipeline reads (from its header and the job's flags)."""

    csv_path: str
    source_split: str
    classes: tuple[str, ...]
    width: int
    id_index: int
    label_index: int | None
    group_index: int | None
    encoding: str = "utf-8"
    vector_columns: tuple[str, ...] = ()  # --numeric_columns, resolved; () when none.
    vector_indices: tuple[int, ...] = ()


def labels_csv_layout(csv_path: str, header: list[str], config: PreprocessConfig) -> LabelsCsvLayout:
    """The layout of a labels CSV; ValueError when its header lacks the id or --group_by column."""
    if config.numeric_columns is not None:
        raise ValueError("--numeric_columns is not resolved yet: call sources.resolve_vector_columns first")
    if config.id_column not in header:
        raise CsvError(f"{csv_path}: no id column {config.id_column!r} in header {header[:8]} (set --id_column)")
    group_by = config.group_by if config.group_by not in (None, "stem") else None
    if group_by is not None and group_by not in header:
        raise CsvError(f"{csv_path}: --group_by column {group_by!r} not in header {header[:8]}")
    missing = [name for name in config.vector_columns if name not in header]
    if missing:
        raise CsvError(
            f"{csv_path}: {len(missing)} --numeric_columns not in its header (e.g. {missing[0]!r}); "
            "every labels CSV needs the same numeric columns"
        )
    return LabelsCsvLayout(
        csv_path=csv_path,
        source_split=source_split_of(csv_path),
        classes=config.classes,
        width=len(header),
        id_index=header.index(config.id_column),
        label_index=header.index(config.label_column) if config.label_column in header else None,
        group_index=header.index(group_by) if group_by else None,
        encoding=config.csv_encoding,
        vector_columns=config.vector_columns,
        vector_indices=tuple(header.index(name) for name in config.vector_columns),
    )


def parse_label_row(line: bytes | str, layout: LabelsCsvLayout) -> tuple[str, LabelRow] | Rejection | None:
    """A labels-CSV line -> (id, LabelRow), a Rejection for a malformed row, None for a blank line.

    A label that cannot be parsed is not a rejection: the row keeps it as ``error``, and the
    image is rejected as ``bad_label`` when its label is resolved; a bad --numeric_columns value
    likewise becomes ``vector_error`` (the image a ``bad_vector``). A line as read (bytes) is
    decoded with the layout's encoding; one that cannot be is a malformed row.
    """
    line = _decoded(line, layout.csv_path, layout.encoding, "labels")
    if isinstance(line, Rejection):
        return line
    if not line.strip():
        return None
    row = next(csv.reader([line]))
    if len(row) != layout.width or not row[layout.id_index].strip():
        return Rejection(
            path=layout.csv_path, stage="labels", reason="malformed_csv_row", detail=line[:200], is_image=False
        )
    image_id = row[layout.id_index].strip()
    label, error = None, ""
    if layout.label_index is not None and row[layout.label_index].strip():
        try:
            label = parse_label(row[layout.label_index], layout.classes)
        except ValueError as e:
            error = str(e)
    group = row[layout.group_index].strip() if layout.group_index is not None else ""
    vector, vector_error = b"", ""
    if layout.vector_indices:
        try:
            vector = parse_vector(row, layout.vector_indices, layout.vector_columns)
        except ValueError as e:
            vector_error = str(e)
    return image_id, LabelRow(label, layout.source_split, group, error, vector, vector_error)


class IdCsvLayout(NamedTuple):
    """Where an overrides (id,label) or exclusions (id) CSV keeps its columns."""

    csv_path: str
    classes: tuple[str, ...]
    id_index: int
    label_index: int | None  # None: an exclusions CSV (ids only).
    encoding: str = "utf-8"


def id_csv_layout(csv_path: str, header: list[str], config: PreprocessConfig, *, with_label: bool) -> IdCsvLayout:
    """The layout of an overrides (``with_label``) or exclusions CSV; CsvError when its columns are not known.

    Columns are found by name: --id_column (and, for overrides, --label_column), or the plain
    ``id`` / ``id,label`` / ``id,<--label_column>`` files the review writes. A file with other
    names is refused rather than read by position: ``foo,bar`` is more likely a wrong file.
    """
    wanted = [config.id_column, config.label_column] if with_label else [config.id_column]
    plain = [["id", "label"], ["id", config.label_column]] if with_label else [["id"]]
    if all(name in header for name in wanted):
        id_index, label_index = header.index(wanted[0]), header.index(wanted[-1])
    elif header in plain:
        id_index, label_index = 0, len(header) - 1
    else:
        kind = "an overrides CSV" if with_label else "an exclusions CSV"
        expected = " and ".join(repr(name) for name in wanted)
        raise CsvError(
            f"{csv_path}: header {header[:8]} has no column {expected}: {kind} needs those columns "
            f"(or the header {','.join(plain[-1])}); set --id_column/--label_column or fix the header"
        )
    return IdCsvLayout(
        csv_path=csv_path,
        classes=config.classes,
        id_index=id_index,
        label_index=label_index if with_label else None,
        encoding=config.csv_encoding,
    )


def parse_id_row(line: bytes | str, layout: IdCsvLayout) -> tuple[str, int | None] | Rejection | None:
    """An overrides or exclusions CSV line (text, or bytes as read) -> (id, label or None), a Rejection,
    or None for a blank line."""
    stage = "overrides" if layout.label_index is not None else "exclusions"
    line = _decoded(line, layout.csv_path, layout.encoding, stage)
    if isinstance(line, Rejection):
        return line
    if not line.strip():
        return None
    row = next(csv.reader([line]))
    image_id = ""
    try:
        image_id = row[layout.id_index].strip()
        label = parse_label(row[layout.label_index], layout.classes) if layout.label_index is not None else None
        if not image_id:
            raise ValueError("empty id")
    except (IndexError, ValueError) as e:
        return Rejection(
            path=layout.csv_path,
            stage=stage,
            reason="malformed_csv_row",
            image_id=image_id,  # The summary names the rejected rows by it.
            detail=f"{line[:200]}: {e}",
            is_image=False,
        )
    return image_id, label
