"""The job's output against a fixture written by the job before its batches (commit 0f3075f):
records, dead letters, quality files and the data fingerprint are the same, in any bundles.

The fixture (``fixtures/demo_glasses_80.json``) is the digest of that run's output on the
demo's glasses set (80 images of 64 px: 512-value vectors, unlabelled test ids, overrides,
exclusions, duplicates, a truncated and an empty file, the class balance, ``--dedupe keep_one``); its
``examples_index`` (the examples CSV's rows) was added by 5a8fb23's code, the last to join the
paths by id. It must
change only with a change meant to change the output; then rewrite it with
``python -m tests.pipelines.test_output_identity FIXTURE`` from the code that wrote the old one
and from the new code, and say why they differ.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import json
import os
import pathlib
import re
import sys
from typing import Any

import pytest

from pipelines import features
from pipelines.demo import data as demo_data

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "demo_glasses_80.json"
_COUNT, _SIZE = 80, 64


def _records(output_dir: str) -> dict[str, dict[str, str]]:
    """{shard: {id: SHA-256 of the example}}; the examples parsed and serialized deterministically
    (a feature map's byte order differs between processes), a shard's files (one a bundle) together."""
    import tensorflow as tf
    from apache_beam.io.tfrecordio import _TFRecordUtil

    shards = {}
    for path in sorted(glob.glob(os.path.join(output_dir, "*.tfrecord.gz"))):
        shard = re.sub(r"-of-(\d+)(-\d+)?" + re.escape(features.SHARD_SUFFIX), r"-of-\1", os.path.basename(path))
        examples = shards.setdefault(shard, {})
        with gzip.open(path) as f:
            while (record := _TFRecordUtil.read_record(f)) is not None:
                example = tf.train.Example.FromString(record)
                image_id = example.features.feature["id"].bytes_list.value[0].decode("utf-8")
                examples[image_id] = hashlib.sha256(example.SerializeToString(deterministic=True)).hexdigest()
    return {shard: dict(sorted(examples.items())) for shard, examples in sorted(shards.items())}


def _lines(output_dir: str, pattern: str, data_dir: str) -> list[Any]:
    """The JSON lines of the files ``pattern`` matches, sorted, with the data's folder as ``DATA``."""
    lines = []
    for path in glob.glob(os.path.join(output_dir, pattern)):
        with open(path) as f:
            lines += [json.loads(line.replace(data_dir, "DATA")) for line in f.read().splitlines()]
    return sorted(lines, key=lambda line: json.dumps(line, sort_keys=True))


def _csv_rows(output_dir: str, pattern: str, data_dir: str) -> list[list[str]]:
    """The rows (header lines left out) of the CSV files ``pattern`` matches, sorted, with the data's folder as ``DATA``."""
    rows = []
    for path in glob.glob(os.path.join(output_dir, pattern)):
        with open(path, newline="") as f:
            rows += [[value.replace(data_dir, "DATA") for value in row] for row in list(csv.reader(f))[1:]]
    return sorted(rows)


def output_digest(output_dir: str, data_dir: str) -> dict[str, Any]:
    """What must not change: the records by id, dead letters, quality files, fingerprint, counts,
    the examples index."""
    with open(os.path.join(output_dir, "manifest.json")) as f:
        manifest = json.load(f)
    return {
        "records": _records(output_dir),
        "dead_letters": _lines(output_dir, "dead_letter/*.jsonl", data_dir),
        "quality_images": _lines(output_dir, "quality/images-*.jsonl", data_dir),
        "quality_duplicates": _lines(output_dir, "quality/duplicates-*.jsonl", data_dir),
        "fingerprint": {key: manifest["fingerprint"][key] for key in ("data", "content", "options")},
        "counts": manifest["counts"],
        "examples_index": _csv_rows(output_dir, f"{features.EXAMPLES_DIR}/*.csv", data_dir),
    }


def demo_run(root: pathlib.Path, *beam_flags: str) -> dict[str, Any]:
    """The default job on the demo glasses set (generated into ``root`` when absent); its digest."""
    from pipelines.preprocess import run

    data = root / "data"
    if not data.exists():
        demo_data.generate("glasses", str(data), count=_COUNT, size=_SIZE, seed=0)
        faces = data / "faces-spring-2020"
        truncated = (faces / "face-5.png").read_bytes()
        (faces / "face-5.png").write_bytes(truncated[: len(truncated) // 2])  # Decode dead letters.
        (faces / "face-6.png").write_bytes(b"")
    output = root / f"out{len(list(root.glob('out*')))}"
    run(
        [
            "--dataset",
            "glasses",
            "--images",
            str(data),
            "--output",
            str(output),
            "--overrides_csv",
            str(data / demo_data.OVERRIDES_CSV),
            "--exclude",
            str(data / "exclusions.csv"),
            "--dedupe",
            "keep_one",
            *beam_flags,
        ]
    )
    return output_digest(str(output), str(data))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("identity")


@pytest.mark.slow
@pytest.mark.parametrize(
    "beam_flags",
    [
        (),  # One bundle per stage: batches of transforms.BATCH_IMAGES.
        # Eight bundles a stage, a shard written by several: batches cut by their bundles' ends.
        ("--direct_running_mode=multi_threading", "--direct_num_workers=8"),
    ],
    ids=["one_bundle", "eight_bundles"],
)
def test_the_output_is_the_fixtures(demo_root, beam_flags):
    expected = json.loads(FIXTURE.read_text())
    digest = json.loads(json.dumps(demo_run(demo_root, *beam_flags)))  # Tuples as the fixture's lists.
    assert sum(map(len, digest["records"].values())) > 20 and digest["dead_letters"] and digest["quality_duplicates"]
    for key, value in expected.items():
        assert digest[key] == value, key


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        pathlib.Path(sys.argv[1]).write_text(json.dumps(demo_run(pathlib.Path(scratch)), indent=1, sort_keys=True))
