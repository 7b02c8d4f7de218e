"""The examples index: a row per written example, naming its source file and its shard."""

from __future__ import annotations

import csv
import glob
import hashlib
import os

import pytest
import tensorflow as tf

from pipelines import features
from pipelines.preprocess import run
from tests.image_files import write_glasses_like

LABELS = [0, 1, 1] * 10


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("index")
    images = write_glasses_like(tmp_path, LABELS)
    (images / "face-99.png").write_bytes(b"not an image")
    with open(tmp_path / "labels.csv", "a") as f:
        f.write("99,1\n")
    out = tmp_path / "out"
    run(
        [
            "--images", str(images), "--labels_csv", str(tmp_path / "labels.csv"), "--file_pattern", "face-{id}",
            "--output", str(out), "--image_size", "12,10", "--num_shards", "2",
        ]
    )  # fmt: skip
    return out


def _index(out) -> list[dict[str, str]]:
    rows = []
    for path in sorted(glob.glob(str(out / features.EXAMPLES_DIR / "*.csv"))):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames) == features.EXAMPLES_INDEX_COLUMNS
            rows += list(reader)
    return rows


def _shard_examples(out) -> dict[str, tuple[str, int, str, str]]:
    """{id: (split, label, group, shard file stem)} of every example in the shards."""
    spec = features.raw_feature_spec()
    found = {}
    for split in features.SPLITS:
        for path in glob.glob(features.shard_pattern(str(out), split)):
            for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                example = tf.io.parse_single_example(record, spec)
                shard = os.path.basename(path).removesuffix(features.SHARD_SUFFIX)
                found[example["id"].numpy().decode()] = (
                    split, int(example["label"]), example["group"].numpy().decode(), shard,
                )  # fmt: skip
    return found


def test_a_row_per_written_example_with_its_split_label_group_and_shard(output):
    rows = _index(output)
    shards = _shard_examples(output)
    assert len(rows) == len(shards) == len({row["id"] for row in rows})
    for row in rows:
        split, label, group, shard_file = shards[row["id"]]
        assert (row["split"], int(row["label"]), row["group"]) == (split, label, group)
        assert row["label_name"] == ["0", "1"][label]
        # A shard file is the row's shard, or one part of it (``-N``) when several bundles wrote it.
        assert shard_file == row["shard"] or shard_file.startswith(row["shard"] + "-")


def test_every_row_names_its_source_file_and_that_files_sha256(output):
    rows = _index(output)
    assert rows
    for row in rows:
        assert os.path.basename(row["path"]) == f"face-{row['id']}.png"
        with open(row["path"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == row["content_sha256"]


def test_dead_letters_are_not_in_the_index_and_the_reader_maps_ids_to_paths(output):
    paths = features.read_example_paths(str(output))
    assert "99" not in paths
    assert paths == {row["id"]: row["path"] for row in _index(output)}
    some = [row["id"] for row in _index(output)][:3]
    assert features.read_example_paths(str(output), set(some)) == {i: paths[i] for i in some}
    assert features.read_example_paths(str(output / "nothing_here")) == {}
