"""The examples index: a CSV row per written example, naming its source file and its shard.

``examples/examples-SSSSS-of-NNNNN.csv`` (columns ``features.EXAMPLES_INDEX_COLUMNS``, a header
in every file) lets any example be traced to the image it came from: ``find_label_issues``,
evaluate's misclassified lists and the review page name files through it, and croissant.json
describes it as a record set. It is fed from what reaches the shard writer, so it holds
exactly the shards' examples; each carries its source path from the decode on
(DecodedImage.path), so no join by id waits for them.
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


class _IndexRow(beam.DoFn):
    """DecodedImage (with its source ``path``) -> its index row, a dict of every index column."""

    def __init__(self, classes: Sequence[str], shards: Mapping[str, int]):
        self._classes = classes
        self._shards = shards
        self._indexed = Metrics.counter(NAMESPACE, "indexed")

    def process(self, image) -> Iterator[dict[str, Any]]:
        if not image.path:
            raise ValueError(
                f"examples index: {image.id!r} reached the writer without its source path (a facepipe bug)"
            )
        self._indexed.inc()
        yield {
            "id": image.id,
            "path": image.path,
            "label": image.label,
            "label_name": self._classes[image.label],
            "split": image.split,
            "group": image.group or image.id,
            "content_sha256": f"{image.content_hash:064x}",
            "shard": shard_name(image.split, image.id, self._shards),
        }


class WriteExamplesIndex(beam.PTransform):
    """DecodedImage (the examples that reach the shard writer, each with its source ``path``)
    -> ``examples/examples-*.csv``."""

    def __init__(self, config: PreprocessConfig, estimated_images: int):
        super().__init__()
        self._classes = config.classes
        self._shards = shard_counts(config, estimated_images)
        self._prefix = FileSystems.join(config.output_dir, features.EXAMPLES_DIR, "examples")

    def expand(self, written):
        return (
            written
            | "Row" >> beam.ParDo(_IndexRow(self._classes, self._shards))
            # row: a dict of every index column
            | "ToCsv" >> beam.Map(lambda r: csv_line([r[c] for c in features.EXAMPLES_INDEX_COLUMNS]))
            | "Write"
            >> beam.io.WriteToText(
                self._prefix, file_name_suffix=".csv", header=",".join(features.EXAMPLES_INDEX_COLUMNS)
            )
        )
