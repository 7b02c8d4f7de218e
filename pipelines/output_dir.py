"""The output directory on the driver: claim it, find its shards, read and write its files, clean up.

The Beam writers (``pipelines.sinks``) write into it on the workers; this module is what the
driver does before and after the pipeline runs, on any Beam filesystem.
"""

from __future__ import annotations

import gzip
import json
import os
import posixpath
import shutil
from collections.abc import Sequence
from typing import Any

from apache_beam.io.filesystems import CompressionTypes, FileSystems

from pipelines import atomic, features, locks
from pipelines.cli import usage_error
from pipelines.paths import is_remote

# Beam's file sinks write to temp files and rename them when complete, so a failed run
# never leaves a shard that looks complete; the manifest is written last.
STATS_FILE = "_stats.json"  # Run statistics, read by the driver into the manifest, then removed.
SHARDS_TEMP_DIR = ".tmp_shards"  # Shards being written; removed by the driver at the end.
TFT_TEMP_DIR = ".tft_tmp"  # tf.Transform's working files; removed by the driver at the end.
STAGING_DIR = ".staging"  # Decoded pixels waiting for the writer (pipelines.staging); removed at the end.


MARKER_FILE = ".facepipe_output"  # Written first by every run: this directory is facepipe's.
BEAM_TEMP_PREFIX = "beam-temp-"  # Beam's WriteToText temp directories.
RUN_FILES = (STATS_FILE, SHARDS_TEMP_DIR, TFT_TEMP_DIR, STAGING_DIR)
# Everything a run writes at the top of its output directory (shards are matched by name):
# --overwrite deletes these and nothing else.
OWN_NAMES = frozenset(
    {
        MARKER_FILE,
        features.MANIFEST_FILE,
        features.MANIFEST_FILE + ".tmp",  # The temporary manifest of runs before pipelines/atomic.py.
        features.TRANSFORM_DIR,
        features.DEAD_LETTER_DIR,
        features.QUALITY_DIR,
        features.EXAMPLES_DIR,
        features.CROISSANT_FILE,
        features.CROISSANT_FILE + ".tmp",
    }
    | set(RUN_FILES)
)


def existing_outputs(output_dir: str) -> list[str]:
    """What is already in ``output_dir`` (files and, locally, folders): non-empty means taken."""
    if not is_remote(output_dir):
        return sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    return [m.path for m in FileSystems.match([FileSystems.join(output_dir, "**")])[0].metadata_list]


def _top_name(output_dir: str, path: str) -> str:
    """The first component of ``path`` below ``output_dir`` (a name from existing_outputs)."""
    return path[len(output_dir.rstrip("/")) :].lstrip("/").split("/", 1)[0] if is_remote(output_dir) else path


def is_own(name: str) -> bool:
    """Whether a top-level name in an output directory is one facepipe writes."""
    shard = any(name.startswith(f"{split}-") and name.endswith(features.SHARD_SUFFIX) for split in features.SPLITS)
    temporary = atomic.is_temporary(name, of=features.MANIFEST_FILE)
    return shard or temporary or name in OWN_NAMES or name.startswith(BEAM_TEMP_PREFIX)


def _normalized(path: str) -> str:
    if is_remote(path):
        return path.rstrip("/")
    return os.path.realpath(path)


def _fixed_part(path_or_glob: str) -> str:
    """A glob's directory before its first wildcard (the path itself when there is none)."""
    parts = path_or_glob.split("/")
    for index, part in enumerate(parts):
        if any(ch in part for ch in "*?["):
            return "/".join(parts[:index]) or "/"
    return path_or_glob


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def overlaps(path: str, other: str) -> bool:
    """Whether two paths (or globs, standing for their folders) are one inside the other or equal."""
    a, b = _normalized(_fixed_part(path)), _normalized(_fixed_part(other))
    return _within(a, b) or _within(b, a)


def refusal(output_dir: str, inputs: Sequence[str], *, overwrite: bool) -> str | None:
    """Why ``output_dir`` must not be used (overlaps an input, is someone else's, is taken), or None.

    ``inputs`` are the image globs and the CSVs; a glob stands for its directory.
    """
    for given in inputs:
        if overlaps(output_dir, given):
            return f"--output {output_dir} overlaps the input {given}: choose an output outside the inputs"
    existing = [path for path in existing_outputs(output_dir) if _top_name(output_dir, path) != locks.LOCK_FILE]
    if not existing:
        return None
    names = {_top_name(output_dir, path) for path in existing}
    if MARKER_FILE not in names and features.MANIFEST_FILE not in names:
        return (
            f"--output {output_dir} is not empty and was not written by facepipe; "
            "choose a new or empty directory (--overwrite only replaces facepipe's own outputs)"
        )
    if not overwrite:
        return f"output directory {output_dir} is not empty; pass --overwrite to replace it"
    return None


def check(output_dir: str, inputs: Sequence[str], *, overwrite: bool) -> None:
    """A usage error when ``output_dir`` must not be used (see :func:`refusal`)."""
    reason = refusal(output_dir, inputs, overwrite=overwrite)
    if reason:
        usage_error(reason)


def prepare(output_dir: str, inputs: Sequence[str], *, overwrite: bool) -> None:
    """Claims ``output_dir`` (its lock held, pipelines/locks.py): refuses it (usage error) or
    removes facepipe's earlier outputs from it, and writes the marker that says it is facepipe's."""
    check(output_dir, inputs, overwrite=overwrite)
    own = [path for path in existing_outputs(output_dir) if is_own(_top_name(output_dir, path))]
    if is_remote(output_dir):
        if own:
            FileSystems.delete(own)
    else:
        os.makedirs(output_dir, exist_ok=True)
        for name in own:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    with FileSystems.create(FileSystems.join(output_dir, MARKER_FILE)) as f:
        f.write(b"written by facepipe (python -m pipelines.preprocess); --overwrite may replace this directory\n")


def shard_names(output_dir: str, split: str) -> list[str]:
    """File names (not paths) of a split's shards, sorted; empty when there are none."""
    pattern = features.shard_pattern(output_dir, split)
    matched = FileSystems.match([pattern])[0].metadata_list
    return sorted(posixpath.basename(m.path) for m in matched)


def write_empty_shard(output_dir: str, split: str) -> None:
    """An empty ``<split>-00000-of-00001`` file, so that an empty split still has a shard."""
    path = features.shard_prefix(output_dir, split) + "-00000-of-00001" + features.SHARD_SUFFIX
    # UNCOMPRESSED: FileSystems would otherwise gzip the ".gz" file a second time.
    with (
        FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f,
        gzip.GzipFile(fileobj=f, mode="wb"),
    ):
        pass


def stats_path(output_dir: str) -> str:
    """Where :class:`pipelines.sinks.WriteRunStatistics` writes the run statistics."""
    return FileSystems.join(output_dir, STATS_FILE)


def read_run_statistics(output_dir: str) -> dict[str, Any]:
    """Reads back what :class:`pipelines.sinks.WriteRunStatistics` wrote."""
    with FileSystems.open(stats_path(output_dir)) as f:
        return json.loads(f.read().decode("utf-8"))


def write_json(path: str, value: Any) -> None:
    """Writes JSON to any Beam filesystem, whole or not at all (pipelines/atomic.py)."""
    atomic.write(path, json.dumps(value, indent=2, sort_keys=True))


# Folders that Beam's WriteToText writes into (with its beam-temp-* folders beside the files).
_TEXT_DIRS = (features.DEAD_LETTER_DIR, features.QUALITY_DIR, features.EXAMPLES_DIR)


def _is_run_file(relative: str) -> bool:
    """Statistics, temp directories, and Beam's temp folders (also those in dead_letter/, quality/)."""
    top, _, rest = relative.partition("/")
    if top in _TEXT_DIRS:
        return rest.startswith(BEAM_TEMP_PREFIX)
    return top in RUN_FILES or top.startswith(BEAM_TEMP_PREFIX)


def remove_run_files(output_dir: str) -> None:
    """Removes the run statistics and the temp directories (after the manifest, or a failure)."""
    if is_remote(output_dir):
        base = output_dir.rstrip("/") + "/"
        leftovers = [path for path in existing_outputs(output_dir) if _is_run_file(path[len(base) :])]
        if leftovers:
            FileSystems.delete(leftovers)
        return
    for folder in ("", *_TEXT_DIRS):
        directory = os.path.join(output_dir, folder)
        for name in os.listdir(directory) if os.path.isdir(directory) else []:
            if _is_run_file(posixpath.join(folder, name) if folder else name):
                path = os.path.join(directory, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
