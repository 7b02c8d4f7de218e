"""The manifest: what a finished run wrote, and proof that every input is accounted for.

Written by the driver after the pipeline has finished, and last, so that an output
directory with a ``manifest.json`` is complete, and one without it is not.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines import features, output_dir
from pipelines.dead_letters import BAD_INPUT_REASONS, UNUSABLE_REASONS
from pipelines.options import PreprocessConfig


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
    return {key.split("/", 1)[1]: value for key, value in sorted(stats.items()) if key.startswith(prefix + "/")}


def build_manifest(
    config: PreprocessConfig, stats: dict[str, Any], *, runner: str, elapsed_seconds: float, unlisted_files: int = 0
) -> dict:
    """The manifest for a finished run; raises PipelineError when its counts do not add up."""
    classes = config.classes
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
            f"(> --max_unusable_fraction {config.max_unusable_fraction}); check --labels_csv, --id_column, "
            f"--label_column and --file_pattern"
        )
    if total_written == 0:
        raise PipelineError(f"no examples written: all {listed} images were dead-lettered {dead}")
    width, height = config.image_size
    options_json = config.to_json()
    # What decides the examples: not where they are written, nor whether that was allowed.
    content_options = {k: v for k, v in options_json.items() if k not in ("output_dir", "overwrite")}
    return {
        "version": features.MANIFEST_VERSION,
        "output_dir": config.output_dir,
        "image": {"height": height, "width": width, "channels": config.channels, "color_mode": config.color_mode},
        "classes": list(classes),
        "label_map": {name: index for index, name in enumerate(classes)},
        "counts": {
            "images_seen": listed,
            "written": written,
            "before_balance": before,
            "written_total": total_written,
            "dead_letter": dead,
            "dead_letter_total": sum(dead.values()),
            "rejected_rows": _by_reason(stats, "rejected_rows"),
            "overrides_applied": stats.get("overrides_applied", 0),
            "excluded": dead.get("excluded", 0),
            "non_image_files": stats.get("non_image_files", 0),
            # Files beside the images that the layout's pattern does not match (never read).
            "unlisted_files": unlisted_files,
        },
        "shards": {split: output_dir.shard_names(config.output_dir, split) for split in features.SPLITS},
        "transform_dir": features.TRANSFORM_DIR,
        "feature_spec": features.feature_spec_description(),
        "fingerprint": {
            "files": stats.get("fingerprint/file_hashes", ""),
            "contents": stats.get("fingerprint/content_hashes", ""),
            "options": hashlib.sha256(json.dumps(content_options, sort_keys=True).encode()).hexdigest(),
            "about": "XOR of SHA-256 over (path, size) of every listed image, and over the bytes of every "
            "decoded image; independent of order",
        },
        "options": options_json,
        "runner": runner,
        "elapsed_seconds": round(elapsed_seconds, 2),
        "versions": _library_versions(),
    }


def finalize(
    config: PreprocessConfig, options: PipelineOptions, *, elapsed_seconds: float, unlisted_files: int = 0
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
    )
    output_dir.write_json(FileSystems.join(config.output_dir, features.MANIFEST_FILE), manifest)
    output_dir.remove_run_files(config.output_dir)
    return manifest


def summary_table(manifest: dict) -> str:
    """A short human summary: counts per split and class, dead letters by reason, speed."""
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
    if counts.get("unlisted_files"):
        lines.append(f"{counts['unlisted_files']} files beside the images do not match the layout's pattern: not read")
    elapsed = manifest["elapsed_seconds"]
    lines.append(f"{elapsed:.1f} s, {counts['images_seen'] / max(elapsed, 1e-9):.1f} images/s on {manifest['runner']}")
    return "\n".join(lines)
