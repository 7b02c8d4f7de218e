"""Scale-out rehearsal on one machine, before paying for a cluster.

    python bench/rehearsal.py [--data_root DIR] [--workdir DIR] [--count 400] [--epochs 5]

1. preprocess through Beam's portable job API (what Flink, Spark and Dataflow Runner v2
   use): a job service and an SDK worker pool started as processes on 127.0.0.1, the job on
   two SDK workers;
2. train with the default strategy in one process (the reference);
3. train with MultiWorkerMirroredStrategy on two processes (TF_CONFIG on 127.0.0.1);
4. evaluate both and export;
and print each stage's time. Exits 1 unless the two-worker model's test accuracy matches the
single process's within noise (3 binomial standard deviations of the test split, + 0.05).
Every process it starts is stopped by its PID. Data: the glasses demo set (generated) or
a Kaggle-layout folder given with --data_root.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time

# The loopback process helpers are the tests' own (tests/processes.py), importable from the project root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pipelines.cli import ArgumentParser
from tests.processes import free_ports, running_services, stop_processes
from trainer import job_layout

PYTHON = sys.executable


def run(command: list[str], **kwargs) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if completed.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{completed.stderr[-3000:]}")


def train_two_workers(argv: list[str], log_dir: str) -> None:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    with contextlib.ExitStack() as logs:
        try:
            for index in range(2):
                env = dict(
                    os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
                )
                log = logs.enter_context(open(os.path.join(log_dir, f"worker{index}.log"), "w"))
                processes.append(
                    subprocess.Popen([PYTHON, "-m", "trainer.task", *argv], env=env, stdout=log, stderr=log)
                )
            codes = [process.wait(timeout=1800) for process in processes]
        finally:
            stop_processes(processes)
    if any(codes):
        sys.exit(f"two-worker training failed with exit codes {codes}; logs in {log_dir}")


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", help="Kaggle-layout glasses folder (default: generate the demo set)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "facepipe_rehearsal"))
    parser.add_argument("--count", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    times: dict[str, float] = {}

    def stage(name: str):
        print(f"... {name}", flush=True)
        return name, time.perf_counter()

    def done(started: tuple[str, float]) -> None:
        times[started[0]] = time.perf_counter() - started[1]

    raw = args.data_root or os.path.join(args.workdir, "raw")
    if not args.data_root:
        started = stage("generate demo data")
        run(
            [
                PYTHON,
                "-m",
                "pipelines.demo.data",
                "--dataset",
                "glasses",
                "--out",
                raw,
                "--count",
                str(args.count),
                "--size",
                "256",
            ]
        )
        done(started)
    data_dir = os.path.join(args.workdir, "data")
    review = [
        f
        for name, flag in (("overrides.csv", "--overrides_csv"), ("exclusions.csv", "--exclude"))
        if os.path.exists(os.path.join(raw, name))
        for f in (flag, os.path.join(raw, name))
    ]
    started = stage("preprocess: PortableRunner, 2 SDK workers")
    with running_services(args.workdir) as (job_port, worker_port):
        run(
            [
                PYTHON,
                "-m",
                "pipelines.preprocess",
                "--dataset",
                "glasses",
                "--images",
                raw,
                "--output",
                data_dir,
                "--overwrite",
                "--splits",
                "from_source",
                *review,
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
    done(started)

    accuracies, test_size = {}, 0
    for name in ("single process", "two workers"):
        job_dir = os.path.join(args.workdir, "job_" + name.replace(" ", "_"))
        train = ["train", "--data_dir", data_dir, "--job_dir", job_dir, "--epochs", str(args.epochs), "--verbose", "0"]
        started = stage(f"train: {name}")
        if name == "two workers":
            # The same global batch as the single process (its preset's, halved per worker), so
            # that both take the same number of steps: the only difference left is where they run.
            with open(os.path.join(args.workdir, "job_single_process", job_layout.CONFIG_FILE)) as f:
                batch_size = json.load(f)["hyperparameters"]["batch_size"]
            hp = os.path.join(args.workdir, "two_workers_hp.json")
            with open(hp, "w") as f:
                json.dump({"batch_size": batch_size // 2}, f)
            train_two_workers([*train, "--strategy", "multi_worker", "--hyperparameters", hp], args.workdir)
        else:
            run([PYTHON, "-m", "trainer.task", *train, "--strategy", "default"])  # The default preset's batch.
        done(started)
        started = stage(f"evaluate: {name}")
        run([PYTHON, "-m", "trainer.task", "evaluate", "--data_dir", data_dir, "--job_dir", job_dir])
        done(started)
        with open(os.path.join(job_dir, job_layout.EVAL_DIR, job_layout.METRICS_FILE)) as f:
            metrics = json.load(f)
        accuracies[name], test_size = metrics["accuracy"], metrics["num_examples"]
        if not os.path.exists(os.path.join(job_dir, job_layout.EXPORT_DIR, "saved_model.pb")):
            sys.exit(f"no exported model in {job_dir}")

    print(f"\n{'stage':<45} {'seconds':>8}")
    for name, seconds in times.items():
        print(f"{name:<45} {seconds:>8.1f}")
    single, multi = accuracies["single process"], accuracies["two workers"]
    tolerance = 3 * math.sqrt(max(single * (1 - single), 0.01) / max(test_size, 1)) + 0.05
    verdict = "match" if abs(single - multi) <= tolerance else "DIFFER"
    print(
        f"\ntest accuracy ({test_size} images): single process {single:.3f}, two workers {multi:.3f}: "
        f"{verdict} (tolerance {tolerance:.3f})"
    )
    sys.exit(0 if verdict == "match" else 1)


if __name__ == "__main__":
    main()
