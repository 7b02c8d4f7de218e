"""Batch prediction on image files with the exported serving model (no data dir needed).

Every readable image is predicted; one the pipeline's decoder refuses (pipelines/decoding.py:
missing, not an image, truncated, a corrupt JPEG, larger than ``max_pixels`` by its header,
a side under the data's --min_side; the reason is the dead letter's) gets a row with an
``error`` and a line on stderr, and the others are predicted all the same.

A model that takes the --numeric_columns vector reads it from ``vectors_csv`` (an id column
and the manifest's vector columns, as the labels CSVs have them): for each image, the row of
its id (the file name through the manifest's --file_pattern), or, for ``latent_mlp`` without
images, every row of the CSV. An image whose id has no row (or a bad value) gets an error row.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import posixpath
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from pipelines import decoding, features
from pipelines.labels import file_name_regex
from pipelines.paths import not_a_file_reason
from trainer import atomic, errors, export

COLUMNS = ("path", "probability", "label", "error")
# With --vectors_csv: each row's id too (the rows of a vector alone have no path).
VECTOR_COLUMNS = ("id", *COLUMNS)
IMAGE_ARG, VECTOR_ARG = "image_bytes", features.VECTOR_KEY  # The serving signatures' argument names.


class Prediction(NamedTuple):
    """One input file (or vector): P(class 1) and its label, or why it could not be predicted."""

    path: str
    probability: float | None
    label: str
    error: str = ""
    id: str = ""


class _Item(NamedTuple):
    """One thing to predict: its path and id, and the serving arguments it has."""

    path: str
    id: str
    arguments: dict[str, Any]


class Unreadable(Exception):
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
            files += [tf.io.gfile.join(path, n) for n in names if n.lower().endswith(features.IMAGE_EXTENSIONS)]
        elif tf.io.gfile.exists(path):
            files.append(path)
        else:
            raise errors.MissingFile(f"--input {path}: no such file or folder")
    if not files:
        raise errors.DataError(f"--input: no images ({', '.join(features.IMAGE_EXTENSIONS)}) in {', '.join(paths)}")
    return files


def read_image(path: str, *, max_pixels: int, min_side: int = features.MIN_SIDE) -> bytes:
    """The encoded file, once the pipeline's decoder accepts it (pipelines/decoding.py: the same
    checks and strict decode, so predict refuses exactly what preprocessing dead-letters, with
    the same reason); an image over ``max_pixels`` is refused by its header, before decoding."""
    if reason := not_a_file_reason(path):  # A FIFO would block the read forever.
        raise Unreadable(reason)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.NotFoundError as e:
        raise Unreadable("no such file") from e
    except tf.errors.OpError as e:
        raise Unreadable(f"cannot read: {e.message}") from e
    try:
        decoding.check_image(data, max_pixels=max_pixels, min_side=min_side)
    except decoding.UndecodableImage as e:
        raise Unreadable(f"{e.reason}: {e.detail}" if e.detail else e.reason) from e
    return data


def _predict_batch(serving_default, batch: list[_Item]) -> list[Prediction]:
    """Predictions for readable inputs; a batch the graph cannot decode is retried one by one."""
    try:
        values = {name: [item.arguments[name] for item in batch] for name in batch[0].arguments}
        # Bytes stay a Python list: a numpy bytes array would drop their trailing NUL bytes.
        outputs = serving_default(
            **{name: tf.constant(np.stack(v) if name == VECTOR_ARG else v) for name, v in values.items()}
        )
    except tf.errors.InvalidArgumentError as e:
        if len(batch) > 1:
            return [row for item in batch for row in _predict_batch(serving_default, [item])]
        return [Prediction(batch[0].path, None, "", f"cannot decode: {e.message.splitlines()[0]}", batch[0].id)]
    return [
        Prediction(item.path, float(probability), label.decode("utf-8"), "", item.id)
        for item, probability, label in zip(
            batch, outputs["probability"].numpy(), outputs["label"].numpy(), strict=True
        )
    ]


def _signature_arguments(serving_default) -> tuple[str, ...]:
    """The names ``serving_default`` takes; a plain function (a test's stand-in) takes images."""
    signature = getattr(serving_default, "structured_input_signature", None)
    return tuple(sorted(signature[1])) if signature else (IMAGE_ARG,)


def read_vectors(path: str, *, id_column: str, columns: Sequence[str]) -> Iterator[tuple[str, np.ndarray | None, str]]:
    """(id, float32 vector or None, error) per row of the CSV ``path``, streamed.

    Raises MissingFile when there is no such file, DataError when a column is missing.
    """
    try:
        f = tf.io.gfile.GFile(path)
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
    except tf.errors.NotFoundError as e:
        raise errors.MissingFile(f"--vectors_csv {path}: no such file") from e
    with f:
        missing = [c for c in (id_column, *columns) if c not in header]
        if missing:
            raise errors.DataError(
                f"--vectors_csv {path}: no column(s) {', '.join(missing)}; it needs {id_column!r} and the model's "
                f"vector columns {columns[0]}..{columns[-1]} (as in the labels CSVs)"
            )
        for row in reader:
            try:
                vector = np.array([float(row[c]) for c in columns], np.float32)
            except (TypeError, ValueError):
                vector = None
            if vector is None or not all(math.isfinite(v) for v in vector):
                yield row[id_column], None, f"bad vector in --vectors_csv {path}: a value is missing or not a number"
            else:
                yield row[id_column], vector, ""


def image_id(path: str, config: Mapping[str, Any]) -> str | None:
    """The id of an image file by the manifest's --file_pattern (and class folder); None: no match."""
    name = posixpath.basename(path.replace("\\", "/"))
    match = file_name_regex(config["file_pattern"]).match(name)
    if not match:
        return None
    folder = posixpath.basename(posixpath.dirname(path.replace("\\", "/")))
    return f"{folder}/{match.group('id')}" if config.get("class_folders") else match.group("id")


def _vector_items(vectors_csv: str, config: Mapping[str, Any]) -> Iterator[_Item | Prediction]:
    """Every row of ``vectors_csv``: an item to predict, or the row's error."""
    rows = read_vectors(vectors_csv, id_column=config["id_column"], columns=config["vector_columns"])
    for row_id, vector, error in rows:
        yield Prediction("", None, "", error, row_id) if error else _Item("", row_id, {VECTOR_ARG: vector})


def _image_items(
    files: list[str],
    *,
    arguments: Sequence[str],
    vectors: Mapping[str, Any],
    vectors_csv: str | None,
    max_pixels: int,
    min_side: int,
) -> Iterator[_Item | Prediction]:
    """Each image file: an item with the arguments the signature takes, or why it cannot be predicted."""
    config = vectors.get("config")
    for path in files:
        item_id = ""
        given: dict[str, Any] = {}
        try:
            if VECTOR_ARG in arguments:
                item_id = image_id(path, config)
                if item_id is None:
                    raise Unreadable(f"file name does not match the data's --file_pattern {config['file_pattern']!r}")
                found = vectors["by_id"].get(item_id)
                if found is None:
                    raise Unreadable(f"no vector for id {item_id} in --vectors_csv {vectors_csv}")
                if isinstance(found, str):
                    raise Unreadable(found)
                given[VECTOR_ARG] = found
            if IMAGE_ARG in arguments:
                given[IMAGE_ARG] = read_image(path, max_pixels=max_pixels, min_side=min_side)
        except Unreadable as e:
            yield Prediction(path, None, "", str(e), item_id)
            continue
        yield _Item(path, item_id, given)


def _batched_predictions(serving_default, items: Iterable[_Item | Prediction], size: int) -> Iterator[Prediction]:
    """Predictions in input order, ``size`` items per serving call; errors keep their place."""
    pending: list[_Item | Prediction] = []

    def flush() -> Iterator[Prediction]:
        batch = [item for item in pending if isinstance(item, _Item)]
        predicted = iter(_predict_batch(serving_default, batch) if batch else [])
        for item in pending:
            yield item if isinstance(item, Prediction) else next(predicted)
        pending.clear()

    for item in items:
        pending.append(item)
        if sum(isinstance(entry, _Item) for entry in pending) == size:
            yield from flush()
    yield from flush()


def predict(
    export_dir: str,
    paths: Sequence[str],
    *,
    output: str | None = None,
    batch_size: int = 32,
    max_pixels: int = features.MAX_PIXELS,
    vectors_csv: str | None = None,
) -> list[Prediction]:
    """One row per input file (or, with ``vectors_csv`` and no ``paths``, per CSV row); printed as
    CSV and written to ``output`` if given.

    Raises UsageError when the model takes a vector and no ``vectors_csv`` is given (or the other
    way round, or it takes images and none are given), DataError when nothing could be predicted.
    """
    serving_default, _ = export.load_serving(export_dir)
    arguments = _signature_arguments(serving_default)
    if VECTOR_ARG not in arguments and vectors_csv:
        raise errors.UsageError(f"--vectors_csv: the model in {export_dir} takes images only; drop --vectors_csv")
    if VECTOR_ARG in arguments and not vectors_csv:
        raise errors.UsageError(
            f"--vectors_csv FILE: the model in {export_dir} takes the --numeric_columns vector; pass a CSV with the "
            "id column and the vector columns (e.g. the labels CSV)"
        )
    if IMAGE_ARG in arguments and not paths:
        raise errors.UsageError(f"--input: the model in {export_dir} takes images; name image files or folders")
    config = export.read_serving_config(export_dir)
    if paths:
        files = list_images(paths)
        vectors: dict[str, Any] = {}
        if VECTOR_ARG in arguments:
            wanted = {image_id(path, config) for path in files}
            # Only the rows of the images given are kept: as many as the files listed.
            by_id = {
                row_id: (vector if vector is not None else error)
                for row_id, vector, error in read_vectors(
                    vectors_csv, id_column=config["id_column"], columns=config["vector_columns"]
                )
                if row_id in wanted
            }
            vectors = {"config": config, "by_id": by_id}
        items = _image_items(
            files,
            arguments=arguments,
            vectors=vectors,
            vectors_csv=vectors_csv,
            max_pixels=max_pixels,
            min_side=config.get("min_side", features.MIN_SIDE),
        )
    else:
        items = _vector_items(vectors_csv, config)
    rows = list(_batched_predictions(serving_default, items, batch_size))
    failed = [row for row in rows if row.error]
    for row in failed:
        print(f"skipped {row.path or row.id}: {row.error}", file=sys.stderr)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(VECTOR_COLUMNS if vectors_csv else COLUMNS)
    for row in rows:
        values = (row.path, "" if row.probability is None else f"{row.probability:.6f}", row.label, row.error)
        writer.writerow((row.id, *values) if vectors_csv else values)
    print(buffer.getvalue(), end="")
    if output:
        atomic.write(output, buffer.getvalue())
        logging.info("predictions for %d images written to %s", len(rows) - len(failed), output)
    if len(failed) == len(rows):
        raise errors.DataError(f"none of the {len(rows)} input file(s) could be predicted (see the lines above)")
    return rows
