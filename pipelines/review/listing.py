"""Listing and labelling: the images the pipeline would read, with the labels it would give them.

Images are found with the pipeline's flags and labelled with its label rules
(pipelines/labels.py, its CSVs read by pipelines/csv_rows.py), before any override or exclusion of the review.
"""

from __future__ import annotations

import collections
import csv
import io
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines import csv_rows, features, labels, records, sources
from pipelines.config import PreprocessConfig
from pipelines.paths import is_remote

log = logging.getLogger(__name__)

Layout = TypeVar("Layout")
Row = TypeVar("Row")


class Item(NamedTuple):
    """One reviewable image, labelled as the pipeline labels it before any override."""

    id: str
    path: str
    label: int | None  # None: the pipeline has no label for it (see note).
    note: str  # The pipeline's reason when label is None ("unlabelled", "bad_label: ..."), else "".


def natural_key(text: str) -> tuple:
    """'face-10' sorts after 'face-9'."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def list_image_files(globs: Iterable[str]) -> list[tuple[str, int]]:
    """(path, size) of the image files the pipeline's ListImages would read, deduplicated."""
    globs = list(globs)
    files = {}
    for result in FileSystems.match(globs):
        for metadata in result.metadata_list:
            if metadata.path.lower().endswith(features.IMAGE_EXTENSIONS):
                files[metadata.path] = metadata.size_in_bytes
    for pattern in globs:  # Links to nothing, folders named like an image: the thumbnail says why.
        files.update(
            (path, 0) for path in sources.skipped_by_match(pattern) if path.lower().endswith(features.IMAGE_EXTENSIONS)
        )
    return sorted(files.items())


def csv_lines(path: str) -> Iterator[bytes]:
    """A CSV's lines after the header, as bytes, as ``ReadFromText(skip_header_lines=1, coder=BytesCoder())``
    gives them: the label rules decode each one, as they do in the pipeline."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        next(f, None)
        for line in f:
            yield line.rstrip(b"\r\n")


def read_csv_rows(
    path: str, parse: Callable[[str, Layout], Row | records.Rejection | None], layout: Layout
) -> tuple[list[Row], list[records.Rejection]]:
    """Parses every line of a CSV with one of the label rules' row parsers: (rows, rejections)."""
    rows, rejections = [], []
    for line in csv_lines(path):
        parsed = parse(line, layout)
        if isinstance(parsed, records.Rejection):
            rejections.append(parsed)
        elif parsed is not None:
            rows.append(parsed)
    return rows, rejections


def header_of(path: str, encoding: str = "utf-8") -> list[str]:
    """A CSV's column names, stripped, as the pipeline reads them (csv_rows.CsvError when it cannot)."""
    return sources.read_csv_header(path, encoding)


def images_root(images: str) -> str:
    """The folder every served file must be under: --images, or a glob's fixed prefix."""
    parts = images.rstrip("/").split("/")
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return "/".join(fixed) or "/"


def is_under(path: str, root: str) -> bool:
    """Whether ``path`` (symlinks resolved, for local files) lies under ``root``."""
    if is_remote(path) or is_remote(root):
        return path.startswith(root.rstrip("/") + "/")
    real, base = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, base]) == base


def build_index(config: PreprocessConfig, root: str) -> dict[str, Item]:
    """Every listed image by id, in natural id order, with the pipeline's label for it."""
    images: dict[str, list[records.ImageFile]] = collections.defaultdict(list)
    rule = labels.id_rule(config)
    for path, size in list_image_files(config.image_globs):
        if not is_under(path, root):
            log.warning("skipping %s: it resolves to outside %s", path, root)
            continue
        keyed = labels.key_image(path, size, rule)
        if isinstance(keyed, records.Rejection):
            log.warning("skipping %s: %s", keyed.path, keyed.reason)
        else:
            image_id, image = keyed
            images[image_id].append(image)
    label_rows: dict[str, list[records.LabelRow]] = collections.defaultdict(list)
    for path in config.labels_csv:
        try:
            layout = sources.csv_layout(path, "labels_csv", config)
        except csv_rows.CsvError as e:
            raise SystemExit(f"error: {e}") from None
        rows, rejected = read_csv_rows(path, csv_rows.parse_label_row, layout)
        for image_id, row in rows:
            label_rows[image_id].append(row)
        if rejected:
            log.warning("%s: %d malformed rows skipped", path, len(rejected))
    items = {}
    for image_id in sorted(images, key=natural_key):
        resolution = labels.resolve_label(image_id, images[image_id], label_rows.get(image_id, []))
        for rejection in resolution.rejections:
            if rejection.reason == "duplicate_id":
                log.warning("id %s: duplicate file %s ignored", image_id, rejection.path)
            else:
                note = ": ".join(p for p in (rejection.reason, rejection.detail) if p)
                items[image_id] = Item(image_id, rejection.path, None, note)
        if resolution.image is not None:
            items[image_id] = Item(image_id, resolution.image.path, resolution.image.label, "")
    return items


def read_predictions(path: str, config: PreprocessConfig, items: dict[str, Item]) -> dict[str, float]:
    """The trainer's predict CSV (path,probability,label) -> {id: P(class 1)} for indexed ids.

    A row's path is matched to an image by its full path, else by its file name, the way the
    pipeline derives ids.
    """
    by_path = {_normalized(item.path): item.id for item in items.values()}
    rule = labels.id_rule(config)
    probabilities, unmatched = {}, 0
    with FileSystems.open(path) as f:
        reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8-sig", newline=""))
        if not {"path", "probability"} <= set(reader.fieldnames or ()):
            raise SystemExit(f"error: {path}: expected the columns path,probability,label; got {reader.fieldnames}")
        for row in reader:
            image_id = by_path.get(_normalized(row["path"]))
            if image_id is None:
                keyed = labels.key_image(row["path"], 0, rule)
                image_id = None if isinstance(keyed, records.Rejection) else keyed[0]
            try:
                probability = float(row["probability"])
            except (TypeError, ValueError):
                probability = float("nan")
            if image_id in items and 0.0 <= probability <= 1.0:
                probabilities[image_id] = probability
            else:
                unmatched += 1
    if unmatched:
        log.warning("%s: %d rows match no image (or have no probability in [0, 1])", path, unmatched)
    return probabilities


def _normalized(path: str) -> str:
    return path if is_remote(path) else os.path.normpath(os.path.abspath(path))
