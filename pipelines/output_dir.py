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
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipelines import features
from pipelines.paths import is_remote

# Beam's file sinks write to temp files and rename them when complete, so a failed run
# never leaves a shard that looks complete; the manifest is written last.
STATS_FILE = "_stats.json"  # Run statistics, read by the driver into the manifest, then removed.
SHARDS_TEMP_DIR = ".tmp_shards"  # Shards being written; removed by the driver at the end.
TFT_TEMP_DIR = ".tft_tmp"  # tf.Transform's working files; removed by the driver at the end.


def existing_outputs(output_dir: str) -> list[str]:
    """What is already in ``output_dir`` (files and, locally, folders): non-empty means taken."""
    if not is_remote(output_dir):
        return sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    return [m.path for m in FileSystems.match([FileSystems.join(output_dir, "**")])[0].metadata_list]


def prepare(output_dir: str, *, overwrite: bool) -> None:
    """Refuses a non-empty output directory unless ``overwrite``, then empties it."""
    existing = existing_outputs(output_dir)
    if existing and not overwrite:
        raise SystemExit(f"error: output directory {output_dir} is not empty; pass --overwrite to replace it")
    if is_remote(output_dir):
        FileSystems.delete(existing)
    else:
        shutil.rmtree(output_dir, ignore_errors=True)
        os.makedirs(output_dir)


def shard_names(output_dir: str, split: str) -> list[str]:
    """File names (not paths) of a split's shards, sorted; empty when there are none."""
    pattern = features.shard_pattern(output_dir, split)
    matched = FileSystems.match([pattern])[0].metadata_list
    return sorted(posixpath.basename(m.path) for m in matched)


def write_empty_shard(output_dir: str, split: str) -> None:
    """An empty ``<split>-00000-of-00001`` file, so that an empty split still has a shard."""
    path = features.shard_prefix(output_dir, split) + "-00000-of-00001" + features.SHARD_SUFFIX
    with FileSystems.create(path) as f, gzip.GzipFile(fileobj=f, mode="wb"):
        pass


def stats_path(output_dir: str) -> str:
    """Where :class:`pipelines.sinks.WriteRunStatistics` writes the run statistics."""
    return FileSystems.join(output_dir, STATS_FILE)


def read_run_statistics(output_dir: str) -> dict[str, Any]:
    """Reads back what :class:`pipelines.sinks.WriteRunStatistics` wrote."""
    with FileSystems.open(stats_path(output_dir)) as f:
        return json.loads(f.read().decode("utf-8"))


def write_json(path: str, value: Any) -> None:
    """Writes JSON to any Beam filesystem via a temp file and a rename."""
    temp = path + ".tmp"
    with FileSystems.create(temp) as f:
        f.write(json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))
    FileSystems.rename([temp], [path])


def remove_run_files(output_dir: str) -> None:
    """Removes the run statistics and the temp directories once the manifest is written."""
    FileSystems.delete([stats_path(output_dir)])
    for temp_dir in (TFT_TEMP_DIR, SHARDS_TEMP_DIR):
        if not is_remote(output_dir):
            shutil.rmtree(os.path.join(output_dir, temp_dir), ignore_errors=True)
            continue
        leftovers = FileSystems.match([FileSystems.join(output_dir, temp_dir, "**")])[0].metadata_list
        if leftovers:
            FileSystems.delete([m.path for m in leftovers])
