"""trainer.task train under MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1.

Keras 3's ``model.fit`` fails with several workers (see trainer/multiworker.py), so these
runs exercise the custom loop end to end: TF_CONFIG, collective all-reduce, DATA
autosharding, chief-only outputs, tf.train checkpoints and resuming from them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines import features
from tests.processes import free_ports, stop_processes
from trainer import data, export
from trainer.records import read_history

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKERS = 2
TIMEOUT_S = 180

pytestmark = pytest.mark.slow


def run_cluster(argv: list[str], tmp_path: pathlib.Path, name: str) -> list[str]:
    """Runs ``python -m trainer.task *argv`` as every worker of a fresh cluster; returns their logs."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(WORKERS)]}
    procs = []
    with contextlib.ExitStack() as logs:
        files = [logs.enter_context(open(tmp_path / f"{name}-worker{i}.log", "w+")) for i in range(WORKERS)]
        try:
            for index, log in enumerate(files):
                tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
                env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(tf_config))
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "trainer.task", *argv],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            codes = [proc.wait(timeout=TIMEOUT_S) for proc in procs]
        finally:
            stop_processes(procs)
        texts = []
        for log in files:
            log.seek(0)
            texts.append(log.read())
    assert codes == [0] * WORKERS, "\n\n".join(text[-3000:] for text in texts)
    return texts


def epoch_lines(log: str) -> list[str]:
    return re.findall(r"epoch \d+/\d+ - loss: .*", log)


def fingerprint(log: str) -> str:
    (digest,) = re.findall(r"final weights sha256 ([0-9a-f]{64})", log)
    return digest


def test_two_workers_train_identically_and_only_the_chief_writes(rgb_dir, tmp_path):
    job_dir = tmp_path / "job"
    (tmp_path / "hp.json").write_text(json.dumps({"batch_size": 8}))  # global 16: 3 steps per epoch
    argv = ["train", "--strategy", "multi_worker", "--data_dir", rgb_dir, "--job_dir", str(job_dir)]
    argv += [
        "--model",
        "glasses_cnn",
        "--hyperparameters",
        str(tmp_path / "hp.json"),
        "--epochs",
        "2",
        "--verbose",
        "0",
    ]
    chief_log, worker_log = run_cluster(argv, tmp_path, "first")

    assert "CollectiveAllReduceStrategy (requested), 2 replica(s) in sync" in chief_log
    # Synchronous data parallelism: both workers log the same epochs and end with the same weights.
    assert len(epoch_lines(chief_log)) == 2 and epoch_lines(chief_log) == epoch_lines(worker_log)
    assert fingerprint(chief_log) == fingerprint(worker_log)

    history = read_history(str(job_dir))
    assert [row["epoch"] for row in history] == [0, 1]
    assert history[1]["loss"] < history[0]["loss"]
    config = json.loads((job_dir / "training_config.json").read_text())
    assert config["strategy"] == "CollectiveAllReduceStrategy" and config["replicas"] == 2
    assert sorted(p.name for p in (job_dir / "checkpoints").glob("*.index")) == ["epoch-1.index", "epoch-2.index"]
    assert list((job_dir / "logs/train").glob("events.out.tfevents.*"))
    assert "done; the chief writes the model and the export" in worker_log

    # The worker's temporary outputs are gone; nothing but the chief's files is in job_dir.
    assert sorted(p.name for p in job_dir.iterdir()) == [
        "checkpoints",
        "export",
        "history.csv",
        "logs",
        "model.keras",
        "training_config.json",
    ]

    # The chief's export serves the model it trained: the same probabilities as model.keras
    # on the trainer's own input path. (Accuracy after 6 steps on 48 images is a coin toss
    # between runs; bench/rehearsal.py compares accuracy with a single-process run.)
    _, serve_examples = export.load_serving(str(job_dir / "export"))
    records = [
        r.numpy() for r in tf.data.TFRecordDataset(sorted(map(str, pathlib.Path(rgb_dir).glob("test-*"))), "GZIP")
    ]
    served = serve_examples(examples=tf.constant(records))["probability"].numpy().reshape(-1)
    manifest = features.read_manifest(rgb_dir)
    parse = data.make_parse_and_transform(
        data.load_transform(rgb_dir, manifest), image_shape=features.image_shape(manifest)
    )
    images, _ = parse(tf.constant(records))
    trained = keras.saving.load_model(job_dir / "model.keras").predict(images, verbose=0)[:, -1]
    assert len(records) == 16
    np.testing.assert_allclose(served, trained, atol=1e-5)

    # A cluster that died after epoch 2 (no model.keras yet) resumes from the chief's
    # last checkpoint: restarted with 3 epochs, it trains only the third.
    (job_dir / "model.keras").unlink()
    argv[argv.index("--epochs") + 1] = "3"
    chief_log, worker_log = run_cluster(argv, tmp_path, "resumed")
    assert "resuming the interrupted run" in chief_log and "resuming the interrupted run" in worker_log
    assert [line.split(" - ")[0] for line in epoch_lines(chief_log)] == ["epoch 3/3"]
    assert fingerprint(chief_log) == fingerprint(worker_log)
    with open(job_dir / "history.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1, 2]
    assert (job_dir / "model.keras").exists() and (job_dir / "checkpoints/epoch-3.index").exists()


def test_two_workers_train_the_image_and_vector_preset_identically(latent_dir, tmp_path):
    # image_latent takes {"image", "latent"}: the custom loop, sharding and export with two inputs.
    job_dir = tmp_path / "job"
    (tmp_path / "hp.json").write_text(json.dumps({"batch_size": 4}))
    argv = ["train", "--strategy", "multi_worker", "--data_dir", latent_dir, "--job_dir", str(job_dir)]
    argv += ["--model", "image_latent", "--hyperparameters", str(tmp_path / "hp.json"), "--epochs", "1"]
    chief_log, worker_log = run_cluster([*argv, "--verbose", "0"], tmp_path, "latent")
    assert len(epoch_lines(chief_log)) == 1 and epoch_lines(chief_log) == epoch_lines(worker_log)
    assert fingerprint(chief_log) == fingerprint(worker_log)
    assert json.loads((job_dir / "training_config.json").read_text())["model"] == "image_latent"
    assert (job_dir / "export" / "saved_model.pb").exists()
