"""Batch prediction on image files with the exported serving model (no data dir needed).

Every readable image is predicted; an unreadable one (missing, not an image, larger than
``max_pixels`` by its header, or one the serving graph cannot decode) gets a row with an
``error`` and a line on stderr, and the others are predicted all the same.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import tensorflow as tf
from PIL import Image

from pipelines import features
from trainer import atomic, errors, export

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
COLUMNS = ("path", "probability", "label", "error")


class Prediction(NamedTuple):
    """One input file: P(class 1) and its label, or why it could not be predicted."""

    path: str
    probability: float | None
    label: str
    error: str = ""


class _Unreadable(Exception):
    """An input file that cannot be predicted; the message says why."""


def list_images(paths: Sequence[str]) -> list[str]:
    """Image files named directly or found (non-recursively) in named folders, sorted per folder.

    Raises MissingFile for a named path that does not exist, DataError when there is
    nothing to predict.
    """
    files: list[str] = []
    for path in paths:
        if tf.io.gfile.isdir(path):
            names = sorted(tf.io.gfile.listdir(path))
            files += [tf.io.gfile.join(path, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif tf.io.gfile.exists(path):
            files.append(path)
        else:
            raise errors.MissingFile(f"--input {path}: no such file or folder")
    if not files:
        raise errors.DataError(f"--input: no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(paths)}")
    return files


def read_image(path: str, *, max_pixels: int) -> bytes:
    """The encoded file, once its header says it is an image of at most ``max_pixels``."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.NotFoundError as e:
        raise _Unreadable("no such file") from e
    except tf.errors.OpError as e:
        raise _Unreadable(f"cannot read: {e.message}") from e
    try:
        # Image.open reads the header only; nothing is decoded here.
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _Unreadable(f"not a readable image ({e})") from e
    if width * height > max_pixels:
        raise _Unreadable(f"{width}x{height} pixels > --max_pixels {max_pixels}: refused before decoding")
    return data


def _batches(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _predict_batch(serving_default, batch: list[tuple[str, bytes]]) -> list[Prediction]:
    """Predictions for readable files; a batch the graph cannot decode is retried file by file."""
    try:
        outputs = serving_default(image_bytes=tf.constant([data for _, data in batch]))
    except tf.errors.InvalidArgumentError as e:
        if len(batch) > 1:
            return [row for item in batch for row in _predict_batch(serving_default, [item])]
        return [Prediction(batch[0][0], None, "", f"cannot decode: {e.message.splitlines()[0]}")]
    return [
        Prediction(path, float(probability), label.decode("utf-8"))
        for (path, _), probability, label in zip(
            batch, outputs["probability"].numpy(), outputs["label"].numpy(), strict=True
        )
    ]


def predict(
    export_dir: str,
    paths: Sequence[str],
    *,
    output: str | None = None,
    batch_size: int = 32,
    max_pixels: int = features.MAX_PIXELS,
) -> list[Prediction]:
    """One row per input file; printed as CSV and written to ``output`` if given.

    Raises DataError when not a single file could be predicted.
    """
    serving_default, _ = export.load_serving(export_dir)
    rows: list[Prediction] = []
    for names in _batches(list_images(paths), batch_size):
        readable = []
        for path in names:
            try:
                readable.append((path, read_image(path, max_pixels=max_pixels)))
            except _Unreadable as e:
                rows.append(Prediction(path, None, "", str(e)))
        if readable:
            rows += _predict_batch(serving_default, readable)
    failed = [row for row in rows if row.error]
    for row in failed:
        print(f"skipped {row.path}: {row.error}", file=sys.stderr)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    writer.writerows(
        (row.path, "" if row.probability is None else f"{row.probability:.6f}", row.label, row.error) for row in rows
    )
    print(buffer.getvalue(), end="")
    if output:
        atomic.write(output, buffer.getvalue())
        logging.info("predictions for %d images written to %s", len(rows) - len(failed), output)
    if len(failed) == len(rows):
        raise errors.DataError(f"none of the {len(rows)} input file(s) could be predicted (see the lines above)")
    return rows
