"""The preprocessing job's own flags; everything else is Beam's PipelineOptions.

As in Beam's wordcount example, ``parse_args`` splits argv with ``parse_known_args``: the
flags below become a :class:`~pipelines.config.PreprocessConfig`, the rest (``--runner``,
``--direct_num_workers``, ``--project``, ``--flink_master``, ...) go to PipelineOptions.
A flag that is neither is a usage error (Beam itself would only log and ignore it).
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import difflib
import math
import os
import posixpath
import sys
from collections.abc import Sequence
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import features
from pipelines.cli import CONFIG_FLAG, ArgumentParser, apply_config, config_path, number_in, usage_error
from pipelines.config import DEFAULT_SPLITS, DatasetCard, NumericColumns, PreprocessConfig
from pipelines.datasets import DATASET_PRESETS
from pipelines.paths import is_remote

FROM_SOURCE = "from_source"


def beam_flags() -> set[str]:
    """Every flag of Beam's PipelineOptions classes, found the way Beam itself parses them."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    for cls in {str(cls): cls for cls in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)  # What PipelineOptions.get_all_options does.
    return set(parser._option_string_actions)


def reject_unknown_flags(args: Sequence[str], *parsers: argparse.ArgumentParser) -> None:
    """Usage error for a flag in ``args`` that is neither one of ``parsers``' nor Beam's."""
    known = beam_flags().union(*(parser._option_string_actions for parser in parsers))
    for arg in args:
        flag = arg.split("=", 1)[0]
        if not flag.startswith("--") or flag in known:
            continue
        ours = sorted({f for parser in parsers for f in parser._option_string_actions if f.startswith("--")})
        close = difflib.get_close_matches(flag, ours, n=1) or difflib.get_close_matches(flag, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        usage_error(f"unknown flag {flag}{hint}")


def _default(name: str) -> Any:
    """A :class:`PreprocessConfig` field's default: the flags default to the same values."""
    return next(field.default for field in dataclasses.fields(PreprocessConfig) if field.name == name)


def parse_image_size(text: str) -> tuple[int, int]:
    """``50`` -> (50, 50); ``64,48`` -> (64, 48) as (width, height)."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--image_size {text!r}: expected N or W,H with positive integers")
    if max(parts) > features.MAX_IMAGE_SIDE:
        raise argparse.ArgumentTypeError(
            f"--image_size {text!r}: a side above the maximum {features.MAX_IMAGE_SIDE}; the examples are resized "
            "images for training, not the originals"
        )
    return parts[0], parts[1]


def parse_splits(text: str) -> dict[str, float] | None:
    """``train=0.8,validation=0.1,test=0.1`` -> fractions summing to 1; ``from_source`` -> None."""
    if text == FROM_SOURCE:
        return None
    splits: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in features.SPLITS:
            raise argparse.ArgumentTypeError(f"--splits: unknown split {name!r}; use {features.SPLITS}")
        try:
            splits[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--splits: {name}={value!r} is not a fraction") from None
    total = sum(splits.values())
    if abs(total - 1.0) > 1e-6 or min(splits.values()) < 0:
        raise argparse.ArgumentTypeError(f"--splits {text!r}: fractions must be >= 0 and sum to 1 (got {total})")
    return splits


def parse_decode_threads(text: str) -> int:
    """0 (one per core) or a positive number of decode threads."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"--decode_threads {text}: expected 0 (one per core) or a positive number")
    return value


def parse_duplicate_distance(text: str) -> int:
    """0..15: the LSH search splits the 64-bit hash into distance + 1 bands, which must stay long."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 15:
        raise argparse.ArgumentTypeError(f"--duplicate_distance {text}: expected 0..15 bits")
    return value


def parse_similarity(text: str) -> float:
    """-1..1: a correlation."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--duplicate_similarity {text}: expected a correlation in -1..1")
    return value


def parse_class_folders(text: str) -> dict[str, int]:
    """``comics=0,faces=1`` -> {"comics": 0, "faces": 1}."""
    mapping = {}
    for part in text.split(","):
        name, _, index = part.partition("=")
        mapping[name.strip()] = int(index)
    return mapping


PROG = "python -m pipelines.preprocess"
# A --config file that holds several commands' flags keeps this job's under this key.
CONFIG_SECTION = "preprocess"


def _read_text(path: str) -> str:
    """A --config file's text, from any Beam filesystem (BeamIOError is an OSError)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read().decode("utf-8")


def build_arg_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        description="Raw images -> TFRecord shards, tf.Transform statistics and a manifest. "
        "Flags not listed here are Beam pipeline options (--runner, --direct_num_workers, ...).",
    )
    add = parser.add_argument
    add("--images", required=True, help="Directory (or glob) of PNG/JPG images; local, gs://, s3://, ...")
    add("--output", required=True, help="Output directory (local or any Beam filesystem).")
    add("--dataset", choices=sorted(DATASET_PRESETS), help="Preset for a known layout: --images is its root.")
    add("--labels_csv", action="append", help="CSV(s) of id,label; repeat for several files.")
    add("--id_column", default=None, help="Id column of the labels CSV (default: id).")
    add("--label_column", default=None, help="Label column of the labels CSV (default: label or preset).")
    add("--file_pattern", default=None, help="File name of an id, e.g. 'face-{id}.png' (default: '{id}' = stem).")
    add("--class_folders", type=parse_class_folders, help="One folder per class: 'comics=0,faces=1'.")
    add("--classes", help="Class names in label order, e.g. 'no_glasses,glasses'.")
    add("--overrides_csv", action="append", default=[], help="Hand-corrected labels (id,label); they always win.")
    add("--exclude", action="append", default=[], help="CSV with an id column, or comma-separated ids.")
    add(
        "--csv_encoding",
        default=_default("csv_encoding"),
        help="Text encoding of every CSV (default utf-8, a byte-order mark is fine; e.g. latin-1, cp1252).",
    )
    for field in dataclasses.fields(DatasetCard):
        add(
            f"--dataset_{field.name}", default="", help=f"croissant.json's {field.name} (default: the preset's source)."
        )
    add("--balance", choices=["downsample", "none"], default=_default("balance"))
    add(
        "--splits",
        type=parse_splits,
        default=dict(DEFAULT_SPLITS),
        help="train=0.8,validation=0.1,test=0.1 or from_source",
    )
    add(
        "--validation_fraction",
        type=number_in(0, 1, kind=float),
        default=_default("validation_fraction"),
        help="With from_source: part of train kept for validation.",
    )
    add("--group_by", default=None, help="Labels-CSV column (or 'stem') whose values never span two splits.")
    add(
        "--image_size",
        type=parse_image_size,
        default=None,
        help=f"N or W,H, each at most {features.MAX_IMAGE_SIDE} (default: preset's, else 50).",
    )
    add("--color_mode", choices=sorted(features.COLOR_MODES), default=None)
    add("--seed", type=int, default=_default("seed"), help="Seed of the split and balancing hashes.")
    add(
        "--num_shards",
        type=number_in(0),
        default=_default("num_shards"),
        help="Shards per split (0: from the data size).",
    )
    add(
        "--max_bad_fraction",
        type=number_in(0, 1, kind=float),
        default=_default("max_bad_fraction"),
        help="Fail when more input than this is unreadable.",
    )
    add(
        "--max_unusable_fraction",
        type=number_in(0, 1, kind=float),
        default=_default("max_unusable_fraction"),
        help="Fail when more images than this have no usable label (no_label_row, unlabelled, bad_label, ...).",
    )
    add(
        "--min_side",
        type=number_in(1),
        default=_default("min_side"),
        help="Images with a side shorter than this (pixels) are dead letters 'too_small', not upscaled.",
    )
    add(
        "--numeric_columns",
        default=None,
        help="Numeric labels-CSV columns carried into every example as one float32 vector ('latent'): "
        "v1,v2 or a range v1..v512 or a glob 'v*' (header order). 'none' turns a preset's off.",
    )
    add(
        "--max_pixels",
        type=number_in(1),
        default=_default("max_pixels"),
        help="Refuse larger images before decoding (bombs).",
    )
    add(
        "--dedupe",
        choices=["none", "keep_one"],
        default=_default("dedupe"),
        help="none: only report duplicates (quality/); keep_one: keep the lowest id of each duplicate group, "
        "dead-letter the rest as near_duplicate.",
    )
    add(
        "--outlier_threshold",
        type=number_in(0, kind=float),
        default=_default("outlier_threshold"),
        help="Robust z-score (median/MAD) beyond which sharpness, gradient anisotropy, brightness, contrast, "
        "saturation, constancy or atypicality (distance from the other half's local face spaces) flag an image "
        "(default 3.5).",
    )
    add(
        "--duplicate_distance",
        type=parse_duplicate_distance,
        default=_default("duplicate_distance"),
        help="Perceptual-hash bits (of 64) in which near duplicates may differ (default 6, at most 15).",
    )
    add(
        "--duplicate_similarity",
        type=parse_similarity,
        default=_default("duplicate_similarity"),
        help="Least correlation of two near duplicates' 16x16 grey thumbnails, beside the hash distance "
        "(default 0.97; -1 keeps every pair within --duplicate_distance).",
    )
    add("--overwrite", action="store_true", help="Replace an existing output directory.")
    add(
        "--strict",
        action="store_true",
        help="Fail the run (no manifest) when a row of --overrides_csv or --exclude is rejected (a label "
        "not in the classes, an id no image has, an unreadable row). Default: such rows are counted in the "
        "manifest and the summary names the first ids.",
    )
    add(
        "--decode_threads",
        type=parse_decode_threads,
        default=_default("decode_threads"),
        help="Threads decoding each batch of images in a worker (default 0: one per core the worker may use).",
    )
    add(
        CONFIG_FLAG,
        metavar="FILE",
        help="JSON object of these flags (dest names) used as defaults; the command line wins. "
        f'A file with a "{CONFIG_SECTION}" object (configs/*.json) uses that object.',
    )
    add(
        "--cache_dir",
        default=None,
        help="Decode cache (local or any Beam filesystem): resized pixels by content hash, reused by later "
        "runs with the same image size and colour mode. Off by default; outside --output and the inputs.",
    )
    return parser


def parse_flags(argv: Sequence[str] | None, *, prog: str = PROG) -> tuple[argparse.Namespace, list[str]]:
    """The job's flags as parsed (defaults from ``--config FILE``) and Beam's argv; reads no
    input, so a usage error only for a flag that is neither the job's nor Beam's or a bad value."""
    parser = build_arg_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    config_file = config_path(argv, prog)
    if config_file:
        apply_config(parser, config_file, read_text=_read_text, read_errors=(OSError,), sections=(CONFIG_SECTION,))
    args, beam_args = parser.parse_known_args(argv)
    reject_unknown_flags(beam_args, parser)
    return args, beam_args


def parse_args(argv: Sequence[str] | None, *, prog: str = PROG) -> tuple[PreprocessConfig, list[str]]:
    """Returns the app's config and the remaining argv for Beam's PipelineOptions; ``prog``
    is the command its errors name (the review and preflight read the same flags).

    Reads no CSV: --numeric_columns stays a request (``config.numeric_columns``) until
    pipelines.sources.resolve_vector_columns reads the labels CSVs' headers.
    """
    args, beam_args = parse_flags(argv, prog=prog)
    preset = DATASET_PRESETS.get(args.dataset, {})
    images = args.images.rstrip("/")

    def in_root(name: str) -> str:
        return posixpath.join(images, name) if is_remote(images) else os.path.join(images, name)

    if preset:
        image_globs = [in_root(g) for g in preset["image_globs"]]
        labels = args.labels_csv or [p for p in map(in_root, preset.get("labels_csv", [])) if FileSystems.exists(p)]
    elif _is_glob(images):
        image_globs, labels = [images], args.labels_csv or []
    else:
        image_globs, labels = [in_root("**")], args.labels_csv or []
    class_folders = args.class_folders or preset.get("class_folders")
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",")]
    elif "classes" in preset:
        classes = preset["classes"]
    elif class_folders:
        classes = [name for name, _ in sorted(class_folders.items(), key=lambda kv: kv[1])]
    else:
        classes = ["0", "1"]
    if not labels and not class_folders:
        usage_error("give --labels_csv, --class_folders or --dataset: images need labels")
    exclude_csv, exclude_ids = split_exclude(args.exclude, ids_have_folders=bool(class_folders))
    try:
        codecs.lookup(args.csv_encoding)
    except LookupError:
        usage_error(f"--csv_encoding {args.csv_encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1)")
    id_column = args.id_column or _default("id_column")
    label_column = args.label_column or preset.get("label_column", _default("label_column"))
    spec = preset.get("numeric_columns") if args.numeric_columns is None else args.numeric_columns
    numeric = None
    if spec and spec.strip().lower() != "none":
        if not labels:
            usage_error("--numeric_columns: the vector's columns come from a labels CSV; give --labels_csv")
        numeric = NumericColumns(spec, optional=args.numeric_columns is None)
    config = PreprocessConfig(
        image_globs=tuple(image_globs),
        output_dir=args.output,
        classes=tuple(classes),
        labels_csv=tuple(labels),
        id_column=id_column,
        label_column=label_column,
        file_pattern=args.file_pattern or preset.get("file_pattern", _default("file_pattern")),
        class_folders=class_folders,
        overrides_csv=tuple(args.overrides_csv),
        exclude_csv=exclude_csv,
        exclude_ids=exclude_ids,
        csv_encoding=args.csv_encoding,
        balance=args.balance,
        splits=args.splits,
        validation_fraction=args.validation_fraction,
        group_by=args.group_by or preset.get("group_by"),
        image_size=args.image_size or preset.get("image_size", _default("image_size")),
        color_mode=args.color_mode or preset.get("color_mode", _default("color_mode")),
        seed=args.seed,
        num_shards=args.num_shards,
        max_bad_fraction=args.max_bad_fraction,
        max_unusable_fraction=args.max_unusable_fraction,
        min_side=args.min_side,
        max_pixels=args.max_pixels,
        dedupe=args.dedupe,
        outlier_threshold=args.outlier_threshold,
        duplicate_distance=args.duplicate_distance,
        duplicate_similarity=args.duplicate_similarity,
        overwrite=args.overwrite,
        strict=args.strict,
        numeric_columns=numeric,
        cache_dir=args.cache_dir,
        decode_threads=args.decode_threads,
        dataset=args.dataset or "",
        card=DatasetCard(
            **{
                field.name: getattr(args, f"dataset_{field.name}") or preset.get("card", {}).get(field.name, "")
                for field in dataclasses.fields(DatasetCard)
            }
        ),
    )
    return config, beam_args


def split_exclude(values: Sequence[str], *, ids_have_folders: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--exclude values -> (CSV paths, ids). A value that exists is a CSV; one that looks like a
    path (a ``/``, a .csv or .txt suffix) but does not exist is a usage error, not an id.

    With --class_folders ids are ``folder/stem``, so there a ``/`` alone does not make a path.
    """
    csvs, ids = [], []
    for value in values:
        looks_like_path = value.lower().endswith((".csv", ".txt")) or ("/" in value and not ids_have_folders)
        if FileSystems.exists(value):
            csvs.append(value)
        elif looks_like_path:
            usage_error(f"--exclude {value}: no such file (give an existing CSV or comma-separated ids)")
        else:
            ids.extend(i.strip() for i in value.split(",") if i.strip())
    return tuple(csvs), tuple(ids)


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")
