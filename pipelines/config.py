"""The preprocessing job's config: everything the stages need to know besides Beam's own options.

pipelines/options.py fills it from the flags (and a ``--dataset`` preset); every stage reads it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

from pipelines import features

DEFAULT_SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}


@dataclasses.dataclass(frozen=True)
class DatasetCard:
    """What croissant.json says of the data set (--dataset_name, ...; a --dataset preset fills in
    its source); empty: a default (pipelines/croissant.py). Never part of the fingerprint."""

    name: str = ""
    description: str = ""
    license: str = ""
    citation: str = ""
    url: str = ""


class NumericColumns(NamedTuple):
    """--numeric_columns as given (else the preset's), before pipelines.sources.resolve_vector_columns
    resolves it against the labels CSVs' headers into ``PreprocessConfig.vector_columns``."""

    spec: str  # v1,v2 or v1..v512 or v*
    optional: bool  # A preset's: used only when every labels CSV has the columns, else no vector.


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Everything the pipeline needs to know besides Beam's own options."""

    image_globs: tuple[str, ...]
    output_dir: str
    classes: tuple[str, ...]
    labels_csv: tuple[str, ...] = ()
    id_column: str = "id"
    label_column: str = "label"
    file_pattern: str = "{id}"
    class_folders: dict[str, int] | None = None
    overrides_csv: tuple[str, ...] = ()
    exclude_csv: tuple[str, ...] = ()
    exclude_ids: tuple[str, ...] = ()
    csv_encoding: str = "utf-8"
    balance: str = "downsample"
    splits: dict[str, float] | None = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPLITS))
    validation_fraction: float = 0.1
    group_by: str | None = None
    image_size: tuple[int, int] = (50, 50)  # (width, height)
    color_mode: str = "rgb"
    seed: int = 0
    num_shards: int = 0
    max_bad_fraction: float = 0.5
    max_unusable_fraction: float = 0.5
    min_side: int = features.MIN_SIDE
    max_pixels: int = features.MAX_PIXELS
    dedupe: str = "none"  # "keep_one": one image per duplicate group, the rest dead letters
    # Robust |z| beyond which an image is a quality outlier (Iglewicz and Hoaglin's 3.5: with
    # z = 0.6745 (x - median) / MAD, normal data exceed it about once in 2000).
    outlier_threshold: float = 3.5
    # Perceptual-hash bits (of 64) in which near duplicates may differ. Measured on the demo
    # faces at 50x50: re-encoded, brightened and 2-4% cropped copies differ in 0-6 bits,
    # different faces in 12 or more (the demo data's tests check both).
    duplicate_distance: int = 6
    # Thumbnail correlation of a near-duplicate pair (pipelines.quality.similarity). Chosen in
    # the gap between the demo's injected copies (>= 0.988) and its other faces within 6 bits
    # (<= 0.965) on two seeds (0 and 7, 1500 images each).
    duplicate_similarity: float = 0.97
    overwrite: bool = False
    # Rejected overrides/exclusions rows (a label not in the classes, an id no image has, a
    # row that cannot be read) fail the run instead of being reported in the summary.
    strict: bool = False
    # --numeric_columns resolved against the labels CSVs' header: the example's float32 vector.
    vector_columns: tuple[str, ...] = ()
    # --numeric_columns until it is resolved (sources.resolve_vector_columns sets None); not an
    # option of its own in the manifest: ``vector_columns`` is what it came to.
    numeric_columns: NumericColumns | None = None
    cache_dir: str | None = None  # Decode cache (pipelines/cache.py); None: off.
    # Threads decoding one batch of images in each worker (pipelines.transforms.DecodeAndResize);
    # 0: one per core the worker may use. The decoders release the GIL (docs/benchmarks.md).
    decode_threads: int = 0
    card: DatasetCard = dataclasses.field(default_factory=DatasetCard)
    # The --dataset layout ("glasses", "comics"; "" none): the manifest's "dataset", from which
    # the trainer takes what cross-validation found best for that task (trainer/models.py).
    dataset: str = ""

    @property
    def channels(self) -> int:
        return features.COLOR_MODES[self.color_mode]

    @property
    def vector_length(self) -> int:
        return len(self.vector_columns)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every path (or glob) the job reads: the output may not overlap any of them."""
        return (*self.image_globs, *self.labels_csv, *self.overrides_csv, *self.exclude_csv)

    @property
    def from_source(self) -> bool:
        return self.splits is None

    def to_json(self) -> dict[str, Any]:
        if self.numeric_columns is not None:
            raise ValueError("--numeric_columns is not resolved yet: call sources.resolve_vector_columns first")
        options = json.loads(json.dumps(dataclasses.asdict(self)))
        del options["numeric_columns"]
        return options
