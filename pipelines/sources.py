"""Sources: list images and read labels, overrides and exclusions, joined by id.

Output of :class:`LabelledImages`: ``LabelledImage`` records (one per usable input image)
and dead-letter dicts (images that cannot be labelled, CSV rows that cannot be used). The
rules themselves are plain functions in pipelines/labels.py and pipelines/csv_rows.py; the
DoFns here call them, count and yield the result or its dead letter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines import csv_rows, features, labels, paths, staging
from pipelines.cli import usage_error
from pipelines.config import PreprocessConfig
from pipelines.dead_letters import DEAD_LETTER, dead_letter
from pipelines.records import LabelledImage, Rejection

NAMESPACE = "facepipe.sources"

# Tag of files that were listed but are not images (by extension): counted, not processed.
NOT_IMAGE_FILE = "not_image_file"


# The kinds of CSV the job reads: the PreprocessConfig fields that list them.
CSV_KINDS = ("labels_csv", "overrides_csv", "exclude_csv")


def read_csv_header(path: str, encoding: str = "utf-8") -> list[str]:
    """A CSV's column names, stripped (the driver needs only these to plan the parsing).

    Raises csv_rows.CsvError when the file is missing, a folder, unreadable or not ``encoding`` text.
    """
    if not FileSystems.exists(path):
        raise csv_rows.CsvError(f"{path} does not exist")
    if not paths.is_remote(path) and os.path.isdir(path):
        raise csv_rows.CsvError(f"{path} is a folder, not a CSV file")
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            first = f.readline()
    except OSError as e:
        raise csv_rows.CsvError(f"{path} cannot be read ({e.strerror or e})") from e
    return csv_rows.decode_header(first, path, encoding)


def resolve_vector_columns(config: PreprocessConfig) -> PreprocessConfig:
    """The config with its --numeric_columns (``config.numeric_columns``) resolved against every
    labels CSV's header into ``vector_columns``: the driver's first step after the flags.

    The flag's columns must be in each labels CSV, in the same order (usage error otherwise);
    a preset's are used only when every labels CSV has them (the Kaggle v1..v512), else none.
    """
    request = config.numeric_columns
    if request is None:
        return config
    reserved = (config.id_column, config.label_column)
    resolved = set()
    for path in config.labels_csv:
        try:
            resolved.add(
                csv_rows.resolve_columns(request.spec, read_csv_header(path, config.csv_encoding), reserved=reserved)
            )
        except (csv_rows.CsvError, ValueError) as e:
            if request.optional:
                # The preset's columns are optional: a CSV without them gets no vector.
                return dataclasses.replace(config, numeric_columns=None)
            usage_error(str(e) if isinstance(e, csv_rows.CsvError) else f"{path}: {e}")
    if len(resolved) > 1:
        usage_error(
            f"--numeric_columns {request.spec!r} names other columns in each labels CSV {list(config.labels_csv)}"
        )
    return dataclasses.replace(config, vector_columns=resolved.pop(), numeric_columns=None)


def csv_layout(path: str, kind: str, config: PreprocessConfig) -> csv_rows.LabelsCsvLayout | csv_rows.IdCsvLayout:
    """Reads a CSV's header and checks it for its ``kind`` (one of CSV_KINDS); csv_rows.CsvError if unusable.

    The one check of a CSV before the run: the job and ``pipelines.preflight`` both call it.
    """
    header = read_csv_header(path, config.csv_encoding)
    if kind == "labels_csv":
        return csv_rows.labels_csv_layout(path, header, config)
    return csv_rows.id_csv_layout(path, header, config, with_label=kind == "overrides_csv")


def path_hash(value: str) -> int:
    """A stable 256-bit integer hash (fingerprints sum these, pipelines.sinks.sum_hashes)."""
    return int.from_bytes(hashlib.sha256(value.encode("utf-8")).digest(), "big")


class ListImages(beam.PTransform):
    """Globs -> (path, size) of image files, deduplicated.

    The Distinct is a shuffle: it already spreads the files over the workers, so no
    Reshuffle follows it (one stage boundary fewer per image).

    Main output: (path, size_in_bytes); tagged ``not_image_file``: paths of
    listed files whose extension is not an image's (counted in the manifest, not read).
    """

    def __init__(self, image_globs: Iterable[str]):
        super().__init__()
        self._globs = list(image_globs)

    def expand(self, pipeline):
        globs = pipeline | "Globs" >> beam.Create(self._globs)
        matched = (
            globs
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | "PathAndSize" >> beam.Map(lambda metadata: (metadata.path, metadata.size_in_bytes))
        )
        # Beam's match skips links to nothing and folders: listed here, they become dead letters
        # (dangling_link, not_a_regular_file).
        skipped = globs | "SkippedByMatch" >> beam.FlatMap(lambda pattern: [(p, 0) for p in skipped_by_match(pattern)])
        return (
            (matched, skipped)
            | "AllListed" >> beam.Flatten()
            # (path, size); overlapping globs may list a file twice
            | "Deduplicate" >> beam.Distinct()
            | "ByExtension" >> beam.ParDo(_SplitByExtension()).with_outputs(NOT_IMAGE_FILE, main="images")
        )


def skipped_by_match(pattern: str) -> list[str]:
    """The local paths a glob ``pattern`` names that Beam's match skips, at any depth it reaches
    (Beam walks the pattern's folder without following links, then keeps what matches): links to
    nothing or to a loop of links, and folders (or links to folders) named like an image."""
    prefix = re.match(r"[^[*?]*", pattern).group(0)
    root = os.path.dirname(prefix)  # As Beam's match lists it.
    if paths.is_remote(pattern) or prefix == pattern or not os.path.isdir(root):
        return []
    skipped = []
    for folder, folders, files in os.walk(root):
        skipped += [os.path.join(folder, name) for name in files if not os.path.exists(os.path.join(folder, name))]
        skipped += [os.path.join(folder, name) for name in folders if name.lower().endswith(features.IMAGE_EXTENSIONS)]
    matches = re.compile(FileSystem.translate_pattern(pattern))
    return sorted(path for path in skipped if matches.match(path))


class _SplitByExtension(beam.DoFn):
    def __init__(self):
        self._images = Metrics.counter(NAMESPACE, "images_listed")
        self._others = Metrics.counter(NAMESPACE, "non_image_files")

    def process(self, file: tuple[str, int]) -> Iterator:
        if file[0].lower().endswith(features.IMAGE_EXTENSIONS):
            self._images.inc()
            yield file
        else:
            self._others.inc()
            yield beam.pvalue.TaggedOutput(NOT_IMAGE_FILE, file[0])


def _dead_letter(rejection: Rejection) -> beam.pvalue.TaggedOutput:
    return dead_letter(**dataclasses.asdict(rejection))


def _outputs(result: tuple | Rejection | None) -> Iterator:
    """A label rule's result as DoFn output: the element, its dead letter, or nothing."""
    if isinstance(result, Rejection):
        yield _dead_letter(result)
    elif result is not None:
        yield result


class KeyImageById(beam.DoFn):
    """(path, size) -> (id, (path, size, folder_label, group)) or a dead letter."""

    def __init__(self, config: PreprocessConfig):
        self._rule = labels.id_rule(config)

    def process(self, file: tuple[str, int]) -> Iterator:
        yield from _outputs(labels.key_image(*file, self._rule))


class ParseLabelRows(beam.DoFn):
    """A labels-CSV line (bytes) -> (id, LabelRow), or a dead letter for a malformed row."""

    def __init__(self, layout: csv_rows.LabelsCsvLayout):
        self._layout = layout
        self._bad_rows = Metrics.counter(NAMESPACE, "malformed_label_rows")

    def process(self, line: bytes) -> Iterator:
        row = csv_rows.parse_label_row(line, self._layout)
        if isinstance(row, Rejection):
            self._bad_rows.inc()
        yield from _outputs(row)


class ParseIdLabel(beam.DoFn):
    """An overrides or exclusions CSV line (bytes) -> (id, label or None), or a dead letter."""

    def __init__(self, layout: csv_rows.IdCsvLayout):
        self._layout = layout

    def process(self, line: bytes) -> Iterator:
        yield from _outputs(csv_rows.parse_id_row(line, self._layout))


def check_csvs(config: PreprocessConfig) -> None:
    """Ends the program with one line ``error: …`` when a labels, overrides or exclusions CSV
    cannot be used (missing, a folder, unreadable, unknown columns): before anything is written."""
    for kind in CSV_KINDS:
        for path in getattr(config, kind):
            try:
                csv_layout(path, kind, config)
            except csv_rows.CsvError as e:
                usage_error(str(e))


def _read_csvs(pipeline, label: str, kind: str, config: PreprocessConfig, make_dofn) -> tuple[list, list]:
    """Reads each CSV of a kind (header in the driver, rows on the workers); returns (rows, dead letters).

    Rows are read as bytes and decoded one by one by the label rules, so that a row that is
    not text in --csv_encoding is one dead letter, not a failed job. A CSV that cannot be
    used at all ends the program with one line ``error: …``.
    """
    rows, dead = [], []
    for i, path in enumerate(getattr(config, kind)):
        try:
            layout = csv_layout(path, kind, config)
        except csv_rows.CsvError as e:
            raise SystemExit(f"error: {e}") from None
        parsed = (
            pipeline
            | f"Read{label}{i}" >> beam.io.ReadFromText(path, skip_header_lines=1, coder=beam.coders.BytesCoder())
            | f"Parse{label}{i}" >> beam.ParDo(make_dofn(layout)).with_outputs(DEAD_LETTER, main="rows")
        )
        rows.append(parsed.rows)
        dead.append(parsed[DEAD_LETTER])
    return rows, dead


class LabelledImages(beam.PTransform):
    """Lists the images and resolves each one's label.

    Output (a dict of PCollections): ``images`` LabelledImage, the unlabelled ones among them
    with label NO_LABEL (each has its ``unlabelled`` dead letter too, and is decoded for the
    quality audit alone: one output, so that no Flatten holds them all); ``dead_letter`` dicts;
    ``not_image_file`` paths of skipped non-image files; ``fingerprint`` the path/size hash
    (an int) of every listed image, once even where globs overlap.

    ``staging_dir``: the --numeric_columns vectors wait there from the parse on (the images
    carry their digest and location, staging.StageVectors); None: they travel in the records.
    """

    def __init__(self, config: PreprocessConfig, *, staging_dir: str | None = None):
        super().__init__()
        self._config = config
        self._staging_dir = staging_dir

    def expand(self, pipeline):
        config = self._config
        listed = pipeline | "ListImages" >> ListImages(config.image_globs)
        fingerprint = listed.images | "HashPathAndSize" >> beam.Map(lambda file: path_hash(f"{file[0]}\0{file[1]}"))
        keyed = listed.images | "KeyById" >> beam.ParDo(KeyImageById(config)).with_outputs(DEAD_LETTER, main="keyed")
        # (id, (path, size, folder_label, group))

        label_rows, label_dead = _read_csvs(pipeline, "Labels", "labels_csv", config, ParseLabelRows)
        if self._staging_dir and config.vector_length:
            # (id, LabelRow) with the vector's digest and location: the join by id holds every
            # row, and a 512-column vector is most of one (pipelines/staging.py).
            stage = staging.StageVectors(self._staging_dir)
            label_rows = [rows | f"StageVectors{i}" >> beam.ParDo(stage) for i, rows in enumerate(label_rows)]
        override_rows, override_dead = _read_csvs(pipeline, "Overrides", "overrides_csv", config, ParseIdLabel)
        exclusion_rows, exclusion_dead = _read_csvs(pipeline, "Exclusions", "exclude_csv", config, ParseIdLabel)
        if config.exclude_ids:
            exclusion_rows.append(pipeline | "ExcludeIds" >> beam.Create([(i, None) for i in config.exclude_ids]))

        # Each CSV is an input of its own: a Flatten before the join would hold every row (and
        # its --numeric_columns vector) in memory once more on a local runner.
        joined = {"images": keyed.keyed}
        for kind, rows in (("labels", label_rows), ("overrides", override_rows), ("exclusions", exclusion_rows)):
            joined.update({f"{kind}{i}": pcoll for i, pcoll in enumerate(rows)})
        resolved = (
            joined
            | "JoinById" >> beam.CoGroupByKey()
            # (id, {"images": [...], "labels0": [LabelRow], ..., "overrides0": [int], ..., "exclusions0": [None], ...})
            | "ResolveLabels"
            >> beam.ParDo(ResolveLabel(with_vector=config.vector_length > 0)).with_outputs(DEAD_LETTER, main="images")
        )
        dead_letters = [keyed[DEAD_LETTER], resolved[DEAD_LETTER], *label_dead, *override_dead, *exclusion_dead]
        return {
            "images": resolved.images,
            DEAD_LETTER: dead_letters | "FlattenSourceDeadLetters" >> beam.Flatten(pipeline=pipeline.pipeline),
            NOT_IMAGE_FILE: listed[NOT_IMAGE_FILE],
            "fingerprint": fingerprint,
        }


class ResolveLabel(beam.DoFn):
    """Decides each id's fate (labels.resolve_label): a LabelledImage or dead letters.

    ``with_vector``: the job carries --numeric_columns, so an image without its vector is a dead letter.
    """

    def __init__(self, *, with_vector: bool = False):
        self._with_vector = with_vector
        self._counters = {name: Metrics.counter(NAMESPACE, name) for name in labels.COUNTED_OUTCOMES}

    def process(self, element) -> Iterator[LabelledImage | beam.pvalue.TaggedOutput]:
        image_id, joined = element

        def rows(kind: str) -> list:
            return [row for name, values in joined.items() if name.startswith(kind) for row in values]

        resolution = labels.resolve_label(
            image_id,
            joined["images"],
            rows("labels"),
            overrides=rows("overrides"),
            excluded=bool(rows("exclusions")),
            with_vector=self._with_vector,
        )
        if resolution.outcome:
            self._counters[resolution.outcome].inc()
        yield from map(_dead_letter, resolution.rejections)
        if resolution.image is not None:
            yield resolution.image
        if resolution.audit_only is not None:
            yield resolution.audit_only
