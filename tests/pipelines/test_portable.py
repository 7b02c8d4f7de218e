"""The pipeline through Beam's portable job API with external SDK workers on loopback.

This is how Flink, Spark and Dataflow Runner v2 execute Python; the test starts the job
service and the worker pool as separate processes, and stops them by their PIDs.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from pipelines import features
from pipelines.preprocess import run
from tests.image_files import write_glasses_like
from tests.processes import running_services

pytestmark = pytest.mark.slow


@pytest.fixture
def portable_services(tmp_path) -> Iterator[tuple[int, int, pathlib.Path]]:
    with running_services(str(tmp_path)) as (job_port, worker_port):
        yield job_port, worker_port, tmp_path / "worker_pool.log"


def _examples(output_dir: str, split: str) -> list[tuple[bytes, bytes, int]]:
    files = tf.io.gfile.glob(features.shard_pattern(output_dir, split))
    spec = features.raw_feature_spec()
    return sorted(
        (parsed["id"].numpy(), parsed["image"].numpy(), int(parsed["label"]))
        for parsed in tf.data.TFRecordDataset(files, compression_type="GZIP").map(
            lambda r: tf.io.parse_single_example(r, spec)
        )
    )


def test_portable_runner_with_external_workers_matches_direct_runner(tmp_path, portable_services):
    job_port, worker_port, worker_log = portable_services
    write_glasses_like(tmp_path, [0, 1, 1, 0, 1] * 8)
    common = [
        "--images",
        str(tmp_path / "images"),
        "--labels_csv",
        str(tmp_path / "labels.csv"),
        "--file_pattern",
        "face-{id}.png",
        "--image_size",
        "8",
        "--exclude",
        "3",
    ]
    direct = run([*common, "--output", str(tmp_path / "direct")])
    portable = run(
        [
            *common,
            "--output",
            str(tmp_path / "portable"),
            "--runner",
            "PortableRunner",
            "--job_endpoint",
            f"localhost:{job_port}",
            "--environment_type",
            "EXTERNAL",
            "--environment_config",
            f"localhost:{worker_port}",
            "--direct_num_workers",
            "2",
        ]
    )
    assert worker_log.read_text().count("Starting worker with command") == 2  # two SDK worker processes
    assert portable["runner"] == "PortableRunner"
    assert portable["counts"] == direct["counts"]
    assert portable["fingerprint"] == direct["fingerprint"]
    for split in features.SPLITS:
        assert _examples(str(tmp_path / "portable"), split) == _examples(str(tmp_path / "direct"), split)
    # Same tf.Transform statistics: both transform graphs normalise a probe identically.
    probe = {
        features.IMAGE_KEY: tf.constant([bytes(range(0, 192))]),
        features.LABEL_KEY: tf.constant([0], tf.int64),
    }
    outputs = [
        tft.TFTransformOutput(str(tmp_path / name / features.TRANSFORM_DIR)).transform_raw_features(probe)
        for name in ("direct", "portable")
    ]
    np.testing.assert_allclose(
        # float32 sums in another order: equal to rounding.
        outputs[0][features.NORMALIZED_IMAGE_KEY].numpy(),
        outputs[1][features.NORMALIZED_IMAGE_KEY].numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
