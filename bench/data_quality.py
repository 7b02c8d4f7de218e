"""Data quality: the label and image audits measured against the demo's ground truth, and run
on the real sets.

    python bench/data_quality.py [--count 1500] [--size 256] [--seed 0] [--folds 5] [--data_root ../shared/data]
        [--workdir DIR] [--presets default,glasses_cnn] [--cost_count 200] [--parts demo,real]

1. ``demo``: the demo glasses set (``python -m pipelines.demo.data --seed SEED``: ~10% flipped train.csv labels, ~1%
   distorted images, ~2% exact / near copies), preprocessed with ``--balance none`` and neither
   overrides nor exclusions, so the injected problems stay; then ``find_label_issues`` as the
   README writes it (``default``: no ``--model``, no ``--epochs``: the default preset for the
   data, face_cnn), or with each ``--presets`` candidate (``--model P``), the one with the
   higher out-of-fold accuracy against the *given* labels kept (never chosen on truth). Against truth.csv it prints:
   precision@N and recall@1.5N of label_issues.csv's ranking (N: the wrong labels among the
   scored images; the ranking is the review list, the estimate's issues and every other
   label the models contradict), the recall of the distorted images among the audit's flagged ones and the
   share of clean images flagged, the recall of the injected exact / near copies (found when
   both are in one group), the groups holding no injected pair, every cross-split group, and
   the audit's cost (``image_quality``, the face-space moments and atypicality) as a share of
   the decode, timed image by image on the same files, and on ``--cost_count`` more at the Kaggle set's 1024 px.
2. ``real``: the real sets in ``--data_root`` (no truth): the same two commands, with the preset chosen
   on the demo set, on ORL (split by subject, as bench/real_photos.py does) and face2comics; how many of each kind were flagged, and a
   contact sheet (PNG) of the top 9 label suspects, quality outliers and duplicate groups.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np

# bench/ (real_photos) and the project root, so that both import from this checkout.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_photos import _preprocess_args, _run

from pipelines import features
from pipelines.cli import ArgumentParser
from pipelines.datasets import GLASSES_IMAGE_DIR, GLASSES_LABEL_COLUMN, TRAIN_CSV
from pipelines.demo import data as demo_data
from pipelines.quality.face_space import ATYPICALITY_BATCH, PatchMoments, atypicality
from pipelines.quality.measures import image_quality
from pipelines.transforms import AUDIT_BATCH, decode_with_size
from trainer import job_layout

# The README's command: no --model (the default preset for the data's shape).
DEFAULT = "default"
NEAR_KINDS = ("reencoded", "cropped", "brightened")
SHEET_SIZE = 9
TIMING_PASSES = 3
KAGGLE_SIZE = 1024  # The side of the Kaggle glasses set's images.


# --- reading the outputs ----------------------------------------------------------------


def _rows(path: str) -> Iterator[dict[str, str]]:
    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def _jsonl(pattern: str) -> Iterator[dict]:
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def quality_images(data_dir: str) -> Iterator[dict]:
    return _jsonl(os.path.join(data_dir, "quality", "images-*.jsonl"))


def quality_groups(data_dir: str) -> list[dict]:
    return list(_jsonl(os.path.join(data_dir, "quality", "duplicates-*.jsonl")))


def oof_accuracy(job_dir: str) -> tuple[float, list[float]]:
    """Out-of-fold accuracy against the given labels, overall and per fold."""
    right: dict[str, list[int]] = {}
    for row in _rows(os.path.join(job_dir, job_layout.OOF_PROBABILITIES_CSV)):
        right.setdefault(row["fold"], []).append(int(row["label"] == row["given_label"]))
    every = [x for fold in right.values() for x in fold]
    return sum(every) / len(every), [sum(v) / len(v) for _, v in sorted(right.items(), key=lambda kv: int(kv[0]))]


def model_flags(preset: str) -> list[str]:
    """``--model preset``, or none for DEFAULT (the README's command)."""
    return [] if preset == DEFAULT else ["--model", preset]


def find_label_issues(data_dir: str, job_dir: str, folds: int, extra: list[str]) -> None:
    _run([sys.executable, "-m", "trainer.task", "find_label_issues", "--data_dir", data_dir, "--job_dir", job_dir,
          "--folds", str(folds), "--verbose", "0", *extra])  # fmt: skip


# --- 1. the demo set against its truth --------------------------------------------------


def audit_cost(image_dir: str, size: tuple[int, int]) -> dict[str, float]:
    """Seconds of decode_with_size and of the audit's per-image work (image_quality on its
    pixels, adding its patches to the face-space moments, its atypicality), summed; both in
    batches as the pipeline runs them (AUDIT_BATCH decodes, then their audits)."""
    paths = sorted(glob.glob(os.path.join(image_dir, "*.png")))
    ratios, decode_s, quality_s = [], [], []
    for _ in range(TIMING_PASSES):
        decode, quality = 0.0, 0.0
        moments, patches = PatchMoments(), []
        for start in range(0, len(paths), AUDIT_BATCH):
            batch = []
            for path in paths[start : start + AUDIT_BATCH]:
                with open(path, "rb") as f:
                    data = f.read()
                t0 = time.perf_counter()
                batch.append(decode_with_size(data, size=size, color_mode="rgb", max_pixels=10**9))
                decode += time.perf_counter() - t0
            t0 = time.perf_counter()
            for decoded in batch:
                patches.append(image_quality(decoded.pixels, decoded.original_size).patches)
                moments.add(patches[-1])
            quality += time.perf_counter() - t0
        t0 = time.perf_counter()
        space = moments.face_space()
        for start in range(0, len(patches), ATYPICALITY_BATCH):  # in batches, as the pipeline measures them
            atypicality(b"".join(patches[start : start + ATYPICALITY_BATCH]), space)
        quality += time.perf_counter() - t0
        ratios.append(quality / decode)
        decode_s.append(decode)
        quality_s.append(quality)
    return {
        "images": len(paths),
        "decode_s": statistics.median(decode_s),
        "quality_s": statistics.median(quality_s),
        "ratio": statistics.median(ratios),
    }


def label_figures(data_root: str, job_dir: str) -> dict:
    truth = {row["id"]: int(row[GLASSES_LABEL_COLUMN]) for row in _rows(os.path.join(data_root, demo_data.TRUTH_CSV))}
    given = {row["id"]: int(row[GLASSES_LABEL_COLUMN]) for row in _rows(os.path.join(data_root, TRAIN_CSV))}
    scored = {row["id"] for row in _rows(os.path.join(job_dir, job_layout.OOF_PROBABILITIES_CSV))}
    wrong = {i for i in scored if given[i] != truth[i]}
    rows = list(_rows(os.path.join(job_dir, job_layout.LABEL_ISSUES_CSV)))
    ranking = [row["id"] for row in rows]  # the review list, the estimate's issues and the rest
    n = len(wrong)
    at_n, at_15n = ranking[:n], ranking[: math.ceil(1.5 * n)]
    return {
        "labelled": len(given),
        "scored": len(scored),
        "wrong": n,
        "flagged": sum(row.get("issue", "1") != "0" for row in rows),  # the estimate (num_issues)
        "listed": len(ranking),
        "precision_at_n": sum(i in wrong for i in at_n) / n,
        "recall_at_1.5n": sum(i in wrong for i in at_15n) / n,
        "wrong_flagged_anywhere": len(wrong & set(ranking)) / n,
    }


def audit_figures(data_root: str, data_dir: str) -> dict:
    truth = list(_rows(os.path.join(data_root, demo_data.TRUTH_CSV)))
    distorted = {row["id"] for row in truth if row["distorted"] == "1"}
    audited, flagged = set(), set()
    for line in quality_images(data_dir):
        audited.add(line["id"])
        if line["flags"]:
            flagged.add(line["id"])
    clean = audited - distorted
    groups = quality_groups(data_dir)
    group_of = {member: g for g, group in enumerate(groups) for member in group["members"]}
    pairs = [(row["id"], row["duplicate_of"], row["duplicate_kind"]) for row in truth if row["duplicate_of"]]
    found_groups = set()
    by_kind: dict[str, list[int]] = {"exact": [0, 0, 0], "near": [0, 0, 0]}  # injected, both audited, found
    for copy, source, kind in pairs:
        counts = by_kind["exact" if kind == "exact" else "near"]
        counts[0] += 1
        counts[1] += copy in audited and source in audited
        if copy in group_of and group_of.get(copy) == group_of.get(source):
            counts[2] += 1
            found_groups.add(group_of[copy])
    leakage = [
        {
            **{k: group[k] for k in ("members", "member_splits", "kind")},
            "injected": any({copy, source} <= set(group["members"]) for copy, source, _ in pairs),
        }
        for group in groups
        if group["leakage"]
    ]
    return {
        "audited": len(audited),
        "distorted": len(distorted),
        "distorted_audited": len(distorted & audited),
        "distorted_recall": len(distorted & flagged) / max(1, len(distorted & audited)),
        "clean_flagged": len(clean & flagged) / max(1, len(clean)),
        "clean_flagged_count": len(clean & flagged),
        "duplicates": by_kind,
        "groups": len(groups),
        "false_groups": [group["members"] for g, group in enumerate(groups) if g not in found_groups],
        "leakage": leakage,
    }


def print_audit(title: str, audit: dict) -> None:
    print(f"audit, {title}: {audit['audited']} images audited")
    print(f"  distorted: {audit['distorted']} injected, {audit['distorted_audited']} audited; "
          f"recall among flagged {audit['distorted_recall']:.3f} (goal >= 0.9); clean flagged {audit['clean_flagged']:.2%} ({audit['clean_flagged_count']} of "
          f"{audit['audited'] - audit['distorted_audited']}; goal <= 1%)")  # fmt: skip
    for kind, (injected, both, found) in audit["duplicates"].items():
        print(
            f"  {kind} duplicates: {injected} injected, {both} with both images audited, {found} found "
            f"(recall {found / max(1, both):.3f} of the audited pairs, {found / max(1, injected):.3f} of all)"
        )
    print(f"  duplicate groups: {audit['groups']}, false groups (no injected pair) {len(audit['false_groups'])}: "
          f"{audit['false_groups'][:10]}")  # fmt: skip
    print(f"  cross-split groups (leakage): {len(audit['leakage'])}")
    for group in audit["leakage"]:
        print(f"    {group['members']} in {group['member_splits']} ({group['kind']}, "
              f"{'injected' if group['injected'] else 'not injected'})")  # fmt: skip


def demo_set(args: argparse.Namespace, timings: dict[str, float]) -> str:
    """Measures the demo set against its truth; returns the preset chosen (by out-of-fold accuracy)."""
    python = sys.executable
    # Seed 0's folder keeps the name it had before --seed.
    data_root = os.path.join(
        args.workdir, f"glasses_{args.count}_{args.size}" + (f"_seed{args.seed}" if args.seed else "")
    )
    data_dir = os.path.join(args.workdir, "glasses_out")
    start = time.perf_counter()
    if not os.path.exists(os.path.join(data_root, demo_data.TRUTH_CSV)):
        _run([python, "-m", "pipelines.demo.data", "--dataset", "glasses", "--out", data_root,
              "--count", str(args.count), "--size", str(args.size), "--seed", str(args.seed)])  # fmt: skip
    timings["demo: generate"] = time.perf_counter() - start
    start = time.perf_counter()
    _run([python, "-m", "pipelines.preprocess", "--dataset", "glasses", "--images", data_root,
          "--output", data_dir, "--balance", "none", "--overwrite"])  # fmt: skip
    timings["demo: preprocess (audit included)"] = time.perf_counter() - start

    accuracy = {}
    for preset in args.presets:
        job_dir = os.path.join(args.workdir, "glasses_jobs", preset)
        start = time.perf_counter()
        find_label_issues(data_dir, job_dir, args.folds, model_flags(preset))
        timings[f"demo: find_label_issues {preset}"] = time.perf_counter() - start
        accuracy[preset] = oof_accuracy(job_dir)
    chosen = max(args.presets, key=lambda p: accuracy[p][0])
    for preset in args.presets:
        overall, per_fold = accuracy[preset]
        print(f"{preset}: out-of-fold accuracy (given labels) {overall:.3f}, per fold "
              + ", ".join(f"{a:.3f}" for a in per_fold))  # fmt: skip
    print(f"chosen by out-of-fold accuracy: {chosen}")

    labels = label_figures(data_root, os.path.join(args.workdir, "glasses_jobs", chosen))
    for preset in args.presets:
        other = label_figures(data_root, os.path.join(args.workdir, "glasses_jobs", preset))
        print(f"  {preset}: precision@N {other['precision_at_n']:.3f}, recall@1.5N {other['recall_at_1.5n']:.3f}, "
              f"{other['flagged']} flagged, {other['listed']} listed")  # fmt: skip
    audit = audit_figures(data_root, data_dir)
    start = time.perf_counter()
    cost = audit_cost(os.path.join(data_root, GLASSES_IMAGE_DIR), (50, 50))
    # The Kaggle set's images are 1024 px: the decode grows with the pixels, the audit (on the
    # 50x50 pixels written) does not.
    kaggle_root = os.path.join(args.workdir, f"glasses_{args.cost_count}_{KAGGLE_SIZE}")
    if not os.path.exists(os.path.join(kaggle_root, demo_data.TRUTH_CSV)):
        _run([python, "-m", "pipelines.demo.data", "--dataset", "glasses", "--out", kaggle_root,
              "--count", str(args.cost_count), "--size", str(KAGGLE_SIZE)])  # fmt: skip
    kaggle_cost = audit_cost(os.path.join(kaggle_root, GLASSES_IMAGE_DIR), (50, 50))
    timings["demo: decode vs audit timing"] = time.perf_counter() - start

    print(f"\nlabels ({chosen}): {labels['labelled']} labelled, {labels['scored']} scored, "
          f"N = {labels['wrong']} wrong, {labels['flagged']} flagged (the estimate), {labels['listed']} listed")  # fmt: skip
    print(f"  precision@N {labels['precision_at_n']:.3f} (goal >= 0.8), recall@1.5N {labels['recall_at_1.5n']:.3f} "
          f"(goal >= 0.9); share of the wrong ones listed at all {labels['wrong_flagged_anywhere']:.3f}")  # fmt: skip
    print_audit("every image (the unlabelled test.csv ids included)", audit)
    print(f"audit cost: the audit {cost['quality_s']:.2f} s vs decode {cost['decode_s']:.2f} s on {cost['images']} "
          f"images: {cost['ratio']:.1%} of the decode (goal <= 10%; median of {TIMING_PASSES} passes)")  # fmt: skip
    print(f"  at {KAGGLE_SIZE} px: the audit {kaggle_cost['quality_s']:.2f} s vs decode {kaggle_cost['decode_s']:.2f} s "
          f"on {kaggle_cost['images']} images: {kaggle_cost['ratio']:.1%} of the decode")  # fmt: skip
    return chosen


# --- 2. the real sets ------------------------------------------------------------------


def shard_pixels(data_dir: str, wanted: set[str]) -> dict[str, np.ndarray]:
    """The written pixels of the ``wanted`` ids only (read from the shards)."""
    import tensorflow as tf

    spec = features.raw_feature_spec()
    files = [f for split in features.SPLITS for f in sorted(glob.glob(features.shard_pattern(data_dir, split)))]
    pixels = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.io.parse_single_example(record, spec)
        image_id = example[features.ID_KEY].numpy().decode()
        if image_id in wanted:
            shape = [int(example[k]) for k in (features.HEIGHT_KEY, features.WIDTH_KEY, features.CHANNELS_KEY)]
            pixels[image_id] = np.frombuffer(example[features.IMAGE_KEY].numpy(), np.uint8).reshape(shape)
    return pixels


def contact_sheet(path: str, title: str, tiles: list[tuple[list[str], str]], pixels: dict[str, np.ndarray]) -> None:
    """A 3x3 grid; each tile the images of its ids side by side, captioned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(9, 10))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (ids, caption) in zip(axes.ravel(), tiles, strict=False):
        row = np.concatenate([pixels[i] for i in ids[:3]], axis=1)
        ax.imshow(row.squeeze(), cmap="gray" if row.shape[2] == 1 else None)
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def real_set(name: str, root: str, preset: str, args: argparse.Namespace, timings: dict[str, float]) -> None:
    data_dir, job_dir = os.path.join(args.workdir, name, "data"), os.path.join(args.workdir, name, "job")
    start = time.perf_counter()
    _run([sys.executable, "-m", "pipelines.preprocess", *_preprocess_args(name, root), "--output", data_dir,
          "--balance", "none", "--overwrite"])  # fmt: skip
    find_label_issues(data_dir, job_dir, args.folds, model_flags(preset))
    timings[f"{name}: preprocess + find_label_issues"] = time.perf_counter() - start

    suspects = list(_rows(os.path.join(job_dir, job_layout.LABEL_ISSUES_CSV)))
    outliers = [line for line in quality_images(data_dir) if line["flags"]]
    reasons: dict[str, int] = {}
    for line in outliers:
        for flag in line["flags"]:
            reasons[flag] = reasons.get(flag, 0) + 1
    # As the review page orders them: most reasons first, then the farthest out.
    outliers.sort(key=lambda line: (-len(line["flags"]), -max(abs(z) for z in line["z"].values())))
    groups = sorted(quality_groups(data_dir), key=lambda g: not g["leakage"])  # leakage first
    kinds = {k: sum(g["kind"] == k for g in groups) for k in ("exact", "near")}
    estimated = sum(row.get("issue", "1") != "0" for row in suspects)
    print(f"\n{name}: {estimated} label suspects (the estimate; {len(suspects)} listed); {len(outliers)} quality outliers {reasons}; "
          f"{len(groups)} duplicate groups {kinds}, {sum(g['leakage'] for g in groups)} across splits")  # fmt: skip

    sheets = {
        "label_suspects": [
            ([r["id"]], f"{r['id']}: {r['given_label']} -> {r['suggested_label']} ({float(r['score']):.2f})")
            for r in suspects[:SHEET_SIZE]
        ],
        "quality_outliers": [
            ([line["id"]], f"{line['id']}: {', '.join(line['flags'])}") for line in outliers[:SHEET_SIZE]
        ],
        "duplicate_groups": [
            (g["members"], f"{' '.join(g['members'][:3])} ({g['kind']}{', leak' if g['leakage'] else ''})")
            for g in groups[:SHEET_SIZE]
        ],
    }
    pixels = shard_pixels(data_dir, {i for tiles in sheets.values() for ids, _ in tiles for i in ids[:3]})
    for kind, tiles in sheets.items():
        path = os.path.join(args.workdir, f"{name}_{kind}.png")
        contact_sheet(path, f"{name}: top {len(tiles)} {kind.replace('_', ' ')}", tiles, pixels)
        print(f"  {kind}: {path}")


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="the demo generator's --seed")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cost_count", type=int, default=200, help=f"images at {KAGGLE_SIZE} px for the audit's cost")
    parser.add_argument(
        "--presets",
        type=lambda text: text.split(","),
        default=[DEFAULT],
        help="candidates, comma-separated: default (no --model) or preset names",
    )
    parser.add_argument(
        "--data_root", default="../shared/data", help="the folder holding orl_glasses/, face2comics_v2/"
    )
    parser.add_argument(
        "--parts",
        type=lambda text: text.split(","),
        default=["demo", "real"],
        help="comma list: demo (the demo set against its truth), real (the real sets, with the preset chosen on demo)",
    )
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "facepipe_data_quality"))
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    chosen = demo_set(args, timings) if "demo" in args.parts else args.presets[0]
    if "real" in args.parts:
        for name in ("orl_glasses", "face2comics_v2"):
            real_set(name, os.path.join(args.data_root, name), chosen, args, timings)
    timings["total"] = time.perf_counter() - start
    print("\nwall time (s): " + ", ".join(f"{stage} {s:.0f}" for stage, s in timings.items()))


if __name__ == "__main__":
    main()
