"""Batch prediction on image files with the exported serving model (no data dir needed)."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence

import tensorflow as tf

from trainer import export

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def list_images(paths: Sequence[str]) -> list[str]:
    """Image files named directly or found (non-recursively) in named folders, sorted per folder."""
    files: list[str] = []
    for path in paths:
        if tf.io.gfile.isdir(path):
            names = sorted(tf.io.gfile.listdir(path))
            files += [tf.io.gfile.join(path, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif tf.io.gfile.exists(path):
            files.append(path)
        else:
            raise FileNotFoundError(path)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {list(paths)}")
    return files


def _batches(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict(
    export_dir: str, paths: Sequence[str], *, output: str | None = None, batch_size: int = 32
) -> list[tuple[str, float, str]]:
    """Rows ``(path, probability, label)``; printed as CSV and written to ``output`` if given."""
    serving_default, _ = export.load_serving(export_dir)
    rows = []
    for batch in _batches(list_images(paths), batch_size):
        contents = [tf.io.gfile.GFile(p, "rb").read() for p in batch]
        outputs = serving_default(image_bytes=tf.constant(contents))
        for path, probability, label in zip(
            batch, outputs["probability"].numpy(), outputs["label"].numpy(), strict=True
        ):
            rows.append((path, float(probability), label.decode("utf-8")))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "probability", "label"])
    writer.writerows((p, f"{prob:.6f}", label) for p, prob, label in rows)
    print(buffer.getvalue(), end="")
    if output:
        with tf.io.gfile.GFile(output, "w") as f:
            f.write(buffer.getvalue())
        logging.info("predictions for %d images written to %s", len(rows), output)
    return rows
