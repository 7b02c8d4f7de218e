"""The examples index: a CSV row per written example, naming its source file and its shard.

``examples/examples-SSSSS-of-NNNNN.csv`` (columns ``features.EXAMPLES_INDEX_COLUMNS``, a header
in every file) lets any example be traced to the image it came from: ``find_label_issues``,
evaluate's misclassified lists and the review page name files through it, and croissant.json
describes it as a record set. It is fed from what reaches the shard writer, so it holds
exactly the shards' examples.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines import features
from pipelines.config import PreprocessConfig
from pipelines.sinks import shard_counts, shard_name

NAMESPACE = "facepipe.examples_index"


def csv_line(values: Sequence[Any]) -> str:
    """One CSV line (quoted where needed, no line end)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


class _JoinPath(beam.DoFn):
    """(id, {"row": [row], "path": [path]}) -> the row with its path; ids not written yield nothing."""

    def __init__(self):
        self._indexed = Metrics.counter(NAMESPACE, "indexed")

    def process(self, element: tuple[str, Mapping[str, list]]) -> Iterator[dict[str, Any]]:
        image_id, joined = element
        rows, paths = list(joined["row"]), list(joined["path"])
        if not rows:
            return
        if len(rows) != 1 or len(paths) != 1:
            raise ValueError(
                f"examples index: id {image_id!r} is written {len(rows)} times and listed with "
                f"{len(paths)} paths; each written example must have one source file (a facepipe bug)"
            )
        self._indexed.inc()
        yield {**rows[0], "path": paths[0]}


class WriteExamplesIndex(beam.PTransform):
    """{"written": DecodedImage, "listed": LabelledImage} -> ``examples/examples-*.csv``.

    ``written``: the examples that reach the shard writer; ``listed``: the sources' images,
    whose paths are joined to them by id.
    """

    def __init__(self, config: PreprocessConfig, estimated_images: int):
        super().__init__()
        self._classes = config.classes
        self._shards = shard_counts(config, estimated_images)
        self._prefix = FileSystems.join(config.output_dir, features.EXAMPLES_DIR, "examples")

    def expand(self, inputs: Mapping[str, Any]):
        classes, shards = self._classes, self._shards

        def row(image) -> tuple[str, dict[str, Any]]:
            return image.id, {
                "id": image.id,
                "label": image.label,
                "label_name": classes[image.label],
                "split": image.split,
                "group": image.group or image.id,
                "content_sha256": f"{image.content_hash:064x}",
                "shard": shard_name(image.split, image.id, shards),
            }

        rows = inputs["written"] | "KeyRows" >> beam.Map(row)
        # (id, row without its path)
        paths = inputs["listed"] | "KeyPaths" >> beam.Map(lambda image: (image.id, image.path))
        # (id, source path)
        return (
            {"row": rows, "path": paths}
            | "JoinById" >> beam.CoGroupByKey()
            # (id, {"row": [row], "path": [path]})
            | "JoinPath" >> beam.ParDo(_JoinPath())
            # row: a dict of every index column
            | "ToCsv" >> beam.Map(lambda r: csv_line([r[c] for c in features.EXAMPLES_INDEX_COLUMNS]))
            | "Write"
            >> beam.io.WriteToText(
                self._prefix, file_name_suffix=".csv", header=",".join(features.EXAMPLES_INDEX_COLUMNS)
            )
        )
