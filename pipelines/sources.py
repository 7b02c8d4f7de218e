"""Sources: list images and read labels, overrides and exclusions, joined by id.

Output of :class:`LabelledImages`: ``LabelledImage`` records (one per usable input image)
and dead-letter dicts (images that cannot be labelled, CSV rows that cannot be used).
"""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines.dead_letters import DEAD_LETTER, dead_letter
from pipelines.options import IMAGE_EXTENSIONS, PreprocessConfig

NAMESPACE = "facepipe.sources"

# Tag of files that were listed but are not images (by extension): counted, not processed.
NOT_IMAGE_FILE = "not_image_file"


class LabelledImage(NamedTuple):
    """One input image with its resolved label, before decoding."""

    id: str
    path: str
    size: int
    label: int
    group: str
    source_split: str  # "train"/"validation"/"test" from the labels CSV name, else "".
    overridden: bool


class LabelRow(NamedTuple):
    """A labels-CSV row reduced to what the pipeline uses."""

    label: int | None  # None: the row has no label (e.g. the Kaggle test.csv).
    source_split: str
    group: str
    error: str  # Non-empty when the label value could not be parsed.


def file_name_regex(file_pattern: str) -> re.Pattern[str]:
    """``face-{id}.png`` -> a regex whose group ``id`` captures the id from a file name.

    A pattern that ends at ``{id}`` (the default ``{id}``, or ``face-{id}``) accepts any
    extension: the id is the rest of the name without it.
    """
    before, found, after = file_pattern.partition("{id}")
    if not found:
        raise ValueError(f"--file_pattern {file_pattern!r} must contain '{{id}}'")
    ending = re.escape(after) if after else r"\.[^.]+"
    return re.compile("^" + re.escape(before) + "(?P<id>.+?)" + ending + "$", re.IGNORECASE)


def parse_label(value: str, classes: tuple[str, ...]) -> int:
    """A label cell ('1', '1.0', or a class name) -> class index; ValueError when invalid."""
    value = value.strip()
    if value in classes:
        return classes.index(value)
    number = float(value)
    if number != int(number) or not 0 <= int(number) < len(classes):
        raise ValueError(f"label {value!r} is not one of 0..{len(classes) - 1} or {list(classes)}")
    return int(number)


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


def read_csv_header(path: str) -> list[str]:
    """Reads a CSV's header line (the driver needs only this to plan the parsing)."""
    with FileSystems.open(path) as f:
        first = io.TextIOWrapper(f, encoding="utf-8-sig").readline()
    return next(csv.reader([first]), [])


def path_hash(value: str) -> int:
    """A stable 256-bit integer hash (fingerprints XOR these; order does not matter)."""
    return int.from_bytes(hashlib.sha256(value.encode("utf-8")).digest(), "big")


class ListImages(beam.PTransform):
    """Globs -> (path, size) of image files, fusion broken so that work spreads over workers.

    Main output: (path, size_in_bytes); tagged ``not_image_file``: paths of
    listed files whose extension is not an image's (counted in the manifest, not read).
    """

    def __init__(self, image_globs: Iterable[str]):
        super().__init__()
        self._globs = list(image_globs)

    def expand(self, pipeline):
        return (
            pipeline
            | "Globs" >> beam.Create(self._globs)
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | "PathAndSize" >> beam.Map(lambda metadata: (metadata.path, metadata.size_in_bytes))
            # (path, size); overlapping globs may list a file twice
            | "Deduplicate" >> beam.Distinct()
            | "Reshuffle" >> beam.Reshuffle()
            | "ByExtension" >> beam.ParDo(_SplitByExtension()).with_outputs(NOT_IMAGE_FILE, main="images")
        )


class _SplitByExtension(beam.DoFn):
    def __init__(self):
        self._images = Metrics.counter(NAMESPACE, "images_listed")
        self._others = Metrics.counter(NAMESPACE, "non_image_files")

    def process(self, file: tuple[str, int]) -> Iterator:
        if file[0].lower().endswith(IMAGE_EXTENSIONS):
            self._images.inc()
            yield file
        else:
            self._others.inc()
            yield beam.pvalue.TaggedOutput(NOT_IMAGE_FILE, file[0])


class KeyImageById(beam.DoFn):
    """(path, size) -> (id, (path, size, folder_label, group)) or a dead letter."""

    def __init__(self, config: PreprocessConfig):
        self._regex = file_name_regex(config.file_pattern)
        self._class_folders = config.class_folders
        self._group_by_stem = config.group_by == "stem"

    def process(self, file: tuple[str, int]) -> Iterator:
        path, size = file
        name = posixpath.basename(path.replace("\\", "/"))
        match = self._regex.match(name)
        if not match:
            yield dead_letter(path=path, stage="list", reason="file_name_mismatch", detail=name)
            return
        image_id, group = match.group("id"), ""
        folder_label = None
        if self._class_folders is not None:
            folder = posixpath.basename(posixpath.dirname(path.replace("\\", "/")))
            if folder not in self._class_folders:
                yield dead_letter(
                    path=path, image_id=image_id, stage="list", reason="unknown_class_folder", detail=folder
                )
                return
            folder_label = self._class_folders[folder]
            group = image_id if self._group_by_stem else ""
            image_id = f"{folder}/{image_id}"
        yield image_id, (path, size, folder_label, group)


class ParseLabelRows(beam.DoFn):
    """A labels-CSV line -> (id, LabelRow), or a dead letter for a malformed row."""

    def __init__(self, csv_path: str, header: list[str], config: PreprocessConfig):
        self._csv_path = csv_path
        self._split = source_split_of(csv_path)
        self._classes = config.classes
        if config.id_column not in header:
            raise ValueError(f"{csv_path}: no id column {config.id_column!r} in header {header[:8]}...")
        self._id_index = header.index(config.id_column)
        self._label_index = header.index(config.label_column) if config.label_column in header else None
        group_by = config.group_by if config.group_by not in (None, "stem") else None
        if group_by is not None and group_by not in header:
            raise ValueError(f"{csv_path}: --group_by column {group_by!r} not in header")
        self._group_index = header.index(group_by) if group_by else None
        self._width = len(header)
        self._bad_rows = Metrics.counter(NAMESPACE, "malformed_label_rows")

    def process(self, line: str) -> Iterator:
        if not line.strip():
            return
        row = next(csv.reader([line]))
        if len(row) != self._width or not row[self._id_index].strip():
            self._bad_rows.inc()
            yield dead_letter(
                path=self._csv_path, stage="labels", reason="malformed_csv_row", detail=line[:200], is_image=False
            )
            return
        image_id = row[self._id_index].strip()
        label, error = None, ""
        if self._label_index is not None and row[self._label_index].strip():
            try:
                label = parse_label(row[self._label_index], self._classes)
            except ValueError as e:
                error = str(e)
        group = row[self._group_index].strip() if self._group_index is not None else ""
        yield image_id, LabelRow(label, self._split, group, error)


class ParseIdLabel(beam.DoFn):
    """An overrides or exclusions CSV line -> (id, label or None), or a dead letter."""

    def __init__(self, csv_path: str, header: list[str], config: PreprocessConfig, *, with_label: bool):
        self._csv_path = csv_path
        self._classes = config.classes
        self._with_label = with_label
        id_column = config.id_column if config.id_column in header else header[0]
        self._id_index = header.index(id_column)
        # The overrides' label column: the configured one, else the first column that is not the id.
        label_column = (
            config.label_column if config.label_column in header else next((h for h in header if h != id_column), None)
        )
        if with_label and label_column is None:
            raise ValueError(f"{csv_path}: an overrides CSV needs an id and a label column, header {header}")
        self._label_index = header.index(label_column) if with_label else None

    def process(self, line: str) -> Iterator:
        if not line.strip():
            return
        row = next(csv.reader([line]))
        try:
            image_id = row[self._id_index].strip()
            label = parse_label(row[self._label_index], self._classes) if self._with_label else None
            if not image_id:
                raise ValueError("empty id")
        except (IndexError, ValueError) as e:
            yield dead_letter(
                path=self._csv_path,
                stage="overrides",
                reason="malformed_csv_row",
                detail=f"{line[:200]}: {e}",
                is_image=False,
            )
            return
        yield image_id, label


def _read_csvs(pipeline, label: str, paths: Iterable[str], make_dofn) -> tuple[list, list]:
    """Reads each CSV (header in the driver, rows on the workers); returns (rows, dead letters)."""
    rows, dead = [], []
    for i, path in enumerate(paths):
        header = [h.strip() for h in read_csv_header(path)]
        parsed = (
            pipeline
            | f"Read{label}{i}" >> beam.io.ReadFromText(path, skip_header_lines=1)
            | f"Parse{label}{i}" >> beam.ParDo(make_dofn(path, header)).with_outputs(DEAD_LETTER, main="rows")
        )
        rows.append(parsed.rows)
        dead.append(parsed[DEAD_LETTER])
    return rows, dead


class LabelledImages(beam.PTransform):
    """Lists the images and resolves each one's label.

    Output (a dict of PCollections): ``images`` LabelledImage; ``dead_letter`` dicts;
    ``not_image_file`` paths of skipped non-image files; ``fingerprint`` ints (XOR of
    path/size hashes of every listed file).
    """

    def __init__(self, config: PreprocessConfig):
        super().__init__()
        self._config = config

    def expand(self, pipeline):
        config = self._config
        listed = pipeline | "ListImages" >> ListImages(config.image_globs)
        fingerprint = listed.images | "HashPathAndSize" >> beam.Map(lambda file: path_hash(f"{file[0]}\0{file[1]}"))
        keyed = listed.images | "KeyById" >> beam.ParDo(KeyImageById(config)).with_outputs(DEAD_LETTER, main="keyed")
        # (id, (path, size, folder_label, group))

        label_rows, label_dead = _read_csvs(
            pipeline, "Labels", config.labels_csv, lambda path, header: ParseLabelRows(path, header, config)
        )
        override_rows, override_dead = _read_csvs(
            pipeline,
            "Overrides",
            config.overrides_csv,
            lambda path, header: ParseIdLabel(path, header, config, with_label=True),
        )
        exclusion_rows, exclusion_dead = _read_csvs(
            pipeline,
            "Exclusions",
            config.exclude_csv,
            lambda path, header: ParseIdLabel(path, header, config, with_label=False),
        )
        if config.exclude_ids:
            exclusion_rows.append(pipeline | "ExcludeIds" >> beam.Create([(i, None) for i in config.exclude_ids]))

        def flatten(name: str, pcolls: list):
            return pcolls | name >> beam.Flatten(pipeline=pipeline.pipeline)

        resolved = (
            {
                "images": keyed.keyed,
                "labels": flatten("FlattenLabels", label_rows),
                "overrides": flatten("FlattenOverrides", override_rows),
                "exclusions": flatten("FlattenExclusions", exclusion_rows),
            }
            | "JoinById" >> beam.CoGroupByKey()
            # (id, {"images": [...], "labels": [LabelRow], "overrides": [int], "exclusions": [None]})
            | "ResolveLabels" >> beam.ParDo(ResolveLabel()).with_outputs(DEAD_LETTER, main="images")
        )
        dead_letters = [keyed[DEAD_LETTER], resolved[DEAD_LETTER], *label_dead, *override_dead, *exclusion_dead]
        return {
            "images": resolved.images,
            DEAD_LETTER: flatten("FlattenSourceDeadLetters", dead_letters),
            NOT_IMAGE_FILE: listed[NOT_IMAGE_FILE],
            "fingerprint": fingerprint,
        }


class ResolveLabel(beam.DoFn):
    """Decides each id's fate: a label (override > folder > CSV) or a dead letter with a reason."""

    def __init__(self):
        self._overridden = Metrics.counter(NAMESPACE, "overrides_applied")
        self._excluded = Metrics.counter(NAMESPACE, "excluded")
        self._unlabelled = Metrics.counter(NAMESPACE, "unlabelled")
        self._labelled = Metrics.counter(NAMESPACE, "labelled")

    def process(self, element) -> Iterator:
        image_id, joined = element
        images = sorted(joined["images"])
        labels: list[LabelRow] = list(joined["labels"])
        overrides = set(joined["overrides"])
        excluded = bool(list(joined["exclusions"]))
        if not images:
            # Not an input image: a CSV row with no file. Report the overrides and exclusions
            # that name unknown ids, since they usually point at a typo in the reviewed CSV.
            if overrides:
                yield dead_letter(image_id=image_id, stage="overrides", reason="unknown_override_id", is_image=False)
            if excluded:
                yield dead_letter(image_id=image_id, stage="exclusions", reason="unknown_exclusion_id", is_image=False)
            if labels:
                yield dead_letter(image_id=image_id, stage="labels", reason="label_without_image", is_image=False)
            return
        (path, size, folder_label, group), duplicates = images[0], images[1:]
        for dup_path, *_ in duplicates:
            yield dead_letter(path=dup_path, image_id=image_id, stage="labels", reason="duplicate_id", detail=path)
        if excluded:
            self._excluded.inc()
            yield dead_letter(path=path, image_id=image_id, stage="exclusions", reason="excluded")
            return
        source_split = next((row.source_split for row in labels if row.source_split), "")
        group = next((row.group for row in labels if row.group), group) or image_id
        if len(overrides) > 1:
            yield dead_letter(
                path=path,
                image_id=image_id,
                stage="overrides",
                reason="conflicting_overrides",
                detail=str(sorted(overrides)),
            )
            return
        if overrides:
            self._overridden.inc()
            yield LabelledImage(image_id, path, size, overrides.pop(), group, source_split, True)
            return
        if folder_label is not None:
            label = folder_label
        else:
            errors = [row.error for row in labels if row.error]
            values = {row.label for row in labels if row.label is not None}
            if errors:
                yield dead_letter(path=path, image_id=image_id, stage="labels", reason="bad_label", detail=errors[0])
                return
            if len(values) > 1:
                yield dead_letter(
                    path=path,
                    image_id=image_id,
                    stage="labels",
                    reason="conflicting_labels",
                    detail=str(sorted(values)),
                )
                return
            if not values:
                self._unlabelled.inc()
                reason = "unlabelled" if labels else "no_label_row"
                yield dead_letter(path=path, image_id=image_id, stage="labels", reason=reason)
                return
            label = values.pop()
        self._labelled.inc()
        yield LabelledImage(image_id, path, size, label, group, source_split, False)
