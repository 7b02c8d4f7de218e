"""Latent vectors: the image presets against the vector presets on the demo glasses set.

    python bench/latent_bench.py [--counts 1500] [--size 256] [--workdir DIR] [--presets ...]

For each count, with facepipe's own commands (printed as they run): generate the demo glasses
set, preprocess it as the demo job does (the glasses preset, 50x50 RGB, the Kaggle split, the
review's overrides and exclusions) with ``--numeric_columns v1..v512``, then train and evaluate
each preset with its default hyperparameters (no tuning; train's own early stopping on the
validation split). Prints per preset: test accuracy with its 95% interval (metrics.json),
epochs run (history.csv), seconds per epoch, parameter count, and each preset's time per epoch
over glasses_cnn's.

Seconds per epoch: the median over the epochs after the first (the first traces the graph) of
what Keras reports for each epoch at ``--verbose 2`` (steps x time per step, validation pass
included); the train process's whole wall time divided by the epochs run is printed beside it
(start-up and export included, so it overstates short epochs).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

# The project root, so that its packages import from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pipelines import features
from pipelines.cli import ArgumentParser
from pipelines.demo.data import EXCLUSIONS_CSV, OVERRIDES_CSV
from trainer import job_layout, records

PRESETS = ("glasses_cnn", "face_cnn", "latent_mlp", "image_latent")
BASELINE = "glasses_cnn"
# Keras's --verbose 2 line at the end of each epoch: "47/47 - 2s - 41ms/step - accuracy: …".
_EPOCH_LINE = re.compile(r"^\s*(\d+)/\1 - \d+s - (\d+(?:\.\d+)?)(us|ms|s)/step")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _run(command: list[str]) -> tuple[str, float]:
    """Runs ``command``; (its stdout + stderr, wall seconds). Exits with its stderr on failure."""
    print(f"$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if completed.returncode:
        sys.exit(f"failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return completed.stdout + completed.stderr, wall


def epoch_seconds(train_output: str) -> list[float]:
    """Seconds of each epoch from Keras's --verbose 2 lines (steps x time per step)."""
    seconds = []
    for line in train_output.splitlines():
        match = _EPOCH_LINE.match(line)
        if match:
            seconds.append(int(match.group(1)) * float(match.group(2)) * _UNIT[match.group(3)])
    return seconds


def prepare_data(workdir: str, count: int, size: int) -> str:
    """The demo glasses set, generated and preprocessed once per (count, size); its data dir."""
    python = sys.executable
    root = os.path.join(workdir, f"glasses_{count}_{size}")
    raw, data_dir = os.path.join(root, "raw"), os.path.join(root, "data")
    if not os.path.exists(os.path.join(data_dir, features.MANIFEST_FILE)):
        generate = ["--dataset", "glasses", "--out", raw, "--count", str(count), "--size", str(size)]
        _, wall = _run([python, "-m", "pipelines.demo.data", *generate])
        print(f"  generated in {wall:.0f} s", flush=True)
        # As pipelines/demo/job.py runs it on the demo data, plus the vector made explicit.
        review = ["--overrides_csv", os.path.join(raw, OVERRIDES_CSV), "--exclude", os.path.join(raw, EXCLUSIONS_CSV)]
        preprocess = ["--dataset", "glasses", "--images", raw, "--output", data_dir, "--overwrite"]
        vector = ["--splits", "from_source", "--numeric_columns", "v1..v512"]
        _, wall = _run([python, "-m", "pipelines.preprocess", *preprocess, *vector, *review])
        print(f"  preprocessed in {wall:.0f} s", flush=True)
    return data_dir


def parameter_count(preset_name: str, data_dir: str) -> int:
    """Parameters of the preset's default model on this data (the model train builds)."""
    from trainer import models  # TensorFlow: only once the data is there.

    manifest = features.read_manifest(data_dir)
    preset = models.PRESETS[preset_name]
    model = models.build_model(
        models.fixed_hyperparameters(preset),
        preset=preset,
        input_shape=features.image_shape(manifest),
        vector_length=features.vector_length(manifest),
    )
    return int(model.count_params())


def bench_preset(preset: str, data_dir: str, job_dir: str) -> dict:
    python = sys.executable
    trainer = [python, "-m", "trainer.task"]
    output, train_wall = _run(
        [*trainer, "train", "--data_dir", data_dir, "--job_dir", job_dir, "--model", preset, "--verbose", "2"]
    )
    _run([*trainer, "evaluate", "--data_dir", data_dir, "--job_dir", job_dir])
    with open(os.path.join(job_dir, job_layout.EVAL_DIR, job_layout.METRICS_FILE)) as f:
        metrics = json.load(f)
    epochs = len(records.read_history(job_dir))
    per_epoch = epoch_seconds(output)
    if len(per_epoch) != epochs:
        sys.exit(f"{preset}: {len(per_epoch)} Keras epoch lines for {epochs} history rows; cannot time the epochs")
    steady = per_epoch[1:] or per_epoch
    return {
        "preset": preset,
        "accuracy": metrics["accuracy"],
        "ci95": metrics["accuracy_ci95"],
        "n": metrics["n"] if "n" in metrics else sum(map(sum, metrics["confusion_matrix"])),
        "epochs": epochs,
        "epoch_s": statistics.median(steady),
        "wall_per_epoch_s": train_wall / epochs,
        "train_wall_s": train_wall,
        "params": parameter_count(preset, data_dir),
    }


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1500", help="comma-separated image counts, e.g. 1500,5000")
    parser.add_argument("--size", type=int, default=256, help="side of the generated demo images")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "facepipe_latent"))
    parser.add_argument("--presets", default=",".join(PRESETS), help=f"comma-separated, {BASELINE} first")
    args = parser.parse_args()
    presets = args.presets.split(",")
    if presets[0] != BASELINE or any(p not in PRESETS for p in presets):
        parser.error(f"--presets: a subset of {','.join(PRESETS)} starting with {BASELINE}")
    for count in (int(c) for c in args.counts.split(",")):
        started = time.perf_counter()
        data_dir = prepare_data(args.workdir, count, args.size)
        manifest = features.read_manifest(data_dir)
        print(f"\n{count} images at {args.size} px: written per split/class {manifest['counts']['written']}")
        results = []
        for preset in presets:
            # A fresh job dir per run: a rerun trains afresh instead of resuming (nothing is deleted).
            jobs = os.path.join(os.path.dirname(data_dir), "jobs")
            os.makedirs(jobs, exist_ok=True)
            job_dir = tempfile.mkdtemp(prefix=f"{preset}_", dir=jobs)
            results.append(bench_preset(preset, data_dir, job_dir))
            print(f"  {preset}: {json.dumps(results[-1])}", flush=True)
        baseline = results[0]["epoch_s"]
        print(
            f"\n| preset | test accuracy (95% CI), n | epochs | s/epoch | train wall / epoch | params | "
            f"s/epoch / {BASELINE} |\n|---|---|---:|---:|---:|---:|---:|"
        )
        for r in results:
            low, high = r["ci95"]
            print(
                f"| {r['preset']} | {r['accuracy']:.3f} ({low:.3f}-{high:.3f}), {r['n']} | {r['epochs']} | "
                f"{r['epoch_s']:.2f} | {r['wall_per_epoch_s']:.2f} | {r['params']:,} | {r['epoch_s'] / baseline:.3f} |"
            )
        print(f"\n{count} images: {time.perf_counter() - started:.0f} s wall in all", flush=True)


if __name__ == "__main__":
    main()
