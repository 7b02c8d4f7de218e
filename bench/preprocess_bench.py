"""Preprocessing benchmarks: throughput against the seeds' loop and the decode limit; memory.

    python bench/preprocess_bench.py throughput [--count 500] [--runs 3] [--workdir DIR]
    python bench/preprocess_bench.py memory [--counts 500,2000,8000] [--size 256] [--workdir DIR]

``throughput`` generates (once, into --workdir) 1024x1024 PNGs (the glasses demo set) and
JPGs (the comics demo set), then measures, side by side in the same run and as the median
of --runs runs:
  seeds_loop    the notebooks' approach: a sequential cv2.imread + cv2.resize into a list
  decode_limit  facepipe's decode + resize alone (reduced JPEG decode included), sequential
  pipeline_1w   python -m pipelines.preprocess, in-process (one worker)
  pipeline_2w   the same with --direct_running_mode=multi_processing --direct_num_workers=2
and prints images/s and the ratios the targets are stated in, for the whole job and for the
steady state (the pipeline's fixed cost — interpreter and TensorFlow start-up, graph
construction, tf.Transform analysis — measured on a 40-image run and taken off).
``memory`` runs the pipeline (its defaults: audit, class balance, the preset's numeric columns)
and the seeds' notebook code at growing input counts, each in a child process, and prints their
peak RSS.
``cache`` builds --count demo PNGs (--size px, default 1024) with an empty --cache_dir (cold),
then again after changing one override (warm: every image a cache hit), and prints both wall
times, their ratio (goal: warm <= 0.2x cold) and peak RSS.

    python bench/preprocess_bench.py cache [--count 500] [--size 1024] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import cv2

from pipelines.cli import ArgumentParser
from pipelines.demo import data as demo_data
from pipelines.transforms import decode_and_resize

TARGET = (50, 50)


def _ensure_data(workdir: str, dataset: str, count: int, size: int) -> tuple[str, list[str]]:
    """(dataset root, image paths) of a demo set generated once into ``workdir``."""
    out = os.path.join(workdir, f"{dataset}_{count}_{size}")
    if not os.path.exists(os.path.join(out, ".complete")):
        demo_data.generate(dataset, out, count=count, size=size, seed=0)
        open(os.path.join(out, ".complete"), "w").close()
    pattern = "faces-spring-2020/*.png" if dataset == "glasses" else "face2comics_v2.0.0_by_Sxela/*/*.jpg"
    return out, sorted(glob.glob(os.path.join(out, pattern)))


def seeds_loop(paths: list[str]) -> int:
    """The seeds' notebook loop: every image decoded in full and resized, kept in a list."""
    images = []
    for path in paths:
        images.append(cv2.resize(cv2.imread(path), TARGET))
    return len(images)


def decode_limit(paths: list[str]) -> int:
    """facepipe's per-image work without a pipeline: read, decode (reduced JPEG), resize."""
    for path in paths:
        with open(path, "rb") as f:
            decode_and_resize(f.read(), size=TARGET, color_mode="rgb", max_pixels=10**9)
    return len(paths)


def _pipeline_args(dataset: str, root: str, output: str, *, balance: bool = False) -> list[str]:
    """The job's command at 50x50 RGB; ``balance``: the job's default class balance, else
    ``--balance none`` (every image written, as the loops it is compared with)."""
    return [
        sys.executable,
        "-m",
        "pipelines.preprocess",
        "--dataset",
        dataset,
        "--images",
        root,
        "--output",
        output,
        "--overwrite",
        "--image_size",
        "50",
        "--color_mode",
        "rgb",
        *([] if balance else ["--balance", "none"]),
    ]


def pipeline(dataset: str, root: str, workers: int) -> float:
    """Wall seconds of the whole preprocessing job in a fresh process."""
    with tempfile.TemporaryDirectory() as output:
        command = _pipeline_args(dataset, root, output)
        if workers > 1:
            command += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - started


def _median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


_SMALL = 40  # images in the run that measures the pipeline's fixed cost (start-up, analysis)


def throughput(args: argparse.Namespace) -> None:
    print(f"{'format':<6} {'method':<18} {'images':>7} {'median s':>9} {'images/s':>9}")
    for dataset, fmt in (("glasses", "png"), ("comics", "jpg")):
        pairs = 2 if dataset == "comics" else 1
        root, paths = _ensure_data(args.workdir, dataset, args.count // pairs, 1024)
        small_root, small_paths = _ensure_data(args.workdir, dataset, _SMALL // pairs, 1024)
        seconds = {}
        measured = {
            "seeds_loop": (seeds_loop, paths),
            "decode_limit": (decode_limit, paths),
            "pipeline_1w": (pipeline, dataset, root, 1),
            "pipeline_2w": (pipeline, dataset, root, 2),
            "pipeline_1w_small": (pipeline, dataset, small_root, 1),
            "pipeline_2w_small": (pipeline, dataset, small_root, 2),
        }
        for method, (fn, *fn_args) in measured.items():
            seconds[method] = _median_seconds(functools.partial(fn, *fn_args), args.runs)
            count = len(small_paths) if method.endswith("_small") else len(paths)
            print(
                f"{fmt:<6} {method:<18} {count:>7} {seconds[method]:>9.2f} {count / seconds[method]:>9.1f}", flush=True
            )
        rates = {
            method: len(paths) / seconds[method]
            for method in ("seeds_loop", "decode_limit", "pipeline_1w", "pipeline_2w")
        }
        # Steady state: the rate once the fixed cost (the small run's time) is paid.
        extra = len(paths) - len(small_paths)
        for workers in ("1w", "2w"):
            rates[f"steady_{workers}"] = extra / (seconds[f"pipeline_{workers}"] - seconds[f"pipeline_{workers}_small"])
        print(
            f"{fmt:<6} whole job: 1w/decode_limit {rates['pipeline_1w'] / rates['decode_limit']:.2f}, "
            f"2w/1w {rates['pipeline_2w'] / rates['pipeline_1w']:.2f}, 2w/seeds_loop "
            f"{rates['pipeline_2w'] / rates['seeds_loop']:.2f}, decode_limit/seeds_loop "
            f"{rates['decode_limit'] / rates['seeds_loop']:.2f}",
            flush=True,
        )
        print(
            f"{fmt:<6} steady state ({rates['steady_1w']:.1f} and {rates['steady_2w']:.1f} images/s): "
            f"1w/decode_limit {rates['steady_1w'] / rates['decode_limit']:.2f} (target >= 0.9), "
            f"2w/1w {rates['steady_2w'] / rates['steady_1w']:.2f} (target >= 1.8), "
            f"2w/seeds_loop {rates['steady_2w'] / rates['seeds_loop']:.2f}; fixed cost "
            f"{seconds['pipeline_1w_small']:.1f} s (1w), {seconds['pipeline_2w_small']:.1f} s (2w)",
            flush=True,
        )


def _peak_rss_mb(command: list[str]) -> float:
    """Peak RSS of ``command``, run in a fresh wrapper process (RUSAGE_CHILDREN's max RSS is
    that of the largest child so far, so each measurement needs its own parent)."""
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    completed = subprocess.run([sys.executable, "-c", wrapper, *command], check=True, capture_output=True, text=True)
    return int(completed.stdout.strip()) / 1024


# The seeds' notebook: every image read, resized to 128x128 grey, kept in a list, then one
# float64 array divided by 255.
_SEEDS_NOTEBOOK = """
import glob, sys, cv2, numpy as np
images = [cv2.resize(cv2.imread(p, cv2.IMREAD_GRAYSCALE), (128, 128)) for p in sorted(glob.glob(sys.argv[1]))]
data = np.array(images) / 255.0
"""


def memory(args: argparse.Namespace) -> None:
    print(f"{'images':>7} {'pipeline peak RSS MB':>21} {'seeds notebook peak RSS MB':>27}")
    for count in (int(c) for c in args.counts.split(",")):
        root, _ = _ensure_data(args.workdir, "glasses", count, args.size)
        with tempfile.TemporaryDirectory() as output:
            pipeline_mb = _peak_rss_mb(_pipeline_args("glasses", root, output, balance=True))
        seeds_mb = _peak_rss_mb(
            [sys.executable, "-c", _SEEDS_NOTEBOOK, os.path.join(root, "faces-spring-2020", "*.png")]
        )
        print(f"{count:>7} {pipeline_mb:>21.0f} {seeds_mb:>27.0f}", flush=True)


def _timed_peak(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of ``command`` in a fresh wrapper process."""
    started = time.perf_counter()
    peak = _peak_rss_mb(command)
    return time.perf_counter() - started, peak


def cache(args: argparse.Namespace) -> None:
    root, _ = _ensure_data(args.workdir, "glasses", args.count, args.size)
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        cache_dir, output = os.path.join(scratch, "cache"), os.path.join(scratch, "out")
        overrides = os.path.join(root, demo_data.OVERRIDES_CSV)
        with open(overrides) as f:
            header, *rows = f.read().splitlines()
        changed = os.path.join(scratch, "overrides_changed.csv")
        with open(changed, "w") as f:  # One override fewer: a rerun after a review.
            f.write("\n".join([header, *rows[:-1]]) + "\n")
        command = [*_pipeline_args("glasses", root, output), "--cache_dir", cache_dir]
        cold = _timed_peak([*command, "--overrides_csv", overrides])
        warm = _timed_peak([*command, "--overrides_csv", changed])
        with open(os.path.join(output, "manifest.json")) as f:
            counters = json.load(f)["cache"]
    print(f"{'run':<6} {'images':>7} {'s':>7} {'peak RSS MB':>12}")
    for name, (seconds, peak) in (("cold", cold), ("warm", warm)):
        print(f"{name:<6} {args.count:>7} {seconds:>7.2f} {peak:>12.0f}")
    print(f"warm / cold {warm[0] / cold[0]:.2f} (goal <= 0.2); warm run's cache counters {counters}")


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tp = commands.add_parser("throughput")
    tp.add_argument("--count", type=int, default=500)
    tp.add_argument("--runs", type=int, default=3)
    mem = commands.add_parser("memory")
    mem.add_argument("--counts", default="500,2000,8000")
    mem.add_argument("--size", type=int, default=256, help="image side; memory should not grow with the count")
    cache_parser = commands.add_parser("cache")
    cache_parser.add_argument("--count", type=int, default=500)
    cache_parser.add_argument("--size", type=int, default=1024, help="image side (the Kaggle set's: 1024)")
    for sub in (tp, mem, cache_parser):
        sub.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "facepipe_bench"))
    args = parser.parse_args()
    {"throughput": throughput, "memory": memory, "cache": cache}[args.command](args)


if __name__ == "__main__":
    main()
