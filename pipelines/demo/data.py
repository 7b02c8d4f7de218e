"""Synthetic demo datasets in the exact file layouts of two Kaggle datasets.

``glasses`` mimics "Glasses or No Glasses"::

    DIR/faces-spring-2020/face-<id>.png      ids 1..N, RGB, size x size
    DIR/train.csv                            id,v1..v512,glasses  (first 90% of the ids)
    DIR/test.csv                             id,v1..v512          (last 10%, unlabelled)

plus what a person's review of the data would produce and the generator's ground truth::

    DIR/overrides.csv    id,glasses           corrected labels: wrong train labels and all test ids
    DIR/exclusions.csv   id                   distorted images
    DIR/truth.csv        id,glasses,distorted,duplicate_of,duplicate_kind

The seed's data problems are reproduced: about 56% of the faces wear glasses, about 10% of
the train.csv labels are flipped and about 1% of the images are distorted. About 2% of the
ids hold a copy of another face (``duplicate_of``): byte-for-byte, re-encoded (JPEG saved as
PNG), cropped by 2-4% or brightened (``duplicate_kind``); half of the copies are test ids of a
train face, i.e. leakage across the train/test boundary.

As in the Kaggle set (a GAN's inputs), the latent vector ``v1..v512`` determines the face
(pipelines/demo/plan.py, which plans the labels, distortions and copies; pipelines/demo/faces.py
draws the faces, pipelines/demo/defects.py distorts and copies them).

``comics`` mimics "Comic faces paired synthetic v2"::

    DIR/face2comics_v2.0.0_by_Sxela/faces/<n>.jpg    n = 0..N-1, photo-like face
    DIR/face2comics_v2.0.0_by_Sxela/comics/<n>.jpg   the same face, comic style

Output is deterministic: image ``i`` is drawn from ``np.random.default_rng([seed, i, stream])``,
so it does not depend on the generation order, and the label plan (which ids wear glasses,
have a wrong label or are distorted) from a generator seeded with ``(seed, count)``.
Images are streamed to disk by a few threads, each writing its own files, so memory stays
bounded whatever the count.

    python -m pipelines.demo.data --dataset glasses --out DIR [--count N] [--size 1024] [--seed S]
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
from tqdm import tqdm

from pipelines import atomic
from pipelines.cli import ArgumentParser
from pipelines.datasets import (
    COMICS_DIR,
    COMICS_ROOT,
    FACES_DIR,
    GLASSES_FILE_PATTERN,
    GLASSES_IMAGE_DIR,
    GLASSES_LABEL_COLUMN,
    TEST_CSV,
    TRAIN_CSV,
)
from pipelines.demo.defects import duplicate_copy
from pipelines.demo.faces import comic_pair, glasses_photo
from pipelines.demo.plan import (
    COMICS_STREAM,
    DUPLICATE_STREAM,
    GLASSES_STREAM,
    LATENT_DIM,
    GlassesPlan,
    face_latent,
    image_rng,
    plan_duplicates,
    plan_glasses,
)

_T = TypeVar("_T")

DATASETS = ("glasses", "comics")
# Enough demo images that the seeds' CNNs learn the classes (on 600 glasses images the
# glasses CNN memorises), while the whole job stays within minutes on 2 cores. The demo's
# glasses set is a third of Kaggle's 4500 train images, so its presets train longer than
# the seed's 3 epochs (measured on 1500 demo images: 75% validation accuracy after 3 epochs,
# 86% after 10).
DEFAULT_COUNTS = {"glasses": 1500, "comics": 300}
DEFAULT_SIZE = 1024
OVERRIDES_CSV = "overrides.csv"
EXCLUSIONS_CSV = "exclusions.csv"
TRUTH_CSV = "truth.csv"
_GLASSES_CSVS = (TRAIN_CSV, TEST_CSV, OVERRIDES_CSV, EXCLUSIONS_CSV, TRUTH_CSV)
# Noisy photos barely compress, so Huffman-only deflate with the SUB filter is about as small
# as the default strategy and twice as fast.
PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_SUB,
]
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 90]
# Threads that draw and encode images; more than the cores, as encoding and writing overlap.
_WORKERS = min(8, (os.cpu_count() or 1) + 1)


def _write_image(path: Path, rgb: np.ndarray, params: list[int]) -> None:
    """Encode by the file extension and write whole or not at all (pipelines/atomic.py)."""
    ok, data = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic.write(str(path), data.tobytes(), durable=False)  # Made again by rerunning the demo.


@contextlib.contextmanager
def _atomic_csv(path: Path) -> Iterator[Any]:
    """A ``csv.writer`` on a temporary file that is renamed to ``path`` on success (pipelines/atomic.py)."""
    with atomic.writing(str(path)) as tmp, open(tmp, "w", newline="") as fh:
        yield csv.writer(fh, lineterminator="\n")


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a small CSV atomically."""
    with _atomic_csv(path) as writer:
        writer.writerow(header)
        writer.writerows(rows)


def _run(task: Callable[[int], _T], count: int, desc: str) -> Iterator[_T]:
    """Yield ``task(index)`` for ``index`` in ``range(count)``, in order, with a progress bar.

    A few threads overlap drawing with encoding (OpenCV releases the GIL); each task writes
    its own files, so at most ``_WORKERS`` images are in memory at once.
    """
    with ThreadPoolExecutor(_WORKERS) as pool:
        yield from tqdm(pool.map(task, range(count)), total=count, desc=desc, unit="img", file=sys.stderr)


def _write_review_files(out: Path, plan: GlassesPlan) -> None:
    """overrides.csv and exclusions.csv as a person's review would write them, and truth.csv."""
    ids = np.arange(1, len(plan.glasses) + 1)
    glasses, distorted = plan.glasses.astype(int), plan.distorted.astype(int)
    corrected = plan.flipped | (ids > plan.n_train)  # wrong train labels and all unlabelled test ids
    _write_csv(out / OVERRIDES_CSV, ["id", GLASSES_LABEL_COLUMN], zip(ids[corrected], glasses[corrected], strict=True))
    _write_csv(out / EXCLUSIONS_CSV, ["id"], ([i] for i in ids[plan.distorted]))
    _write_csv(out / TRUTH_CSV, ["id", GLASSES_LABEL_COLUMN, "distorted"], zip(ids, glasses, distorted, strict=True))


def _generate_glasses(out: Path, count: int, size: int, seed: int) -> dict[str, Any]:
    """Write the glasses layout; see the module docstring."""
    plan = plan_glasses(count, seed)
    image_dir = out / GLASSES_IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)

    def write_image(index: int) -> list[Any]:
        """Write image ``index`` and return its CSV row: id and latent vector."""
        image_id = index + 1
        vector, traits = face_latent(seed, image_id, bool(plan.glasses[index]))
        row = [image_id, *(f"{x:.3f}" for x in vector)]
        rng = image_rng(seed, image_id, GLASSES_STREAM)
        img = glasses_photo(rng, size, traits, bool(plan.distorted[index]))
        _write_image(image_dir / GLASSES_FILE_PATTERN.format(id=image_id), img, PNG_PARAMS)
        return row

    header = ["id", *(f"v{i}" for i in range(1, LATENT_DIM + 1))]
    with _atomic_csv(out / TRAIN_CSV) as train, _atomic_csv(out / TEST_CSV) as test:
        train.writerow([*header, GLASSES_LABEL_COLUMN])
        test.writerow(header)
        for index, row in enumerate(_run(write_image, count, f"glasses {size}px")):
            if index < plan.n_train:
                train.writerow([*row, int(plan.glasses[index] != plan.flipped[index])])
            else:
                test.writerow(row)

    _write_review_files(out, plan)
    duplicates = plan_duplicates(plan, seed)
    _write_duplicates(out, plan, duplicates, seed)
    return {
        "images": count,
        "train": plan.n_train,
        "test": count - plan.n_train,
        "glasses": int(plan.glasses.sum()),
        "wrong_labels": int(plan.flipped.sum()),
        "distorted": int(plan.distorted.sum()),
        "duplicates": len(duplicates),
        "leaking_duplicates": sum(copy > plan.n_train for copy, _, _ in duplicates),
        "paths": {
            "images": str(image_dir),
            **{name: str(out / name) for name in _GLASSES_CSVS},
        },
    }


def _write_duplicates(out: Path, plan: GlassesPlan, duplicates: Sequence[tuple[int, int, str]], seed: int) -> None:
    """Overwrite each copy id's image with its copy of the source, and add the copies to truth.csv."""
    image_dir = out / GLASSES_IMAGE_DIR
    for copy, source, kind in duplicates:
        source_path = image_dir / GLASSES_FILE_PATTERN.format(id=source)
        copy_path = image_dir / GLASSES_FILE_PATTERN.format(id=copy)
        if kind == "exact":
            atomic.write(str(copy_path), source_path.read_bytes(), durable=False)
        else:
            rgb = np.ascontiguousarray(cv2.imread(str(source_path))[..., ::-1])
            _write_image(copy_path, duplicate_copy(rgb, kind, image_rng(seed, copy, DUPLICATE_STREAM)), PNG_PARAMS)
    by_copy = {copy: (source, kind) for copy, source, kind in duplicates}
    ids = range(1, len(plan.glasses) + 1)
    rows = [[i, int(plan.glasses[i - 1]), int(plan.distorted[i - 1]), *by_copy.get(i, ("", ""))] for i in ids]
    _write_csv(out / TRUTH_CSV, ["id", GLASSES_LABEL_COLUMN, "distorted", "duplicate_of", "duplicate_kind"], rows)


def _generate_comics(out: Path, count: int, size: int, seed: int) -> dict[str, Any]:
    """Write the comics layout; see the module docstring."""
    faces_dir = out / COMICS_ROOT / FACES_DIR
    comics_dir = out / COMICS_ROOT / COMICS_DIR
    faces_dir.mkdir(parents=True, exist_ok=True)
    comics_dir.mkdir(parents=True, exist_ok=True)

    def write_pair(index: int) -> None:
        """Write face and comic number ``index``."""
        face, comic = comic_pair(image_rng(seed, index, COMICS_STREAM), size)
        _write_image(faces_dir / f"{index}.jpg", face, JPEG_PARAMS)
        _write_image(comics_dir / f"{index}.jpg", comic, JPEG_PARAMS)

    for _ in _run(write_pair, count, f"comics {size}px"):
        pass
    paths = {"faces": str(faces_dir), "comics": str(comics_dir)}
    return {"images": 2 * count, "pairs": count, "paths": paths}


def generate(dataset: str, out_dir: str, *, count: int, size: int = DEFAULT_SIZE, seed: int = 0) -> dict[str, Any]:
    """Write a demo dataset to ``out_dir`` and return a summary (counts and paths).

    ``dataset`` is "glasses" (``count`` images) or "comics" (``count`` face/comic pairs).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if count < 1 or size < 16 or seed < 0:
        raise ValueError(f"need count >= 1, size >= 16 and seed >= 0, got {count}, {size}, {seed}")
    out = Path(out_dir)
    write = _generate_glasses if dataset == "glasses" else _generate_comics
    summary = write(out, count, size, seed)
    return {"dataset": dataset, "out_dir": str(out), "count": count, "size": size, "seed": seed, **summary}


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: generate a demo dataset and print its summary as JSON."""
    parser = ArgumentParser(prog="python -m pipelines.demo.data", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--count", type=int, help=f"images (glasses) or face/comic pairs (comics); default {DEFAULT_COUNTS}"
    )
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"image side in pixels (default {DEFAULT_SIZE})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    count = DEFAULT_COUNTS[args.dataset] if args.count is None else args.count
    try:
        summary = generate(args.dataset, args.out, count=count, size=args.size, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
