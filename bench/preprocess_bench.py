"""Preprocessing benchmarks: throughput against the seeds' loop and the decode limit; memory.

    python bench/preprocess_bench.py throughput [--sets png1024,jpeg1024,png256]
        [--png1024 5000] [--jpeg1024 10000] [--png256 20000] [--runs 3] [--baseline DIR] [--workdir DIR]
    python bench/preprocess_bench.py memory [--counts 1000,20000] [--size 256] [--workdir DIR]

``throughput`` generates (once, into --workdir) each set's demo images: PNGs of the glasses
set at 1024 px (the Kaggle set's 5000), JPEGs of the comics set at 1024 px (half of
face2comics: 10 000) and PNGs at 256 px, reads each set's files once (so that every method
reads them from memory: the first one measured used to read them from disk), then measures side
by side in the same run:
  seeds_loop      the notebooks' approach: a sequential cv2.imread + cv2.resize into a list
  decode_1core    facepipe's own read + decode + resize (decode_with_size), no pipeline, one core
  decode_threads  the same on a thread pool of one thread a core in one process: what the
                  job's DecodeAndResize can reach if the decoders release the GIL
  decode_allcores the same on a process pool of one process a core: the machine's limit
  pipeline        the whole default job (python -m pipelines.preprocess --balance none, 50x50
                  RGB), wall time and peak RSS
  pipeline_mp     the same with --direct_running_mode=multi_processing --direct_num_workers=<cores>
  pipeline_small  the job on 40 images: its fixed cost (start-up, graph, tf.Transform), taken
                  off for the steady state
The loops are medians of --runs, the jobs of --runs when the set has 2000 images or fewer
(else one run each). It prints images/s and the ratios the goals are stated in, and the ceiling
of the job's ratio to the seeds' loop: the all-cores limit's (no job over the same files does better),
and a job's at that limit plus the run's fixed cost. The default
job's and the multi-processing job's outputs are compared (records by id, dead letters,
quality files, fingerprint), and with ``--baseline DIR`` (a checkout of other facepipe code,
e.g. ``git worktree add /tmp/base main``) the default job of that code too.
``memory`` runs the pipeline (its defaults: audit, class balance, the preset's 512 numeric
columns) and the seeds' notebook code at growing input counts, each in a child process, and
prints their peak RSS and the ratio of the largest to the smallest.
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
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import cv2

from pipelines import quiet
from pipelines.cli import ArgumentParser
from pipelines.demo import data as demo_data
from pipelines.transforms import decode_threads, decode_with_size
from tests.pipelines.test_output_identity import output_digest

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


def _read_all(paths: list[str]) -> None:
    """Reads every file once, into the page cache when it fits."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


def _read_and_decode(path: str) -> int:
    """facepipe's per-image work without a pipeline: read, decode (reduced JPEG), resize."""
    with open(path, "rb") as f:
        decode_with_size(f.read(), size=TARGET, color_mode="rgb", max_pixels=10**9)
    return 1


def decode_on(pool: Executor | None, paths: list[str]) -> int:
    """_read_and_decode of every path, in this thread (``pool`` None) or on ``pool``."""
    if pool is None:
        return sum(map(_read_and_decode, paths))
    return sum(pool.map(_read_and_decode, paths, chunksize=1 if isinstance(pool, ThreadPoolExecutor) else 16))


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


def pipeline(dataset: str, root: str, output: str, *, workers: int = 1, code: str | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of the whole job in a fresh process; ``code``: the checkout
    whose job runs (default: this one)."""
    command = _pipeline_args(dataset, root, output)
    if workers > 1:
        command += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    if code:
        command = ["env", f"PYTHONPATH={code}", *command]
    return _timed_peak(command, cwd=code)


def _median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _load() -> str:
    return "load average " + ", ".join(f"{value:.1f}" for value in os.getloadavg())


def _same_output(first: str, second: str, data_dir: str) -> str:
    """'identical' or the parts of two outputs that differ (records by id, dead letters, quality, fingerprint)."""
    a, b = output_digest(first, data_dir), output_digest(second, data_dir)
    differ = [key for key in a if a[key] != b[key]]
    return "identical" if not differ else "DIFFERENT: " + ", ".join(differ)


_SMALL = 40  # images in the run that measures the pipeline's fixed cost (start-up, analysis)
# (dataset, image side, pairs per image count: the comics set is face/comic pairs)
_SETS = {"png1024": ("glasses", 1024, 1), "jpeg1024": ("comics", 1024, 2), "png256": ("glasses", 256, 1)}
_SHORT = 2000  # sets of at most this many images run the jobs --runs times, larger ones once


def throughput(args: argparse.Namespace) -> None:
    cores = decode_threads(0)
    print(f"{cores} cores; {_load()}; commit {_commit()}", flush=True)
    print(f"{'set':<9} {'method':<16} {'images':>7} {'median s':>9} {'images/s':>9} {'peak RSS MB':>12}")
    for name in args.sets.split(","):
        _throughput_of(name, args, cores)


def _throughput_of(name: str, args: argparse.Namespace, cores: int) -> None:
    """One set's measurements, printed as they come, then its ratios."""
    dataset, size, pairs = _SETS[name]
    root, paths = _ensure_data(args.workdir, dataset, getattr(args, name) // pairs, size)
    small_root, small_paths = _ensure_data(args.workdir, dataset, _SMALL // pairs, size)
    seconds, peaks = {}, {}

    def report(method: str, images: int) -> None:
        peak = f"{peaks[method]:>12.0f}" if method in peaks else ""
        rate = images / seconds[method]
        print(f"{name:<9} {method:<16} {images:>7} {seconds[method]:>9.2f} {rate:>9.1f} {peak}", flush=True)

    _read_all(paths)  # Every method reads the files from memory, the first one too.
    seconds["seeds_loop"] = _median_seconds(functools.partial(seeds_loop, paths), args.runs)
    report("seeds_loop", len(paths))
    seconds["decode_1core"] = _median_seconds(functools.partial(decode_on, None, paths), args.runs)
    report("decode_1core", len(paths))
    with ThreadPoolExecutor(cores) as threads:
        seconds["decode_threads"] = _median_seconds(functools.partial(decode_on, threads, paths), args.runs)
    report("decode_threads", len(paths))
    with ProcessPoolExecutor(cores) as processes:
        decode_on(processes, small_paths)  # The workers started and warm before the clock.
        seconds["decode_allcores"] = _median_seconds(functools.partial(decode_on, processes, paths), args.runs)
    report("decode_allcores", len(paths))
    jobs = {"pipeline": (root, {}), "pipeline_mp": (root, {"workers": cores}), "pipeline_small": (small_root, {})}
    if args.baseline:
        jobs["baseline"] = (root, {"code": args.baseline})
    job_runs = args.runs if len(paths) <= _SHORT else 1
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        outputs = {}
        for method, (data, kwargs) in jobs.items():
            runs = []
            for run in range(job_runs):
                outputs[method] = os.path.join(scratch, f"{method}{run}")
                runs.append(pipeline(dataset, data, outputs[method], **kwargs))
            seconds[method] = statistics.median(wall for wall, _ in runs)
            peaks[method] = max(peak for _, peak in runs)
            report(method, len(small_paths) if method == "pipeline_small" else len(paths))
        same = _same_output(outputs["pipeline"], outputs["pipeline_mp"], root)
        print(f"{name:<9} multi-processing output vs default: {same}")
        if args.baseline:
            print(
                f"{name:<9} this job's output vs --baseline's: {_same_output(outputs['baseline'], outputs['pipeline'], root)}"
            )
    rate = {method: len(paths) / s for method, s in seconds.items() if method != "pipeline_small"}
    steady = (len(paths) - len(small_paths)) / (seconds["pipeline"] - seconds["pipeline_small"])
    baseline = f"; the baseline's job {rate['baseline'] / rate['seeds_loop']:.2f}x" if args.baseline else ""
    print(
        f"{name:<9} whole job: {rate['pipeline']:.1f} images/s = {rate['pipeline'] / rate['seeds_loop']:.2f}x the "
        f"seeds' loop, {rate['pipeline'] / rate['decode_allcores']:.2f}x the all-cores decode limit; "
        f"multi-processing {rate['pipeline_mp'] / rate['pipeline']:.2f}x the default run{baseline}",
        flush=True,
    )
    print(
        f"{name:<9} steady state {steady:.1f} images/s = {steady / rate['decode_allcores']:.2f}x the all-cores "
        f"limit; fixed cost {seconds['pipeline_small']:.1f} s; decode threads/1 core "
        f"{rate['decode_threads'] / rate['decode_1core']:.2f}, processes/1 core "
        f"{rate['decode_allcores'] / rate['decode_1core']:.2f}; {_load()}",
        flush=True,
    )
    # No job over these files beats its own decode on every core: the ceiling of its ratio to the seeds' loop.
    at_limit = len(paths) / (seconds["decode_allcores"] + seconds["pipeline_small"])
    print(
        f"{name:<9} ceiling: the all-cores limit is {rate['decode_allcores'] / rate['seeds_loop']:.2f}x the seeds' "
        f"loop; a job at the limit plus this run's fixed cost {at_limit / rate['seeds_loop']:.2f}x",
        flush=True,
    )


def _commit() -> str:
    completed = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return completed.stdout.strip() or "unknown"


def _peak_rss_mb(command: list[str], cwd: str | None = None) -> float:
    """Peak RSS of ``command``, run in a fresh wrapper process (RUSAGE_CHILDREN's max RSS is
    that of the largest child so far, so each measurement needs its own parent)."""
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", wrapper, *command], check=True, capture_output=True, text=True, cwd=cwd
    )
    return int(completed.stdout.strip()) / 1024


# The seeds' notebook: every image read, resized to 128x128 grey, kept in a list, then one
# float64 array divided by 255.
_SEEDS_NOTEBOOK = """
import glob, sys, cv2, numpy as np
images = [cv2.resize(cv2.imread(p, cv2.IMREAD_GRAYSCALE), (128, 128)) for p in sorted(glob.glob(sys.argv[1]))]
data = np.array(images) / 255.0
"""


def memory(args: argparse.Namespace) -> None:
    print(f"{_load()}; commit {_commit()}")
    print(f"{'images':>7} {'pipeline peak RSS MB':>21} {'seeds notebook peak RSS MB':>27}")
    peaks = []
    for count in (int(c) for c in args.counts.split(",")):
        root, _ = _ensure_data(args.workdir, "glasses", count, args.size)
        with tempfile.TemporaryDirectory() as output:
            pipeline_mb = _peak_rss_mb(_pipeline_args("glasses", root, output, balance=True))
        seeds_mb = _peak_rss_mb(
            [sys.executable, "-c", _SEEDS_NOTEBOOK, os.path.join(root, "faces-spring-2020", "*.png")]
        )
        print(f"{count:>7} {pipeline_mb:>21.0f} {seeds_mb:>27.0f}", flush=True)
        peaks.append(pipeline_mb)
    print(f"pipeline peak at the largest count / at the smallest: {peaks[-1] / peaks[0]:.2f} (goal <= 1.15); {_load()}")


def _timed_peak(command: list[str], cwd: str | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of ``command`` in a fresh wrapper process."""
    started = time.perf_counter()
    peak = _peak_rss_mb(command, cwd)
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
    quiet.configure()
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tp = commands.add_parser("throughput")
    tp.add_argument("--sets", default=",".join(_SETS), help=f"comma-separated, of {list(_SETS)}")
    tp.add_argument("--png1024", type=int, default=5000, help="1024-px PNGs (the Kaggle glasses set's 5000)")
    tp.add_argument("--jpeg1024", type=int, default=10_000, help="1024-px JPEGs (half of face2comics: 10 000)")
    tp.add_argument("--png256", type=int, default=20_000, help="256-px PNGs")
    tp.add_argument("--runs", type=int, default=3)
    tp.add_argument("--baseline", help="a checkout of other facepipe code whose default job runs beside this one's")
    mem = commands.add_parser("memory")
    mem.add_argument("--counts", default="1000,20000")
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
