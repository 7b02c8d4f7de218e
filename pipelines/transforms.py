"""Per-image transforms and their batches: split assignment, batching, decode + resize, deterministic class balancing."""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from pipelines import features, paths
from pipelines.cache import CachedPixels, CorruptEntry, DecodeCache
from pipelines.config import PreprocessConfig
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
from pipelines.quality.measures import image_quality
from pipelines.records import NO_LABEL, DecodedImage, ImageQuality, LabelledImage

NAMESPACE = "facepipe.transforms"
BALANCED_OUT = "balanced_out"
# DecodeAndResize's decode-cache counters (the manifest's ``cache`` section).
CACHE_COUNTERS = ("cache_hits", "cache_misses", "cache_corrupt")
# A batch (BatchImages): the unit of work from the join by id to the writer. Tens of images
# pay the runner's per-element cost once and keep a thread pool busy; the bytes bound keeps a
# batch of large photos to a few seconds of decoding and its files' bytes out of memory.
BATCH_IMAGES = 64
BATCH_BYTES = 32 << 20
# Decoded images audited together, a batch: an audit right after each decode costs about twice
# as much (the decoder leaves the caches cold; docs/benchmarks.md section 7), 64 at a time as little as 256.
AUDIT_BATCH = BATCH_IMAGES
# Batches DecodeAndResize decodes ahead of the one it yields: while its thread runs the steps fused
# after it on a batch, the pool decodes the next ones. Two, not one: the work downstream varies
# from batch to batch (a shard's gzip, tf.Transform's batches, the audit's blocks), and with one
# batch ahead the pool and the thread took turns waiting for each other (docs/benchmarks.md section 1).
BATCHES_AHEAD = 2


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


def decode_threads(requested: int) -> int:
    """The decode pool's size: ``requested``, or with 0 one thread per core this process may use."""
    if requested:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not Linux.
        return os.cpu_count() or 1


class BatchImages(beam.DoFn):
    """(split, LabelledImage) -> [(split, LabelledImage)]: BATCH_IMAGES at most, their files
    BATCH_BYTES at most (a larger file alone), within one bundle.

    The unit of work from here to the writer: the runner's cost per element (coders, stage
    boundaries) is paid per batch, and a batch is what one thread pool decodes. Batches are
    cut by count and file size alone, never by time, so a run's batches are the same each time
    its bundles are (the output never depends on them). Global windows only (a batch job's).
    """

    def start_bundle(self) -> None:
        self._batch: list[tuple[str, LabelledImage]] = []
        self._bytes = 0

    def process(self, element: tuple[str, LabelledImage]) -> Iterator:
        size = element[1].size
        if self._batch and (len(self._batch) >= BATCH_IMAGES or self._bytes + size > BATCH_BYTES):
            yield self._emit()
        self._batch.append(element)
        self._bytes += size

    def finish_bundle(self) -> Iterator:
        if self._batch:
            yield self._emit()

    def _emit(self) -> WindowedValue:
        batch, self._batch, self._bytes = self._batch, [], 0
        return GlobalWindows.windowed_value_at_end_of_window(batch)


class _Outcome(NamedTuple):
    """One image's read + decode, as a pool thread leaves it for the DoFn's own thread (which
    alone may touch Beam's metrics): its pixels or why not, and what it cost."""

    decoded: CachedPixels | None
    content_hash: int = 0
    bytes_read: int = 0
    cache_counter: str = ""  # The CACHE_COUNTERS name this lookup counts in; "" with the cache off.
    failure: tuple[str, str] = ("", "")  # (dead-letter reason, detail) when ``decoded`` is None


class DecodeAndResize(beam.DoFn):
    """[(split, LabelledImage)] -> [DecodedImage] (the batch's decodable images), and a dead
    letter for each one that is not, saying why.

    The batch is read, decoded and resized on a pool of ``--decode_threads`` threads (OpenCV,
    simplejpeg and hashlib release the GIL while they work), in one part a thread: a part's
    images decoded, then audited (an audit right after each decode costs about twice as much,
    docs/benchmarks.md section 7). Each image goes through :func:`decode_with_size`, via the
    decode cache when on. A batch leaves BATCHES_AHEAD batches late (the last ones at the
    bundle's end): while this thread runs the steps fused after this one on a batch, the pool
    decodes the next ones. The order of the outputs is the input's.
    An unlabelled image (label NO_LABEL) comes out without its pixels, label None, split
    UNLABELLED_SPLIT: it is audited (a copy of it in the train split is leakage) but never written.
    """

    _LOG_EVERY = 500

    def __init__(self, config: PreprocessConfig):
        self._size = config.image_size
        self._color_mode = config.color_mode
        self._max_pixels = config.max_pixels
        self._min_side = config.min_side
        self._cache_dir = config.cache_dir
        self._threads = config.decode_threads
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
        self._pool_size = decode_threads(self._threads)
        self._pool = ThreadPoolExecutor(self._pool_size, thread_name_prefix="decode")

    def teardown(self):
        self._pool.shutdown()

    def start_bundle(self) -> None:
        # The batches whose reads and decodes run on the pool while the ones before them go
        # downstream: (batch, a future per part of it), oldest first.
        self._in_flight: collections.deque[tuple[list[tuple[str, LabelledImage]], list[Future]]] = collections.deque()

    def process(self, batch: list[tuple[str, LabelledImage]]) -> Iterator:
        """Starts ``batch``'s decodes and yields the batch BATCHES_AHEAD before it: the steps fused
        after this one run on this thread while the pool decodes the next batches."""
        part = -(-len(batch) // self._pool_size)  # One part a thread.
        images = [image for _, image in batch]
        parts = [self._pool.submit(self._decode_part, images[i : i + part]) for i in range(0, len(images), part)]
        self._in_flight.append((batch, parts))
        if len(self._in_flight) > BATCHES_AHEAD:
            yield from self._outputs(*self._in_flight.popleft())

    def finish_bundle(self) -> Iterator:
        """The bundle's last batches (outputs of finish_bundle carry their window)."""
        while self._in_flight:
            for output in self._outputs(*self._in_flight.popleft()):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    value = GlobalWindows.windowed_value_at_end_of_window(output.value)
                    yield beam.pvalue.TaggedOutput(output.tag, value)
                else:
                    yield GlobalWindows.windowed_value_at_end_of_window(output)

    def _decode_part(self, images: list[LabelledImage]) -> list[tuple[_Outcome, ImageQuality | None]]:
        """On a pool thread: each image's outcome and the audit of each decoded one, all of the
        audits after the decodes, in a loop that keeps its code in cache. The audit reads only the
        resized pixels and the original size (see pipelines.quality), which a cache hit holds too."""
        outcomes = [self._read_and_decode(image) for image in images]
        return [
            (
                outcome,
                None
                if outcome.decoded is None
                else image_quality(outcome.decoded.pixels, outcome.decoded.original_size),
            )
            for outcome in outcomes
        ]

    def _outputs(self, batch: list[tuple[str, LabelledImage]], parts: list[Future]) -> Iterator:
        """The batch's decoded images (one list) and dead letters, counted."""
        audited = [row for part in parts for row in part.result()]
        decoded = []
        for (split, image), (outcome, quality) in zip(batch, audited, strict=True):
            self._bytes_read.inc(outcome.bytes_read)
            if outcome.cache_counter:
                self._cache_counters[outcome.cache_counter].inc()
            if outcome.decoded is None:
                yield from self._failure(image, *outcome.failure)
                continue
            self._log_progress()
            decoded.append(self._decoded_image(split, image, outcome, quality))
        if decoded:
            yield decoded

    def _decoded_image(self, split: str, image: LabelledImage, outcome: _Outcome, quality: ImageQuality):
        if image.label == NO_LABEL:
            self._audited_only.inc()
            return DecodedImage(
                image.id, None, split, b"", outcome.content_hash, image.group, b"", quality, path=image.path
            )
        self._decoded.inc()
        return DecodedImage(
            image.id,
            image.label,
            split,
            outcome.decoded.pixels.tobytes(),
            outcome.content_hash,
            image.group,
            image.vector if image.vector_location is None else b"",  # Else: its digest.
            quality,
            vector_location=image.vector_location,
            path=image.path,
        )

    def _read_and_decode(self, image: LabelledImage) -> _Outcome:
        """On a pool thread: the image's file read, hashed and decoded (or found in the cache)."""
        if reason := paths.not_a_file_reason(image.path):  # A FIFO would block the read forever.
            return _Outcome(None, failure=(reason, ""))
        try:
            with FileSystems.open(image.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                data = f.read()
        except Exception as e:  # Any filesystem's error: the image is lost, not the job.
            return _Outcome(None, failure=("read_error", repr(e)))
        content_sha256 = hashlib.sha256(data).digest()
        measured = {"content_hash": int.from_bytes(content_sha256, "big"), "bytes_read": len(data)}
        lookup = ""
        try:
            decoded = None
            if self._cache is not None:
                lookup, decoded = self._lookup(content_sha256)
            if decoded is None:
                decoded = self._decode(data)
                if self._cache is not None:
                    self._cache.put(content_sha256, decoded)
            return _Outcome(decoded, cache_counter=lookup, **measured)
        except UndecodableImage as e:
            failure = (e.reason, e.detail)
        except Exception as e:  # An unexpected decoder failure is one bad image, never a crashed job.
            failure = ("undecodable", f"{type(e).__name__}: {e}")
        return _Outcome(None, cache_counter=lookup, failure=failure, **measured)

    def _lookup(self, content_sha256: bytes) -> tuple[str, CachedPixels | None]:
        """(the counter this lookup counts in, the cached pixels or None): a sound entry is a
        hit, else a miss; a corrupt one is never trusted (decoded again, the entry rewritten)."""
        try:
            cached = self._cache.get(content_sha256)
        except CorruptEntry as e:
            logging.warning(
                "decode cache: entry %s is corrupt (%s); decoding again", self._cache.path(content_sha256), e
            )
            return "cache_corrupt", None
        if cached is None:
            return "cache_misses", None
        # The entry passed an earlier run's limits; this run's may differ.
        check_dimensions(*cached.original_size, max_pixels=self._max_pixels, min_side=self._min_side)
        return "cache_hits", cached

    def _decode(self, data: bytes) -> CachedPixels:
        return decode_with_size(
            data, size=self._size, color_mode=self._color_mode, max_pixels=self._max_pixels, min_side=self._min_side
        )

    def _log_progress(self) -> None:
        self._count += 1
        if self._count % self._LOG_EVERY == 0:
            rate = self._count / max(time.monotonic() - self._started, 1e-9)
            logging.info("decoded %d images in this worker (%.1f images/s)", self._count, rate)

    def _failure(self, image: LabelledImage, reason: str, detail: str) -> Iterator:
        """A decode dead letter; none for an unlabelled image, which has its ``unlabelled`` one."""
        if image.label == NO_LABEL:
            self._not_audited.inc()
            logging.warning("unlabelled image %s not audited: %s %s", image.path, reason, detail)
            return
        self._failed.inc()
        yield dead_letter(path=image.path, image_id=image.id, stage="decode", reason=reason, detail=detail)


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


class _BoundaryIds(beam.DoFn):
    """[DecodedImage] -> ((split, label), id) of each image in its class's cutoff bucket."""

    def __init__(self, seed: int):
        self._seed = seed

    def process(self, batch: list[DecodedImage], histograms: dict) -> Iterator[tuple[tuple[str, int], str]]:
        for image in batch:
            cutoff, _ = balance_plan(histograms, image.split, image.label)
            if _bucket(balance_priority(image.id, self._seed)) == cutoff:
                yield (image.split, image.label), image.id


def _ranked_survivors(element: tuple[tuple[str, int], Iterable[str]], histograms: dict, seed: int) -> list[str]:
    """((split, label), [ids in the cutoff bucket]) -> the wanted number of lowest-priority ids."""
    (split, label), ids = element
    _, wanted = balance_plan(histograms, split, label)
    return sorted(ids, key=lambda image_id: (balance_priority(image_id, seed), image_id))[:wanted]


class _KeepBalanced(beam.DoFn):
    """[DecodedImage] -> the batch's images that the balance keeps (a batch, none when empty),
    and a dead letter for each one it drops."""

    def __init__(self, seed: int):
        self._seed = seed
        self._dropped = Metrics.counter(NAMESPACE, "balanced_out")

    def process(self, batch: list[DecodedImage], histograms: dict, survivors: dict) -> Iterator:
        kept = []
        for image in batch:
            cutoff, _ = balance_plan(histograms, image.split, image.label)
            bucket = _bucket(balance_priority(image.id, self._seed))
            if bucket < cutoff or (bucket == cutoff and image.id in survivors):
                kept.append(image)
            else:
                self._dropped.inc()
                yield dead_letter(image_id=image.id, stage="balance", reason=BALANCED_OUT, detail=image.split)
        if kept:
            yield kept


class DownsampleToSmallestClass(beam.PTransform):
    """Keeps, per split, as many images of each class as the smallest class has.

    Survivors are the images with the lowest hash of (seed, id): deterministic, and
    computed on the workers from per-class histograms (a side input of 1024 counts per
    split and class) and the ids ranked within each class's cutoff bucket (a side input of
    the few survivors there), so neither the driver nor any worker ever holds the ids of a class.
    Input: batches [DecodedImage]. Output: ``kept`` the same batches with the images kept (each
    a part of one input batch: its staging file stays whole), ``dead_letter`` records with
    reason ``balanced_out``.
    """

    def __init__(self, seed: int):
        super().__init__()
        self._seed = seed

    def expand(self, batches):
        seed = self._seed
        histograms = (
            batches
            | "KeyBucket"
            >> beam.FlatMap(
                lambda batch: [((im.split, im.label), _bucket(balance_priority(im.id, seed))) for im in batch]
            )
            | "Histogram" >> beam.CombinePerKey(_HistogramFn())
            # ((split, label), [count per bucket])
        )
        side = beam.pvalue.AsDict(histograms)
        survivors = (
            batches
            | "BoundaryIds" >> beam.ParDo(_BoundaryIds(seed), side)
            # ((split, label), id): the images of each class's cutoff bucket, ~1/1024 of its images
            | "GroupBoundary" >> beam.GroupByKey()
            | "Rank" >> beam.FlatMap(_ranked_survivors, side, seed)
            | "KeySurvivors" >> beam.Map(lambda image_id: (image_id, True))
            # (id, True): the cutoff buckets' survivors
        )
        kept = batches | "Keep" >> beam.ParDo(_KeepBalanced(seed), side, beam.pvalue.AsDict(survivors)).with_outputs(
            DEAD_LETTER, main="kept"
        )
        # kept: [DecodedImage], a part of one input batch
        return {"kept": kept.kept, DEAD_LETTER: kept[DEAD_LETTER]}
