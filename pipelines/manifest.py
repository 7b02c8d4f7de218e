"""The manifest: what a finished run wrote, and proof that every input is accounted for.

Written by the driver after the pipeline has finished, and last, so that an output
directory with a ``manifest.json`` is complete, and one without it is not.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterator
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines import cache, features, output_dir
from pipelines.config import PreprocessConfig
from pipelines.dead_letters import BAD_INPUT_REASONS, UNUSABLE_REASONS

# Options that do not change the examples: where they are written, whether that was allowed,
# into how many files, when to give up, where decoded pixels are cached and by how many threads,
# how the data set is described and which named layout (--dataset) found the files.
# Every other option is part of the fingerprint.
_NOT_DATA_OPTIONS = (
    "output_dir",
    "overwrite",
    "num_shards",
    "max_bad_fraction",
    "cache_dir",
    "outlier_threshold",
    "strict",
    "decode_threads",
    "card",
    "dataset",
)
# Where the inputs are: not part of ``data``, so that a data set copied elsewhere (local to
# gs://, another machine) keeps its fingerprint. The CSVs enter by role, name and content.
_LOCATION_OPTIONS = ("image_globs", "labels_csv", "overrides_csv", "exclude_csv")
_CHUNK_BYTES = 1 << 20


class PipelineError(RuntimeError):
    """The run finished but its output must not be used (too much bad input, no images...)."""


def _library_versions() -> dict[str, str]:
    import apache_beam
    import cv2
    import numpy
    import tensorflow
    import tensorflow_transform

    return {
        "apache_beam": apache_beam.__version__,
        "tensorflow": tensorflow.__version__,
        "tensorflow_transform": tensorflow_transform.__version__,
        "opencv": cv2.__version__,
        "numpy": numpy.__version__,
    }


def _nested_counts(stats: dict[str, Any], prefix: str, classes: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """``{prefix}/{split}/{label}`` counters -> {split: {label: n}} with every class present."""
    nested = {split: {str(label): 0 for label in range(len(classes))} for split in features.SPLITS}
    for key, value in stats.items():
        if key.startswith(prefix + "/"):
            _, split, label = key.split("/")
            nested[split][label] = value
    return nested


def _by_reason(stats: dict[str, Any], prefix: str) -> dict[str, int]:
    return {key[len(prefix) + 1 :]: value for key, value in sorted(stats.items()) if key.startswith(prefix + "/")}


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes on any Beam filesystem, streamed in chunks."""
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def _fingerprint(config: PreprocessConfig, stats: dict[str, Any]) -> dict[str, Any]:
    """The run's data fingerprint: ``data`` changes whenever the images, the CSVs, an
    option that changes the examples or the decoders that compute the pixels do, and only then."""
    excluded = (*_NOT_DATA_OPTIONS, *_LOCATION_OPTIONS)
    options = {k: v for k, v in config.to_json().items() if k not in excluded}
    roles = {"labels": config.labels_csv, "overrides": config.overrides_csv, "exclusions": config.exclude_csv}
    csvs = {path: file_sha256(path) for paths in roles.values() for path in paths}
    parts = {
        "images": stats.get("fingerprint/file_hashes", ""),
        "content": stats.get("fingerprint/content_hashes", ""),
        "csvs": csvs,
        "options": _sha256_json(options),
        "decoder": cache.decoder_version(),
    }
    # The file name of a labels CSV names its split (train.csv), so it counts; its folder does not.
    csv_contents = {role: [[posixpath.basename(p), csvs[p]] for p in paths] for role, paths in roles.items()}
    data = {"content": parts["content"], "csvs": csv_contents, "options": parts["options"], "decoder": parts["decoder"]}
    return {
        "data": _sha256_json(data),
        **parts,
        "about": "data: SHA-256 of content, the CSVs' names and contents by role, options and decoder; not of where "
        "the inputs are. images: sum modulo 2**256 of SHA-256 over (path, size) of every listed image; "
        "content: the same over the bytes of every decoded image (independent of order; copies add up). "
        "csvs: SHA-256 of each labels, overrides and exclusions CSV. options: SHA-256 of the options that "
        "change the examples (not output, overwrite, num_shards, max_bad_fraction, cache_dir, decode_threads, strict, "
        "outlier_threshold, the card, the --dataset name, nor the input paths). "
        "decoder: the versions of what decodes and resizes the images (OpenCV, simplejpeg, the cache format).",
    }


def _quality(config: PreprocessConfig, stats: dict[str, Any]) -> dict[str, Any]:
    """The audit's counts: outliers per reason, duplicate groups, leakage across splits."""
    exact, near = stats.get("quality/groups/exact", 0), stats.get("quality/groups/near", 0)
    return {
        "dir": features.QUALITY_DIR,
        "outlier_threshold": config.outlier_threshold,
        "duplicate_distance": config.duplicate_distance,
        "duplicate_similarity": config.duplicate_similarity,
        "dedupe": config.dedupe,
        "flagged_images": stats.get("quality/flagged_images", 0),
        "outliers": _by_reason(stats, "quality/outliers"),
        "duplicate_groups": exact + near,
        "exact_groups": exact,
        "near_groups": near,
        "duplicate_images": stats.get("quality/duplicate_images", 0),
        # Duplicate groups with members in two splits: the test set holds copies of training images.
        "leakage": {"count": stats.get("quality/leakage", 0), "first_groups": stats.get("quality/leakage_groups", [])},
    }


# What to check for each reason an image has no usable label (dead_letters.UNUSABLE_REASONS).
_LABEL_FLAGS = "--labels_csv, --id_column, --label_column and --file_pattern"
_UNUSABLE_HINTS = {
    "too_small": "images smaller than --min_side {min_side} px: lower --min_side if they are usable",
    "bad_vector": "the vector cells of --numeric_columns",
    "conflicting_overrides": "--overrides_csv (an id with two different labels)",
    "duplicate_id": "--file_pattern (two files give one id)",
}


def _unusable_hint(unusable: dict[str, int], config: PreprocessConfig) -> str:
    """The error's advice: "check" the flags behind the reasons, the commonest reason first."""
    hints = []
    for reason in sorted(unusable, key=lambda r: (-unusable[r], r)):
        hint = _UNUSABLE_HINTS.get(reason, _LABEL_FLAGS).format(min_side=config.min_side)
        if hint not in hints:
            hints.append(hint)
    return "check " + "; ".join(hints)


def build_manifest(
    config: PreprocessConfig,
    stats: dict[str, Any],
    *,
    runner: str,
    elapsed_seconds: float,
    unlisted_files: int = 0,
    cache: dict[str, Any] | None = None,
    rejected_csv_rows: dict[str, dict[str, Any]] | None = None,
) -> dict:
    """The manifest for a finished run; raises PipelineError when its counts do not add up, or
    (``--strict``) when ``rejected_csv_rows`` (:func:`rejected_rows_by_csv`) holds any."""
    classes = config.classes
    rejected_csv_rows = rejected_csv_rows or {stage: {"count": 0, "first_ids": []} for stage in _ID_CSV_STAGES}
    rejected_total = sum(entry["count"] for entry in rejected_csv_rows.values())
    if config.strict and rejected_total:
        raise PipelineError(f"--strict: {_rejected_rows_line(rejected_csv_rows)}")
    written = _nested_counts(stats, "written", classes)
    before = _nested_counts(stats, "before_balance", classes)
    dead = _by_reason(stats, "dead_letter")
    listed = stats.get("images_listed", 0)
    total_written = sum(sum(per_class.values()) for per_class in written.values())
    if listed == 0:
        raise PipelineError(f"no images matched {list(config.image_globs)}")
    if listed != total_written + sum(dead.values()):
        raise PipelineError(
            f"accounting error: {listed} images listed but {total_written} written + "
            f"{sum(dead.values())} dead-lettered {dead}; this is a facepipe bug, please report it"
        )
    bad = sum(n for reason, n in dead.items() if reason in BAD_INPUT_REASONS)
    if bad > config.max_bad_fraction * listed:
        raise PipelineError(
            f"{bad} of {listed} images are unreadable ({bad / listed:.0%} > --max_bad_fraction "
            f"{config.max_bad_fraction}); see {FileSystems.join(config.output_dir, features.DEAD_LETTER_DIR)}"
        )
    unusable = {reason: n for reason, n in dead.items() if reason in UNUSABLE_REASONS}
    if sum(unusable.values()) > config.max_unusable_fraction * listed:
        raise PipelineError(
            f"{sum(unusable.values())} of {listed} images have no usable label {unusable} "
            f"(> --max_unusable_fraction {config.max_unusable_fraction}); {_unusable_hint(unusable, config)}"
        )
    if total_written == 0:
        raise PipelineError(f"no examples written: all {listed} images were dead-lettered {dead}")
    width, height = config.image_size
    options_json = config.to_json()
    return {
        "version": features.MANIFEST_VERSION,
        "output_dir": config.output_dir,
        "image": {"height": height, "width": width, "channels": config.channels, "color_mode": config.color_mode},
        "classes": list(classes),
        # The --dataset layout, if any: the trainer's defaults for that task (trainer/models.py).
        "dataset": config.dataset or None,
        "label_map": {name: index for index, name in enumerate(classes)},
        "counts": {
            "images_seen": listed,
            "written": written,
            "before_balance": before,
            "written_total": total_written,
            "dead_letter": dead,
            "dead_letter_total": sum(dead.values()),
            "rejected_rows": _by_reason(stats, "rejected_rows"),
            # Rows of --overrides_csv / --exclude that were not applied: count, first ids.
            "rejected_csv_rows": rejected_csv_rows,
            "overrides_applied": stats.get("overrides_applied", 0),
            "excluded": dead.get("excluded", 0),
            "non_image_files": stats.get("non_image_files", 0),
            # Files beside the images that the layout's pattern does not match (never read).
            "unlisted_files": unlisted_files,
        },
        "quality": _quality(config, stats),
        "shards": {split: output_dir.shard_names(config.output_dir, split) for split in features.SPLITS},
        "transform_dir": features.TRANSFORM_DIR,
        "feature_spec": features.feature_spec_description(config.vector_length),
        # The examples' float32 vector (features.VECTOR_KEY) and the CSV columns it holds, in order.
        "vector": {
            "key": features.VECTOR_KEY,
            "length": config.vector_length,
            "columns": list(config.vector_columns),
        },
        "fingerprint": _fingerprint(config, stats),
        # The decode cache's counters (--cache_dir): hits, misses, corrupt entries recomputed.
        "cache": cache or {"dir": None},
        "options": options_json,
        "runner": runner,
        "elapsed_seconds": round(elapsed_seconds, 2),
        "versions": _library_versions(),
    }


def finalize(
    config: PreprocessConfig,
    options: PipelineOptions,
    *,
    elapsed_seconds: float,
    unlisted_files: int = 0,
    cache: dict[str, Any] | None = None,
) -> dict:
    """Reads the run statistics, checks them, writes ``manifest.json`` last, cleans up."""
    stats = output_dir.read_run_statistics(config.output_dir)
    for split in features.SPLITS:
        if not output_dir.shard_names(config.output_dir, split):
            output_dir.write_empty_shard(config.output_dir, split)
    manifest = build_manifest(
        config,
        stats,
        runner=str(options.view_as(StandardOptions).runner),
        elapsed_seconds=elapsed_seconds,
        unlisted_files=unlisted_files,
        cache=cache,
        rejected_csv_rows=rejected_rows_by_csv(config.output_dir),
    )
    output_dir.write_json(FileSystems.join(config.output_dir, features.MANIFEST_FILE), manifest)
    output_dir.remove_run_files(config.output_dir)
    return manifest


# Rejected rows that usually mean a typo in a CSV the user wrote by hand (e.g. in the review).
_UNKNOWN_ID_REASONS = {"unknown_override_id": "overrides", "unknown_exclusion_id": "exclusions"}
_IDS_SHOWN = 5


_ID_CSV_STAGES = {"overrides": "--overrides_csv", "exclusions": "--exclude"}


def _dead_letter_records(output_dir: str) -> Iterator[dict[str, Any]]:
    """Every dead-letter record of the run, read line by line from dead_letter/."""
    pattern = FileSystems.join(output_dir, features.DEAD_LETTER_DIR, "*.jsonl")
    for metadata in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
        with FileSystems.open(metadata.path) as f:
            for line in f:
                yield json.loads(line)


def rejected_rows_by_csv(output_dir: str, limit: int = _IDS_SHOWN) -> dict[str, dict[str, Any]]:
    """{"overrides" | "exclusions": {"count", "first_ids"}}: the rows of those CSVs that were not
    applied (any reason), with the smallest ``limit`` ids (a row's text when it has no id)."""
    rejected = {stage: {"count": 0, "first_ids": []} for stage in _ID_CSV_STAGES}
    for record in _dead_letter_records(output_dir):
        entry = rejected.get(record["stage"])
        if entry is None or record["is_image"]:
            continue
        entry["count"] += 1
        shown = record["id"] or record["detail"][:40]
        entry["first_ids"] = sorted({*entry["first_ids"], shown})[:limit]
    return rejected


def _rejected_rows_line(rejected: dict[str, dict[str, Any]]) -> str:
    """One line: how many rows of each CSV were rejected, and the first ids."""
    parts = [
        f"{entry['count']} {_ID_CSV_STAGES[stage]} rows rejected ({', '.join(map(str, entry['first_ids']))}"
        f"{', ...' if entry['count'] > len(entry['first_ids']) else ''})"
        for stage, entry in rejected.items()
        if entry["count"]
    ]
    return (
        "; ".join(parts) + " (a label not in the classes, an id no image has, or an unreadable row); see dead_letter/"
    )


def first_ids(output_dir: str, reason: str, limit: int = _IDS_SHOWN) -> list[str]:
    """Up to ``limit`` ids of the dead letters with ``reason``, sorted, read line by line from dead_letter/."""
    ids: set[str] = set()
    for record in _dead_letter_records(output_dir):
        if record["reason"] == reason:
            # Keep the smallest ``limit``: bounded memory however many there are.
            ids = set(sorted(ids | {record["id"]})[:limit])
    return sorted(ids)


def _quality_lines(manifest: dict) -> list[str]:
    """The audit in the summary; leakage across splits loudly, with the first groups' ids."""
    quality = manifest.get("quality")
    if not quality:
        return []
    outliers = ", ".join(f"{reason} {n}" for reason, n in quality["outliers"].items()) or "none"
    where = FileSystems.join(manifest["output_dir"], quality["dir"])
    lines = [
        f"quality: {quality['flagged_images']} outlier images ({outliers}); {quality['duplicate_groups']} "
        f"duplicate groups ({quality['exact_groups']} exact, {quality['near_groups']} near, "
        f"{quality['duplicate_images']} images, --dedupe {quality['dedupe']}); see {where}"
    ]
    leakage = quality["leakage"]
    if leakage["count"]:
        shown = "; ".join(
            " ".join(f"{m}({s})" for m, s in zip(g["members"], g["splits"], strict=True))
            for g in leakage["first_groups"]
        )
        lines.append(f"LEAKAGE: {leakage['count']} duplicate groups have members in two splits: {shown}")
    return lines


def summary_table(manifest: dict) -> str:
    """A short human summary: counts per split and class, dead letters by reason, unknown ids, speed."""
    counts = manifest["counts"]
    classes = manifest["classes"]
    lines = [f"{'split':<12}" + "".join(f"{name:>14}" for name in classes) + f"{'total':>10}"]
    for split in features.SPLITS:
        per_class = counts["written"][split]
        row = [per_class[str(i)] for i in range(len(classes))]
        lines.append(f"{split:<12}" + "".join(f"{n:>14}" for n in row) + f"{sum(row):>10}")
    lines.append(
        f"images seen {counts['images_seen']}, written {counts['written_total']}, "
        f"dead letters {counts['dead_letter_total']}: "
        + (", ".join(f"{r} {n}" for r, n in sorted(counts["dead_letter"].items())) or "none")
    )
    written_classes = [
        name for i, name in enumerate(classes) if any(counts["written"][split][str(i)] for split in features.SPLITS)
    ]
    if len(written_classes) == 1:
        lines.append(
            f"WARNING: one class only: every example written is {written_classes[0]!r}; a classifier needs two "
            "(check the labels CSV, --label_column, --class_folders)"
        )
    for reason, what in _UNKNOWN_ID_REASONS.items():
        count = counts["rejected_rows"].get(reason, 0)
        if count:
            shown = ", ".join(first_ids(manifest["output_dir"], reason))
            more = ", ..." if count > _IDS_SHOWN else ""
            lines.append(f"{count} {what} name no listed image (a typo?): {shown}{more}")
    rejected = counts.get("rejected_csv_rows", {})
    if any(entry["count"] for entry in rejected.values()):
        lines.append(f"NOT APPLIED: {_rejected_rows_line(rejected)}; --strict makes this an error")
    if counts.get("unlisted_files"):
        lines.append(f"{counts['unlisted_files']} files beside the images do not match the layout's pattern: not read")
    cache = manifest.get("cache", {})
    if cache.get("dir"):
        lines.append(
            f"decode cache {cache['dir']}: {cache['cache_hits']} hits, {cache['cache_misses']} misses, "
            f"{cache['cache_corrupt']} corrupt entries recomputed"
        )
    lines.extend(_quality_lines(manifest))
    elapsed = manifest["elapsed_seconds"]
    lines.append(f"{elapsed:.1f} s, {counts['images_seen'] / max(elapsed, 1e-9):.1f} images/s on {manifest['runner']}")
    return "\n".join(lines)
