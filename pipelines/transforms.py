"""Per-image transforms: split assignment, decode + resize, deterministic class balancing."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from pipelines import features, paths
from pipelines.cache import CachedPixels, CorruptEntry, DecodeCache
from pipelines.dead_letters import DEAD_LETTER, dead_letter

# The one decoder, in its own module: predict, find_label_issues and the review use it too.
# Its names stay importable from here (``as`` marks them re-exported).
from pipelines.decoding import UndecodableImage as UndecodableImage
from pipelines.decoding import check_container as check_container
from pipelines.decoding import check_dimensions as check_dimensions
from pipelines.decoding import decode_and_resize as decode_and_resize
from pipelines.decoding import decode_jpeg as decode_jpeg
from pipelines.decoding import decode_with_size as decode_with_size
from pipelines.decoding import image_dimensions as image_dimensions
from pipelines.decoding import to_uint8_color as to_uint8_color
from pipelines.labels import NO_LABEL, LabelledImage, VectorLocation
from pipelines.options import PreprocessConfig
from pipelines.quality import ImageQuality, image_quality

NAMESPACE = "facepipe.transforms"
BALANCED_OUT = "balanced_out"
# DecodeAndResize's decode-cache counters (the manifest's ``cache`` section).
CACHE_COUNTERS = ("cache_hits", "cache_misses", "cache_corrupt")
# Decoded images audited together: an audit right after each decode costs about twice as much
# (the decoder leaves the caches cold; docs/benchmarks.md section 7), 64 at a time as little as 256.
AUDIT_BATCH = 64


class DecodedImage(NamedTuple):
    """A decoded image reduced to the pixels that go into a shard (an unlabelled one: to its audit)."""

    id: str
    label: int | None  # None: an unlabelled image, audited but never written
    split: str
    pixels: bytes  # uint8, row-major height x width x channels
    content_hash: int
    group: str  # What the split kept together (a person with --group_by), else the id.
    vector: bytes = b""  # float32 --numeric_columns values (LabelledImage.vector); b"" when none.
    quality: ImageQuality | None = None  # The audit's statistics (pipelines.quality).
    staged: str = ""  # The staging file holding the pixels while they are b"" (pipelines.staging).
    vector_location: VectorLocation | None = None  # Where the vector waits while it is b"" (staged at the parse).


def unit_hash(*parts: object) -> float:
    """A stable hash of ``parts`` mapped to [0, 1): the same on every worker and every run."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(image: LabelledImage, config: PreprocessConfig) -> str:
    """The split of an image: a stable hash of its group, or its source CSV's split."""
    u = unit_hash(config.seed, image.group)
    if config.from_source:
        if image.source_split in ("validation", "test"):
            return image.source_split
        return "validation" if u < config.validation_fraction else "train"
    cumulative = 0.0
    for split in features.SPLITS:
        cumulative += config.splits.get(split, 0.0)
        if u < cumulative:
            return split
    return max(config.splits, key=lambda s: features.SPLITS.index(s) if config.splits[s] > 0 else -1)


class _Pending(NamedTuple):
    """A decoded image waiting for its audit, with where it came from in the pipeline."""

    split: str
    image: LabelledImage
    decoded: CachedPixels
    content_hash: int
    timestamp: Any
    window: Any


class DecodeAndResize(beam.DoFn):
    """(split, LabelledImage) -> DecodedImage, or a dead letter saying why not.

    An unlabelled image (label NO_LABEL) comes out without its pixels, label None, split
    UNLABELLED_SPLIT: it is audited (a copy of it in the train split is leakage) but never written.
    Decoded images are audited AUDIT_BATCH at a time (and at the end of each bundle), so they
    leave in batches, each with its own window and timestamp.
    """

    _LOG_EVERY = 500

    def __init__(self, config: PreprocessConfig):
        self._size = config.image_size
        self._color_mode = config.color_mode
        self._max_pixels = config.max_pixels
        self._min_side = config.min_side
        self._cache_dir = config.cache_dir
        self._decoded = Metrics.counter(NAMESPACE, "decoded")
        self._cache_counters = {name: Metrics.counter(NAMESPACE, name) for name in CACHE_COUNTERS}
        self._failed = Metrics.counter(NAMESPACE, "decode_failed")
        self._audited_only = Metrics.counter(NAMESPACE, "audited_unlabelled")
        self._not_audited = Metrics.counter(NAMESPACE, "unlabelled_not_audited")
        self._bytes_read = Metrics.counter(NAMESPACE, "bytes_read")

    def setup(self):
        self._count = 0
        self._started = time.monotonic()
        self._cache = (
            DecodeCache(self._cache_dir, size=self._size, color_mode=self._color_mode) if self._cache_dir else None
        )

    def start_bundle(self):
        self._pending: list[_Pending] = []

    def process(
        self, element: tuple[str, LabelledImage], timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam
    ) -> Iterator:
        split, image = element
        if reason := paths.not_a_file_reason(image.path):  # A FIFO would block the read forever.
            yield from self._failure(image, reason, "")
            return
        try:
            with FileSystems.open(image.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                data = f.read()
        except Exception as e:  # Any filesystem's error: the image is lost, not the job.
            yield from self._failure(image, "read_error", repr(e))
            return
        self._bytes_read.inc(len(data))
        content_sha256 = hashlib.sha256(data).digest()
        try:
            decoded = self._pixels(data, content_sha256)
        except UndecodableImage as e:
            yield from self._failure(image, e.reason, e.detail)
            return
        except Exception as e:  # An unexpected decoder failure is one bad image, never a crashed job.
            yield from self._failure(image, "undecodable", f"{type(e).__name__}: {e}")
            return
        self._log_progress()
        content_hash = int.from_bytes(content_sha256, "big")
        self._pending.append(_Pending(split, image, decoded, content_hash, timestamp, window))
        if len(self._pending) >= AUDIT_BATCH:
            yield from self._audited()

    def finish_bundle(self) -> Iterator:
        yield from self._audited()

    def _audited(self) -> Iterator:
        """The pending images, audited, as windowed values (what finish_bundle must emit)."""
        pending, self._pending = self._pending, []
        # The audit reads only the resized pixels and the original size (see pipelines.quality),
        # which a cache hit holds too; all of them first, in one loop that keeps its code in cache.
        qualities = [image_quality(p.decoded.pixels, p.decoded.original_size) for p in pending]
        for p, quality in zip(pending, qualities, strict=True):
            image = p.image
            if image.label == NO_LABEL:
                self._audited_only.inc()
                audited = DecodedImage(image.id, None, p.split, b"", p.content_hash, image.group, b"", quality)
                yield WindowedValue(audited, p.timestamp, (p.window,))
                continue
            self._decoded.inc()
            decoded = DecodedImage(
                image.id,
                image.label,
                p.split,
                p.decoded.pixels.tobytes(),
                p.content_hash,
                image.group,
                image.vector if image.vector_location is None else b"",  # Else: its digest.
                quality,
                vector_location=image.vector_location,
            )
            yield WindowedValue(decoded, p.timestamp, (p.window,))

    def _failure(self, image: LabelledImage, reason: str, detail: str) -> Iterator:
        """A decode dead letter; none for an unlabelled image, which has its ``unlabelled`` one."""
        if image.label == NO_LABEL:
            self._not_audited.inc()
            logging.warning("unlabelled image %s not audited: %s %s", image.path, reason, detail)
            return
        self._failed.inc()
        yield dead_letter(path=image.path, image_id=image.id, stage="decode", reason=reason, detail=detail)

    def _pixels(self, data: bytes, content_sha256: bytes) -> CachedPixels:
        """The resized pixels and original size: from the cache when it holds a sound entry,
        else decoded (and then cached). Each lookup counts once: hit, miss or corrupt."""
        if self._cache is None:
            return self._decode(data)
        try:
            cached = self._cache.get(content_sha256)
        except CorruptEntry as e:  # Never trusted: decoded again, and the entry rewritten.
            logging.warning(
                "decode cache: entry %s is corrupt (%s); decoding again", self._cache.path(content_sha256), e
            )
            self._cache_counters["cache_corrupt"].inc()
        else:
            if cached is not None:
                # The entry passed an earlier run's limits; this run's may differ.
                check_dimensions(*cached.original_size, max_pixels=self._max_pixels, min_side=self._min_side)
                self._cache_counters["cache_hits"].inc()
                return cached
            self._cache_counters["cache_misses"].inc()
        decoded = self._decode(data)
        self._cache.put(content_sha256, decoded)
        return decoded

    def _decode(self, data: bytes) -> CachedPixels:
        return decode_with_size(
            data, size=self._size, color_mode=self._color_mode, max_pixels=self._max_pixels, min_side=self._min_side
        )

    def _log_progress(self) -> None:
        self._count += 1
        if self._count % self._LOG_EVERY == 0:
            rate = self._count / max(time.monotonic() - self._started, 1e-9)
            logging.info("decoded %d images in this worker (%.1f images/s)", self._count, rate)


# --- Balancing -------------------------------------------------------------------------

_HISTOGRAM_BUCKETS = 1024


def balance_priority(image_id: str, seed: int) -> float:
    """The survivor order of balancing: smaller survives. Stable across runs and workers."""
    return unit_hash("balance", seed, image_id)


def _bucket(priority: float) -> int:
    return int(priority * _HISTOGRAM_BUCKETS)


class _HistogramFn(beam.CombineFn):
    """Counts bucket numbers into a fixed-size histogram (a list of ints)."""

    def create_accumulator(self) -> list[int]:
        return [0] * _HISTOGRAM_BUCKETS

    def add_input(self, accumulator: list[int], bucket: int) -> list[int]:
        accumulator[bucket] += 1
        return accumulator

    def merge_accumulators(self, accumulators) -> list[int]:
        return [sum(counts) for counts in zip(*accumulators, strict=True)]

    def extract_output(self, accumulator: list[int]) -> list[int]:
        return accumulator


def balance_plan(histograms: dict, split: str, label: int) -> tuple[int, int]:
    """(cutoff bucket, survivors wanted from that bucket) for one split and class.

    Each split keeps ``k`` = its smallest present class's count of every class: the ``k``
    images of lowest priority. Buckets below the cutoff survive whole; the cutoff bucket
    is ranked exactly; buckets above it are dropped.
    """
    totals = [sum(h) for (s, _), h in histograms.items() if s == split and sum(h) > 0]
    keep = min(totals)
    before = 0
    for bucket, count in enumerate(histograms[(split, label)]):
        if before + count >= keep:
            return bucket, keep - before
        before += count
    raise AssertionError(f"balance plan for {split}/{label}: fewer images than the smallest class")


class _RouteByBucket(beam.DoFn):
    """DecodedImage -> kept (main), ``boundary`` ((split, label), image) or a dead letter."""

    def __init__(self, seed: int):
        self._seed = seed
        self._dropped = Metrics.counter(NAMESPACE, "balanced_out")

    def process(self, image: DecodedImage, histograms: dict) -> Iterator:
        cutoff, _ = balance_plan(histograms, image.split, image.label)
        bucket = _bucket(balance_priority(image.id, self._seed))
        if bucket < cutoff:
            yield image
        elif bucket == cutoff:
            yield beam.pvalue.TaggedOutput("boundary", ((image.split, image.label), image))
        else:
            self._dropped.inc()
            yield dead_letter(image_id=image.id, stage="balance", reason=BALANCED_OUT, detail=image.split)


class _RankBoundaryBucket(beam.DoFn):
    """((split, label), [DecodedImage]) -> the wanted number of lowest-priority images."""

    def __init__(self, seed: int):
        self._seed = seed
        self._dropped = Metrics.counter(NAMESPACE, "balanced_out")

    def process(self, element, histograms: dict) -> Iterator:
        (split, label), images = element
        _, wanted = balance_plan(histograms, split, label)
        ranked = sorted(images, key=lambda image: (balance_priority(image.id, self._seed), image.id))
        yield from ranked[:wanted]
        for image in ranked[wanted:]:
            self._dropped.inc()
            yield dead_letter(image_id=image.id, stage="balance", reason=BALANCED_OUT, detail=split)


class DownsampleToSmallestClass(beam.PTransform):
    """Keeps, per split, as many images of each class as the smallest class has.

    Survivors are the images with the lowest hash of (seed, id): deterministic, and
    computed on the workers from per-class histograms (a side input of 1024 counts per
    split and class), so neither the driver nor any worker ever holds the ids of a class.
    Output: ``kept`` DecodedImage and ``dead_letter`` records with reason ``balanced_out``.
    """

    def __init__(self, seed: int):
        super().__init__()
        self._seed = seed

    def expand(self, images):
        seed = self._seed
        histograms = (
            images
            | "KeyBucket" >> beam.Map(lambda im: ((im.split, im.label), _bucket(balance_priority(im.id, seed))))
            | "Histogram" >> beam.CombinePerKey(_HistogramFn())
            # ((split, label), [count per bucket])
        )
        side = beam.pvalue.AsDict(histograms)
        routed = images | "Route" >> beam.ParDo(_RouteByBucket(seed), side).with_outputs(
            "boundary", DEAD_LETTER, main="kept"
        )
        ranked = (
            routed.boundary
            | "GroupBoundary" >> beam.GroupByKey()
            # ((split, label), [DecodedImage in the cutoff bucket])
            | "Rank" >> beam.ParDo(_RankBoundaryBucket(seed), side).with_outputs(DEAD_LETTER, main="kept")
        )
        return {
            "kept": (routed.kept, ranked.kept) | "FlattenKept" >> beam.Flatten(),
            DEAD_LETTER: (routed[DEAD_LETTER], ranked[DEAD_LETTER]) | "FlattenDropped" >> beam.Flatten(),
        }
