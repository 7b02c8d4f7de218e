"""The command line: the review's flags, the pipeline's config from the rest, and the server's start."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from pipelines import csv_rows, datasets, options, sources
from pipelines.cli import ArgumentParser, os_error_line, usage_error
from pipelines.config import PreprocessConfig
from pipelines.review.findings import read_findings
from pipelines.review.listing import build_index, images_root, read_predictions
from pipelines.review.server import HOST, ReviewApp, ReviewServer, load_static
from pipelines.review.store import ReviewStore
from pipelines.review.thumbnails import Thumbnails


def build_arg_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m pipelines.review",
        description="Review labels nine images at a time in a local web page; writes the overrides "
        "and exclusions CSVs that python -m pipelines.preprocess reads.",
        epilog="Images and labels are found as by python -m pipelines.preprocess, which also takes "
        "--labels_csv, --id_column, --label_column, --file_pattern, --class_folders and --classes.",
    )
    add = parser.add_argument
    add("--images", required=True, help="Directory (or glob) of the images, as for the pipeline.")
    add("--dataset", choices=sorted(datasets.DATASET_PRESETS), help="Preset for a known layout: --images is its root.")
    add("--overrides_csv", required=True, help="Overrides CSV (id,<label column>) to read and keep up to date.")
    add("--exclude_csv", required=True, help="Exclusions CSV (id) to read and keep up to date.")
    add("--journal", help="Decision log (default: <overrides_csv stem>.journal.csv).")
    add("--predictions", help="The trainer's predict CSV (path,probability,label): adds 'most disagreeing first'.")
    add(
        "--label_issues",
        help="label_issues.csv of python -m trainer.task find_label_issues: adds 'suspects' (key s).",
    )
    add(
        "--quality_dir",
        help="OUT/quality of python -m pipelines.preprocess: adds 'quality outliers' (q) and 'duplicate groups' (k).",
    )
    add("--port", type=int, default=8765, help="Port on 127.0.0.1 (0: any free port).")
    add("--thumb_size", type=int, default=160, help="Longer side of the thumbnails in pixels.")
    add("--cache_size", type=int, default=2000, help="Thumbnails kept in memory.")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, PreprocessConfig]:
    """The review's own flags, and the pipeline's config from the rest (the pipeline's parser)."""
    parser = build_arg_parser()
    args, rest = parser.parse_known_args(argv)
    forwarded = ["--images", args.images, "--output", os.devnull, *rest]
    if args.dataset:
        forwarded += ["--dataset", args.dataset]
    config, unknown = options.parse_args(forwarded, prog=parser.prog)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    config = sources.resolve_vector_columns(config)
    if args.journal is None:
        args.journal = os.path.splitext(args.overrides_csv)[0] + ".journal.csv"
    files = [os.path.abspath(p) for p in (args.overrides_csv, args.exclude_csv, args.journal)]
    if len(set(files)) != 3:
        parser.error("--overrides_csv, --exclude_csv and --journal must be three different files")
    return args, config


def create_app(args: argparse.Namespace, config: PreprocessConfig) -> ReviewApp:
    """Lists and labels the images, reads the review files and loads the page."""
    root = images_root(args.images)
    items = build_index(config, root)
    if not items:
        raise SystemExit(f"error: no images found in {list(config.image_globs)}")
    probabilities = read_predictions(args.predictions, config, items) if args.predictions else {}
    findings = read_findings(args.label_issues, args.quality_dir, config.classes, items)
    store = ReviewStore(
        items,
        config,
        overrides_csv=args.overrides_csv,
        exclude_csv=args.exclude_csv,
        journal=args.journal,
        probabilities=probabilities,
        findings=findings,
    )
    thumbnails = Thumbnails(
        root=root,
        side=args.thumb_size,
        capacity=args.cache_size,
        max_pixels=config.max_pixels,
        min_side=config.min_side,
    )
    return ReviewApp(store, thumbnails, load_static(), title=args.images)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args, config = parse_args(argv)
    try:
        app = create_app(args, config)
    except csv_rows.CsvError as e:  # An overrides or exclusions CSV that is a folder, not text, ...
        usage_error(str(e))
    except OSError as e:  # Its CSVs or journal cannot be written there.
        raise SystemExit(f"error: {os_error_line(e)}") from None
    try:
        server = ReviewServer(app, args.port)
    except OSError as e:
        raise SystemExit(f"error: cannot listen on {HOST}:{args.port}: {e}") from e
    progress = app.store.progress()
    print(
        f"Reviewing {progress['total']} images ({progress['reviewed']} reviewed); writing {args.overrides_csv} and {args.exclude_csv}"
    )
    print(f"Open {server.url}  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
