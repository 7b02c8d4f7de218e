"""The quality audit in Beam: :class:`AuditQuality` wires the measures, outliers, face space
and duplicates (plain numpy/cv2 functions, tested eagerly) into a pipeline.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import threadpoolctl
from apache_beam.metrics import Metrics
from apache_beam.transforms.stats import ApproximateQuantilesCombineFn

from pipelines.quality.duplicates import (
    Member,
    alike_pair,
    bands,
    bucket_entry,
    bucket_pairs,
    duplicate_groups,
    id_order,
)
from pipelines.quality.face_space import (
    ATYPICALITY_BATCH,
    FaceSpace,
    PatchMoments,
    face_space_fold,
    with_atypicality,
)
from pipelines.quality.outliers import outlier_reasons, robust_values, robust_z
from pipelines.quality.stash import AuditedImage, Stashed, StashPixels, read_stashed
from pipelines.staging import pack_fields, unpack_fields

NAMESPACE = "facepipe.quality"


class _FlagOutliers(beam.DoFn):
    """AuditedImage -> one JSON-able line with its statistics, z-scores and flags."""

    def __init__(self, threshold: float):
        self._threshold = threshold
        self._flagged = Metrics.counter(NAMESPACE, "outliers")

    def process(self, image, medians: dict, mads: dict) -> Iterator[dict[str, Any]]:
        quality = image.quality
        z = robust_z(robust_values(quality), medians, mads)
        flags = outlier_reasons(z, self._threshold)
        if flags:
            self._flagged.inc()
        stats = {**quality._asdict(), "phash": f"{quality.phash:016x}"}
        del stats["thumbnail"], stats["patches"]  # Pixels, not statistics.
        if math.isnan(quality.atypicality):  # No other fold to measure it against: unknown, not NaN in JSON.
            del stats["atypicality"]
        yield {
            "id": image.id,
            "split": image.split,
            "label": image.label,
            "content_hash": f"{image.content_hash:064x}",
            "stats": stats,
            "z": {name: round(score, 3) for name, score in z.items()},
            "flags": flags,
        }


def one_blas_thread() -> None:
    """BLAS on one thread in this worker process from now on.

    The audit's products are small (16 places of 256x64 by 64x64) and run beside the decode
    threads, which hold the cores: OpenBLAS's own threads then wait on each other, and a block
    of 256 images took 540 ms instead of 24 ms (2 cores, loaded machine, 2026-12-07).
    """
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")


class _Atypicality(beam.DoFn):
    """[AuditedImage] -> each with its quality's atypicality (:func:`with_atypicality`), its
    patches read back from the stash for it."""

    def __init__(self, stash_dir: str):
        self._stash_dir = stash_dir

    def setup(self) -> None:
        one_blas_thread()

    def process(self, images: list[AuditedImage], spaces: Mapping[int, FaceSpace | None]) -> list[AuditedImage]:
        pixels = read_stashed(self._stash_dir, ((im.id, im.stashed) for im in images))
        with_patches = [im._replace(quality=im.quality._replace(patches=pixels[im.stashed][1])) for im in images]
        return [im._replace(quality=im.quality._replace(patches=b"")) for im in with_atypicality(with_patches, spaces)]


class _AlikeThumbnails(beam.DoFn):
    """[((lower id, higher id), [packed end])] (candidate pairs, their ends as :func:`_packed_end`
    made them) -> (Member, Member) for each pair whose thumbnails, read back from the stash, are
    alike (:func:`alike_pair`)."""

    def __init__(self, stash_dir: str, min_similarity: float):
        self._stash_dir = stash_dir
        self._min_similarity = min_similarity

    def process(self, pairs: list[tuple[tuple[str, str], Iterable[bytes]]]) -> Iterator[tuple[Member, Member]]:
        ends = [[_unpacked_end(end) for end in kv[1]] for kv in pairs]
        pixels = read_stashed(self._stash_dir, ((m.id, stashed) for pair in ends for m, stashed in pair))
        for pair in ends:
            yield from alike_pair([(m, pixels[stashed][0]) for m, stashed in pair], self._min_similarity)


class _BucketFn(beam.CombineFn):
    """An LSH bucket's :func:`bucket_entry` bytes -> them all in one bytes object. A local runner
    holds a grouping's values as Python objects, and the buckets hold every image once per band:
    combined per bundle, a bucket is one object per bundle, not one per image (~50 bytes each)."""

    def create_accumulator(self) -> list[bytes]:
        return []

    def add_input(self, entries: list[bytes], entry: bytes) -> list[bytes]:
        entries.append(entry)
        return entries

    def merge_accumulators(self, accumulators: Iterable[list[bytes]]) -> list[bytes]:
        return [b"".join(itertools.chain.from_iterable(accumulators))]

    def compact(self, entries: list[bytes]) -> list[bytes]:
        return [b"".join(entries)]

    def extract_output(self, entries: list[bytes]) -> bytes:
        return b"".join(entries)


class _FaceSpaceFn(beam.CombineFn):
    """Patch thumbnails -> their FaceSpace (None for fewer than MIN_FOLD_IMAGES), by PatchMoments."""

    def setup(self) -> None:
        one_blas_thread()

    def create_accumulator(self) -> PatchMoments:
        return PatchMoments()

    def add_input(self, moments: PatchMoments, thumbnail: bytes) -> PatchMoments:
        return moments.add(thumbnail)

    def merge_accumulators(self, accumulators: Iterable[PatchMoments]) -> PatchMoments:
        merged = PatchMoments()
        for moments in accumulators:
            merged.merge(moments)
        return merged

    def extract_output(self, moments: PatchMoments) -> FaceSpace | None:
        return moments.face_space()


# The medians' rank error bound, as a share of the images: exact for data sets of up to ~15 000
# images, within 0.1% of the ranks beyond. Beam's default for 3 quantiles is 1/3, which let a
# "median" of 2000 values move with the order the elements came in, and the flags with it.
MEDIAN_EPSILON = 1e-3


class MedianPerKey(beam.PTransform):
    """(name, x) -> (name, median of x) by Beam's approximate quantiles: a bounded sketch per
    key (MEDIAN_EPSILON), never every value on one worker."""

    def expand(self, values):
        quantiles = ApproximateQuantilesCombineFn.create(num_quantiles=3, epsilon=MEDIAN_EPSILON)
        return (
            values
            | "Quantiles" >> beam.CombinePerKey(quantiles)
            # (name, [min, median, max])
            | "Median" >> beam.Map(lambda kv: (kv[0], kv[1][1]))
        )


class AuditQuality(beam.PTransform):
    """DecodedImage (with ``quality``) -> ``images`` (a line per image), ``groups`` (duplicate
    groups) and ``stats`` ((key, value) pairs for the run statistics).

    Outliers: robust z-scores per data set, median and MAD (median of |x - median|) of each
    statistic by approximate quantiles, atypicality among them once the face space of each
    fold's thumbnails is combined. Duplicates: LSH on the perceptual hash's bands (GroupByKey on
    (band, value), pairs within ``distance`` bits in a bucket, then their two thumbnails
    compared at ``similarity``) plus exact copies by content hash; the resulting edges are few
    (a pair per duplicate, not per image), so one global combine builds the groups from them.

    What waits at its stage boundaries is small: the thumbnails and patches wait in files in
    ``stash_dir`` (pipelines/quality/stash.py), the LSH buckets hold ids and hashes.
    """

    def __init__(self, *, stash_dir: str, threshold: float, distance: int, similarity: float, examples: int = 5):
        super().__init__()
        self._stash_dir = stash_dir
        self._threshold = threshold
        self._distance = distance
        self._similarity = similarity
        self._examples = examples

    def expand(self, images):
        distance = self._distance
        spaces = beam.pvalue.AsDict(
            images
            | "KeyFolds" >> beam.Map(lambda im: (face_space_fold(im.content_hash), im.quality.patches))
            | "FaceSpaces" >> beam.CombinePerKey(_FaceSpaceFn())
            # (fold, FaceSpace): 16 64x64 projections per fold; none for a fold too small
        )
        audited = (
            images
            | "StashPixels" >> beam.ParDo(StashPixels(self._stash_dir))
            # AuditedImage: the thumbnail and patches in a stash file, ``stashed`` says where
            # Whole blocks: a call costs one padded block of ATYPICALITY_BATCH rows per fold
            # however few images it has (Beam's adaptive sizes from 16 up paid it per 16-64).
            | "BatchForAtypicality"
            >> beam.BatchElements(min_batch_size=ATYPICALITY_BATCH, max_batch_size=ATYPICALITY_BATCH)
            # [AuditedImage]: ATYPICALITY_BATCH (fewer at a bundle's end), so that the atypicality is one numpy pass per batch
            | "Atypicality" >> beam.ParDo(_Atypicality(self._stash_dir), spaces)
        )
        # audited: AuditedImage, its quality's atypicality set. The three steps that wait for
        # the whole data set (the medians, the MADs, the candidate partners) read these records
        # themselves: a local runner then holds them once (the consumers of one PCollection
        # share its buffer), not a record of each step's own beside them.
        values = audited | "Values" >> beam.FlatMap(lambda im: robust_values(im.quality).items())
        medians = beam.pvalue.AsDict(values | "ValueMedians" >> MedianPerKey())
        deviations = audited | "Deviation" >> beam.FlatMap(_deviations, medians)
        mads = beam.pvalue.AsDict(deviations | "DeviationMedians" >> MedianPerKey())
        lines = audited | "FlagOutliers" >> beam.ParDo(_FlagOutliers(self._threshold), medians, mads)

        # The LSH buckets hold each image once per band (distance + 1 times): its hash and id
        # in one bytes object; the few candidate pairs they find read their two thumbnails from the stash after.
        partners = beam.pvalue.AsDict(
            audited
            | "KeyBands"
            >> beam.FlatMap(
                lambda im: ((band, bucket_entry(im.id, im.quality.phash)) for band in bands(im.quality.phash, distance))
            )
            | "GroupBands" >> beam.CombinePerKey(_BucketFn())
            # ((band index, band value), the bucket's entries (bucket_entry: hash and id) in one bytes)
            | "CloseHashes" >> beam.FlatMap(lambda kv: bucket_pairs(kv[1], distance))
            # (id, id) within ``distance`` bits, once per bucket they share
            | "BothEnds" >> beam.FlatMap(lambda pair: [pair, pair[::-1]])
            | "PartnersById" >> beam.GroupByKey()
            # (id, [ids of its candidate partners]): a dict side input, read once per bundle (a
            # multimap's lookups are one runner request per image)
        )
        near = (
            audited
            | "KeyByCandidatePair" >> beam.FlatMap(_candidate_pair_ends, partners)
            # ((lower id, higher id), the image's Member and Stashed packed in one bytes object)
            # per candidate pair the image is in
            | "GroupCandidatePairs" >> beam.GroupByKey()
            | "BatchCandidatePairs" >> beam.BatchElements(max_batch_size=ATYPICALITY_BATCH)
            # [((lower id, higher id), [packed end])]: one read of the stash per file and batch
            | "AlikeThumbnails" >> beam.ParDo(_AlikeThumbnails(self._stash_dir, self._similarity))
        )
        exact = (
            audited
            | "KeyContent" >> beam.Map(lambda im: (im.content_hash, _packed_end(im)))
            | "GroupContent" >> beam.GroupByKey()
            # (content hash, [packed end]): a chain of edges connects every copy
            | "ExactPairs" >> beam.FlatMap(lambda kv: _chain(_unpacked_end(end)[0] for end in kv[1]))
        )
        groups = (
            (near, exact)
            | "FlattenEdges" >> beam.Flatten()
            | "Edges" >> beam.combiners.ToList()
            | "Groups" >> beam.FlatMap(duplicate_groups)
        )

        keys = [
            lines | "OutlierKeys" >> beam.FlatMap(lambda line: [f"quality/outliers/{f}" for f in line["flags"]]),
            lines
            | "Flagged" >> beam.Filter(lambda line: line["flags"])
            | "FlaggedKey" >> beam.Map(lambda _: "quality/flagged_images"),
            groups | "GroupKeys" >> beam.FlatMap(_group_keys),
        ]
        counts = keys | "FlattenKeys" >> beam.Flatten() | "Count" >> beam.combiners.Count.PerElement()
        leaking = (
            groups
            | "Leaking" >> beam.Filter(lambda g: g["leakage"])
            | "FirstLeaking" >> beam.combiners.Top.Smallest(self._examples, key=lambda g: id_order(g["members"][0]))
            | "LeakingKey" >> beam.Map(lambda gs: ("quality/leakage_groups", [_brief(g) for g in gs]))
        )
        stats = (counts, leaking) | "FlattenStats" >> beam.Flatten()
        return {"images": lines, "groups": groups, "stats": stats}


def _deviations(image: AuditedImage, medians: Mapping[str, float]) -> Iterator[tuple[str, float]]:
    """(statistic, |value - its median|) of each of the image's robust values."""
    for name, value in robust_values(image.quality).items():
        yield name, abs(value - medians[name])


# An image as the duplicate groupings hold it (a candidate pair's end, a copy by content):
# content hash, phash, the stash record's offset and length; then its id, split and stash file
# name as pack_fields packs them.
_END_HEAD = struct.Struct(">32sQQI")


def _packed_end(image: AuditedImage) -> bytes:
    """The image's Member and Stashed in one bytes object: a local runner holds a grouping's
    values as Python objects, and a (Member, Stashed) costs twice this, a Member alone 1.5x."""
    head = _END_HEAD.pack(
        image.content_hash.to_bytes(32, "big"), image.quality.phash, image.stashed.offset, image.stashed.length
    )
    return head + pack_fields(*(text.encode("utf-8") for text in (image.id, image.split, image.stashed.name)))


def _unpacked_end(packed: bytes) -> tuple[Member, Stashed]:
    content_hash, phash, offset, length = _END_HEAD.unpack_from(packed)
    image_id, split, name = (
        text.decode("utf-8") for text in unpack_fields(packed[_END_HEAD.size :], 3, "packed candidate end")
    )
    return Member(image_id, split, int.from_bytes(content_hash, "big"), phash), Stashed(name, offset, length)


def _candidate_pair_ends(
    image: AuditedImage, partners: Mapping[str, Sequence[str]]
) -> Iterator[tuple[tuple[str, str], bytes]]:
    end = _packed_end(image)
    for partner in set(partners.get(image.id, ())):
        yield tuple(sorted((image.id, partner), key=id_order)), end


def _chain(members: Iterable[Member]) -> Iterator[tuple[Member, Member]]:
    ordered = sorted(set(members), key=lambda m: id_order(m.id))
    return itertools.pairwise(ordered)


def _group_keys(group: Mapping[str, Any]) -> list[str]:
    keys = [f"quality/groups/{group['kind']}"] + ["quality/duplicate_images"] * len(group["members"])
    return [*keys, "quality/leakage"] if group["leakage"] else keys


def _brief(group: Mapping[str, Any]) -> dict[str, Sequence[str]]:
    return {"members": group["members"], "splits": group["member_splits"], "kind": group["kind"]}
