"""Trainer benchmarks: input pipeline vs training step, and the comics tuning grid.

    python bench/trainer_bench.py input [--runs 3] [--workdir DIR]
    python bench/trainer_bench.py tune  [--workdir DIR]
    python bench/trainer_bench.py hyperband [--workdir DIR] [--epochs 4] [--data comics|glasses]

``input`` makes a data set per preset with facepipe's own commands (demo data ->
pipelines.preprocess), then measures, in the same process:
  input_cold    examples/s that trainer.data.make_dataset delivers, first pass, no cache
  input_cached  the same once the split is cached in memory (what later epochs see)
  train_step    examples/s one training step of the preset consumes, fed from memory
and prints input/train ratios (target >= 5: the input pipeline is never the bottleneck).
``tune`` times the comics preset's full 16-point grid with 1 epoch per trial on a fixed
small data set, and how much of it one pass over the data would account for.
``hyperband`` searches the same 16-point grid twice on that data set, with the grid tuner
(every point for --epochs) and with keras-tuner's Hyperband (max_epochs --epochs, factor 3),
and prints each search's best validation accuracy, the epochs it trained and its wall time,
Hyperband's as a share of the grid's. ``--data glasses`` runs the same grid on the glasses demo
set (the one ``input`` makes for glasses_cnn), where the grid's points do not all score alike.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import tensorflow as tf

from pipelines import features
from pipelines.cli import ArgumentParser
from trainer import data, job_layout, models, tuning

# (preset, demo dataset, demo images, image side of the generated files)
_DATASETS = {"glasses_cnn": ("glasses", 1200, 256), "comics_cnn": ("comics", 600, 256)}
# The preset whose data set each --data value names.
_PRESET_OF_DATA = {dataset: preset for preset, (dataset, _, _) in _DATASETS.items()}
_BATCHES = 30


def _data_dir(workdir: str, preset: str) -> str:
    """A preprocessed data dir for ``preset``, made once with the project's own commands."""
    dataset, count, size = _DATASETS[preset]
    raw, out = os.path.join(workdir, f"{dataset}_raw"), os.path.join(workdir, f"{dataset}_data")
    if not os.path.exists(os.path.join(out, features.MANIFEST_FILE)):
        python = sys.executable
        subprocess.run(
            [
                python,
                "-m",
                "pipelines.demo.data",
                "--dataset",
                dataset,
                "--out",
                raw,
                "--count",
                str(count),
                "--size",
                str(size),
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                python,
                "-m",
                "pipelines.preprocess",
                "--dataset",
                dataset,
                "--images",
                raw,
                "--output",
                out,
                "--overwrite",
                "--balance",
                "none",
            ],
            check=True,
            capture_output=True,
        )
    return out


def _examples_per_second(dataset: tf.data.Dataset, batches: int, batch_size: int) -> float:
    iterator = iter(dataset)
    next(iterator)  # Build the pipeline (and trace its functions) outside the timing.
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - started)


def _input_rates(data_dir: str, batch_size: int) -> tuple[float, float]:
    manifest = features.read_manifest(data_dir)
    tft_output = data.load_transform(data_dir, manifest)
    common = dict(manifest=manifest, tft_output=tft_output, global_batch_size=batch_size, training=True)
    cold = _examples_per_second(data.make_dataset(data_dir, "train", cache=False, **common), _BATCHES, batch_size)
    cached_ds = data.make_dataset(data_dir, "train", cache=True, **common)
    steps = data.steps_per_epoch(data.split_size(manifest, "train"), batch_size)
    iterator = iter(cached_ds)
    for _ in range(steps + 1):  # Fill the cache with one full pass.
        next(iterator)
    started = time.perf_counter()
    for _ in range(_BATCHES):
        next(iterator)
    cached = _BATCHES * batch_size / (time.perf_counter() - started)
    return cold, cached


def _train_step_rate(preset: models.Preset, input_shape: tuple[int, int, int], batch_size: int) -> float:
    model = models.build_model(models.fixed_hyperparameters(preset), preset=preset, input_shape=input_shape)
    images = tf.random.normal([batch_size, *input_shape])
    labels = tf.random.uniform([batch_size], maxval=2, dtype=tf.int64)
    # One batch repeated from memory: the step alone, no input pipeline.
    batches = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model.fit(batches, steps_per_epoch=3, epochs=1, verbose=0)  # Trace and warm up.
    started = time.perf_counter()
    model.fit(batches, steps_per_epoch=_BATCHES, epochs=1, verbose=0)
    return _BATCHES * batch_size / (time.perf_counter() - started)


def input_vs_training(args: argparse.Namespace) -> None:
    print(
        f"{'preset':<12} {'batch':>5} {'input_cold/s':>12} {'input_cached/s':>14} {'train_step/s':>12} "
        f"{'cold/train':>10} {'cached/train':>12}"
    )
    for name in _DATASETS:
        preset = models.PRESETS[name]
        data_dir = _data_dir(args.workdir, name)
        batch_size = preset.defaults["batch_size"]
        shape = features.image_shape(features.read_manifest(data_dir))
        runs = [
            (*_input_rates(data_dir, batch_size), _train_step_rate(preset, shape, batch_size)) for _ in range(args.runs)
        ]
        cold, cached, step = (statistics.median(r[i] for r in runs) for i in range(3))
        print(
            f"{name:<12} {batch_size:>5} {cold:>12.0f} {cached:>14.0f} {step:>12.0f} "
            f"{cold / step:>10.1f} {cached / step:>12.1f}",
            flush=True,
        )


def tune_grid(args: argparse.Namespace) -> None:
    data_dir = _data_dir(args.workdir, "comics_cnn")
    manifest = features.read_manifest(data_dir)
    with tempfile.TemporaryDirectory() as job_dir:
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer.task",
                "tune",
                "--data_dir",
                data_dir,
                "--job_dir",
                job_dir,
                "--model",
                "comics_cnn",
                "--search_space",
                "full",
                "--epochs",
                "1",
                "--verbose",
                "0",
            ],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - started
    batch = models.COMICS_CNN.defaults["batch_size"]
    tft_output = data.load_transform(data_dir, manifest)
    started = time.perf_counter()
    for split in ("train", "validation"):  # One trial's data: a train epoch and a validation pass.
        for _ in data.make_dataset(
            data_dir,
            split,
            manifest=manifest,
            tft_output=tft_output,
            global_batch_size=batch,
            training=False,
            cache=False,
        ):
            pass
    data_pass = time.perf_counter() - started
    trials = 16
    print(
        f"comics_cnn full grid, {trials} trials x 1 epoch, {data.split_size(manifest, 'train')} train images "
        f"128x128: {wall:.1f} s wall, {wall / trials:.1f} s per trial; one trial's data alone "
        f"{data_pass:.2f} s = {trials * data_pass / wall:.0%} of the wall time (upper bound: prefetch overlaps it)"
    )


def _tune(data_dir: str, job_dir: str, tuner: str, epochs: int) -> tuple[float, int]:
    """Runs facepipe's tune command (comics_cnn, full grid): (wall seconds, epochs trained).

    The epochs are Keras' "Epoch i/n" lines: one per epoch any trial trained (a Hyperband
    trial that continues an earlier one prints only its own).
    """
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "trainer.task", "tune", "--data_dir", data_dir, "--job_dir", job_dir,
         "--model", "comics_cnn", "--search_space", "full", "--tuner", tuner, "--epochs", str(epochs),
         "--verbose", "2", "--overwrite"],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    return wall, len(re.findall(r"^Epoch \d+/\d+$", completed.stdout + completed.stderr, flags=re.M))


def _completed_trials(job_dir: str) -> list[dict[str, str]]:
    """The search's completed rows of its results table."""
    with open(os.path.join(job_dir, job_layout.TUNING_DIR, job_layout.TUNING_RESULTS_CSV), newline="") as f:
        return [row for row in csv.DictReader(f) if row["status"] == "COMPLETED"]


def _point(row: dict[str, str]) -> tuple:
    """A trial's grid point: its hyperparameters but the epochs (a Hyperband rung trains fewer)."""
    return tuple(sorted((k, v) for k, v in row.items() if k not in ("trial", "status", "score", "epochs")))


def hyperband_vs_grid(args: argparse.Namespace) -> None:
    data_dir = _data_dir(args.workdir, _PRESET_OF_DATA[args.data])
    rows = {}
    for tuner in ("grid", "hyperband"):
        job_dir = os.path.join(args.workdir, f"search_{args.data}_{tuner}")
        wall, epochs = _tune(data_dir, job_dir, tuner, args.epochs)
        rows[tuner] = (_completed_trials(job_dir), epochs, wall)
    grid_trials, grid_epochs, grid_wall = rows["grid"]
    # +1: a higher score is better (val_accuracy), -1: a lower one (val_loss).
    sign = 1.0 if tuning.OBJECTIVE.direction == "max" else -1.0
    grid_score = {_point(row): float(row["score"]) for row in grid_trials}
    scores = sorted(grid_score.values(), key=lambda score: -sign * score)
    grid_best = scores[0]
    print(f"grid scores, best first: {', '.join(f'{score:.3f}' for score in scores)}")
    for tuner, (trials, epochs, wall) in rows.items():
        best = max(trials, key=lambda row: sign * float(row["score"]))
        # Where the point Hyperband chose stands in the grid: its full-epoch score, its rank.
        full = grid_score.get(_point(best), float("nan"))
        rank = 1 + sum(sign * score > sign * full for score in scores)
        print(
            f"{tuner}: {len(trials)} trials, {epochs} epochs trained, {wall:.0f} s wall "
            f"({epochs / grid_epochs:.0%} of the grid's epochs, {wall / grid_wall:.0%} of its wall time); "
            f"best {tuning.OBJECTIVE.name} {float(best['score']):.4f} ({float(best['score']) - grid_best:+.4f} vs the grid's "
            f"best); its point scores {full:.4f} in the grid, rank {rank} of {len(scores)}"
        )


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("input", "tune", "hyperband"):
        sub = commands.add_parser(name)
        sub.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "facepipe_bench"))
        sub.add_argument("--runs", type=int, default=3)
        sub.add_argument("--epochs", type=int, default=4, help="hyperband: epochs per grid point, Hyperband's max")
        sub.add_argument("--data", choices=sorted(_PRESET_OF_DATA), default="comics", help="hyperband: the demo set")
    args = parser.parse_args()
    {"input": input_vs_training, "tune": tune_grid, "hyperband": hyperband_vs_grid}[args.command](args)


if __name__ == "__main__":
    main()
