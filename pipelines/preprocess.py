"""Preprocessing job: raw images -> TFRecord shards, tf.Transform statistics and a manifest.

    python -m pipelines.preprocess --dataset glasses --images DIR --output OUT \
        [--overrides_csv F] [--exclude F] [app flags] [Beam pipeline options]

Runs in-process on the DirectRunner by default; ``--direct_running_mode=multi_processing
--direct_num_workers=N`` spreads it over local processes, and ``--runner DataflowRunner``
or ``--runner FlinkRunner`` over a cluster (see README).
"""

from __future__ import annotations

# The imports after quiet.preload() follow code: TensorFlow must see its log level first.
# ruff: noqa: E402
import contextlib
import ctypes
import fnmatch
import logging
import os
import posixpath
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator, Sequence
from typing import Any

from pipelines import quiet
from pipelines.tensorflow_import import without_eager_keras

# Before Beam and tf.Transform import TensorFlow (see pipelines/quiet.py), and without the
# Keras 3 that TensorFlow would load for nothing (see pipelines/tensorflow_import.py).
quiet.configure()
with without_eager_keras():
    quiet.preload("tensorflow")

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines import cache, croissant, features, locks, manifest, output_dir, staging, transforms
from pipelines.cli import os_error_line, usage_error
from pipelines.config import PreprocessConfig
from pipelines.dead_letters import DEAD_LETTER, NEAR_DUPLICATE, dead_letter
from pipelines.examples_index import WriteExamplesIndex
from pipelines.options import parse_args
from pipelines.quality.audit import AuditQuality
from pipelines.quality.duplicates import dropped_duplicates
from pipelines.records import NO_LABEL, UNLABELLED_SPLIT, DecodedImage, LabelledImage
from pipelines.sinks import (
    WriteDeadLetters,
    WriteQuality,
    WriteRunStatistics,
    WriteShards,
    WriteTransformStatistics,
)
from pipelines.sources import NOT_IMAGE_FILE, LabelledImages, check_csvs, resolve_vector_columns
from pipelines.transforms import (
    BatchImages,
    DecodeAndResize,
    DownsampleToSmallestClass,
    assign_split,
)

# Beam's DirectRunner first tries the Prism runner, which downloads a binary: facepipe's
# default run must not touch the network, so "DirectRunner" means the FnApiRunner here
# (the runner the DirectRunner falls back to for batch pipelines, with the same options).
_LOCAL_RUNNER = "FnApiRunner"


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """PipelineOptions from the non-app flags, with the offline local runner by default."""
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner", "direct"):
        standard.runner = _LOCAL_RUNNER
    return options


def count_images(config: PreprocessConfig) -> int:
    """How many image files the globs match: sizes the shards before the run."""
    total = 0
    for result in FileSystems.match(list(config.image_globs)):
        total += sum(1 for m in result.metadata_list if m.path.lower().endswith(features.IMAGE_EXTENSIONS))
    return total


def count_unlisted(config: PreprocessConfig) -> int:
    """Files in the image globs' folders that no glob matches (``face-1.PNG``, ``face-2.jpg``,
    ``notes.txt`` beside a preset's ``face-*.png``): reported, since the pipeline never sees them."""
    patterns: dict[str, list[str]] = {}
    for pattern in config.image_globs:
        folder, name = posixpath.split(pattern)
        if not any(ch in folder for ch in "*?["):
            patterns.setdefault(folder, []).append(name)
    unlisted = 0
    for folder, names in patterns.items():
        for result in FileSystems.match([FileSystems.join(folder, "*")]):
            unlisted += sum(
                1
                for m in result.metadata_list
                if not any(fnmatch.fnmatchcase(posixpath.basename(m.path), name) for name in names)
            )
    return unlisted


def _split(image: LabelledImage, config: PreprocessConfig) -> str:
    return UNLABELLED_SPLIT if image.label == NO_LABEL else assign_split(image, config)


def _drop_duplicates(batch: list[DecodedImage], dropped: dict) -> Iterator:
    """--dedupe keep_one: an image that a kept one duplicates becomes a dead letter."""
    kept = []
    for image in batch:
        if image.id in dropped:
            yield dead_letter(
                image_id=image.id, stage="dedupe", reason=NEAR_DUPLICATE, detail=f"duplicate of {dropped[image.id]}"
            )
        else:
            kept.append(image)
    if kept:
        yield kept


def _labelled_only(batch: list[DecodedImage]) -> list[list[DecodedImage]]:
    """A batch without its unlabelled images (audited, never written) and their quality; [] when none is left."""
    labelled = [image._replace(quality=None) for image in batch if image.split != UNLABELLED_SPLIT]
    return [labelled] if labelled else []


def _images(batches, label: str):
    """[DecodedImage] -> DecodedImage, for a step that takes the images one by one."""
    return batches | label >> beam.FlatMap(lambda batch: batch)


def build_pipeline(pipeline: beam.Pipeline, config: PreprocessConfig, *, estimated_images: int, temp_dir: str) -> None:
    """Wires sources -> transforms -> sinks onto ``pipeline``."""
    import tensorflow_transform.beam as tft_beam

    staging_dir = FileSystems.join(config.output_dir, output_dir.STAGING_DIR)

    sources = pipeline | "Sources" >> LabelledImages(config, staging_dir=staging_dir)
    # sources["images"]: LabelledImage, the unlabelled ones (for the audit alone) with label
    # NO_LABEL; a vector as its digest and location (staged at the parse)
    decoded = (
        sources["images"]
        | "AssignSplit" >> beam.Map(lambda image: (_split(image, config), image))
        # (split, LabelledImage); fused with the join's output stage: the join is a shuffle by
        # id, which spreads the images over the workers as a Reshuffle would.
        | "BatchImages" >> beam.ParDo(BatchImages())
        # [(split, LabelledImage)]: from here to the writer the unit of work is a batch
        # (transforms.BATCH_IMAGES images, BATCH_BYTES of files at most)
        | "DecodeAndResize" >> beam.ParDo(DecodeAndResize(config)).with_outputs(DEAD_LETTER, main="batches")
        # batches: [DecodedImage(id, label, split, pixels, content_hash, group, vector, quality, path)],
        # decoded on --decode_threads threads; the unlabelled ones without pixels, label None,
        # split UNLABELLED_SPLIT
    )
    dead_letters = [sources[DEAD_LETTER], decoded[DEAD_LETTER]]
    staged = decoded.batches | "StagePixels" >> beam.ParDo(staging.StagePixels(staging_dir))
    # [DecodedImage] without pixels or vector: they wait in the batch's staging file (``staged``)
    # for the writer, so that nothing below holds them in memory at a stage boundary
    audit = _images(staged, "AuditedImages") | "QualityAudit" >> AuditQuality(
        stash_dir=staging_dir,
        threshold=config.outlier_threshold,
        distance=config.duplicate_distance,
        similarity=config.duplicate_similarity,
    )
    _ = audit | "WriteQuality" >> WriteQuality(config.output_dir)
    labelled = staged | "LabelledOnly" >> beam.FlatMap(_labelled_only)
    # labelled: [DecodedImage] without pixels, vector or quality, the unlabelled ones gone
    unique = labelled
    if config.dedupe == "keep_one":
        # The groups are known only once every image is decoded: a side input of the dropped
        # ids (one per duplicate, not per image) joins them to the images before the writer.
        dropped = beam.pvalue.AsDict(audit["groups"] | "DroppedIds" >> beam.FlatMap(dropped_duplicates))
        deduped = unique | "Dedupe" >> beam.FlatMap(_drop_duplicates, dropped).with_outputs(DEAD_LETTER, main="kept")
        unique = deduped.kept
        dead_letters.append(deduped[DEAD_LETTER])
    # unique: [DecodedImage] without pixels, vector or quality, one per duplicate group with keep_one
    if config.balance == "downsample":
        # On the batches themselves: a kept image stays in its batch, so no grouping by staging
        # file follows (it held every kept image as Python objects, docs/benchmarks.md section 2).
        balanced = unique | "Balance" >> DownsampleToSmallestClass(config.seed)
        kept = balanced["kept"]
        dead_letters.append(balanced[DEAD_LETTER])
    else:
        kept = unique
    # kept: [DecodedImage] without pixels of one staging file, the examples that go into the shards
    written = kept | "RestorePixels" >> staging.RestorePixels()
    # written: DecodedImage with pixels and vector, read back one staging file (batch) at a time
    # (the vectors by offset from theirs)

    _ = written | "WriteShards" >> WriteShards(config, estimated_images)
    kept_images = _images(kept, "KeptImages")
    # kept_images: DecodedImage without pixels, one by one: what the index and the counts read
    _ = kept_images | "ExamplesIndex" >> WriteExamplesIndex(config, estimated_images)
    train = written | "TrainOnly" >> beam.Filter(lambda image: image.split == "train")
    with tft_beam.Context(temp_dir=temp_dir):
        _ = train | "TransformStatistics" >> WriteTransformStatistics(config)

    all_dead_letters = dead_letters | "FlattenDeadLetters" >> beam.Flatten()
    _ = all_dead_letters | "WriteDeadLetters" >> WriteDeadLetters(config.output_dir)
    _ = {
        "listed": sources["fingerprint"],
        "non_image_files": sources[NOT_IMAGE_FILE],
        "labelled": sources["images"],
        "dead_letters": all_dead_letters,
        "decoded": _images(unique, "DecodedImages"),
        "written": kept_images,
        "file_hashes": sources["fingerprint"],
        "content_hashes": labelled | "ContentHash" >> beam.FlatMap(lambda batch: [im.content_hash for im in batch]),
        "quality": audit["stats"],
    } | "RunStatistics" >> WriteRunStatistics(config.output_dir)


def cache_counts(result: beam.runners.runner.PipelineResult, config: PreprocessConfig) -> dict[str, Any] | None:
    """The decode cache's counters of a finished run (None when the cache was off)."""
    if not config.cache_dir:
        return None
    counters = result.metrics().query(MetricsFilter().with_namespace(transforms.NAMESPACE))["counters"]
    counts = dict.fromkeys(transforms.CACHE_COUNTERS, 0)
    for counter in counters:
        if counter.key.metric.name in counts:
            counts[counter.key.metric.name] += counter.committed or 0
    return {"dir": config.cache_dir, **counts}


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the job; returns the manifest it wrote."""
    config, beam_args = parse_args(argv)
    config = resolve_vector_columns(config)
    options = pipeline_options(beam_args)
    estimated = count_images(config)
    if not estimated:
        usage_error(
            f"--images: no image files match {list(config.image_globs)}; check --images (and --dataset's layout)"
        )
    if config.cache_dir:
        cache.check_cache_dir(config.cache_dir, config.output_dir, config.inputs)
    check_csvs(config)
    output_dir.check(config.output_dir, config.inputs, overwrite=config.overwrite)
    with locks.held(config.output_dir):  # One writer at a time (pipelines/locks.py).
        return _run_holding_the_lock(config, options, estimated)


def _run_holding_the_lock(config: PreprocessConfig, options: PipelineOptions, estimated: int) -> dict[str, Any]:
    output_dir.prepare(config.output_dir, config.inputs, overwrite=config.overwrite)
    unlisted = count_unlisted(config)
    logging.info("found %d images under %s", estimated, ", ".join(config.image_globs))
    started = time.monotonic()
    temp_dir = FileSystems.join(config.output_dir, output_dir.TFT_TEMP_DIR)
    try:
        with beam.Pipeline(options=options) as pipeline:
            build_pipeline(pipeline, config, estimated_images=estimated, temp_dir=temp_dir)
        elapsed = time.monotonic() - started
        result = manifest.finalize(
            config,
            options,
            elapsed_seconds=elapsed,
            unlisted_files=unlisted,
            cache=cache_counts(pipeline.result, config),
        )
    finally:
        output_dir.remove_run_files(config.output_dir)
    croissant.write(config.output_dir, result, config.card)
    print(manifest.summary_table(result), file=sys.stderr)
    return result


def child_pids(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    children = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{entry}/stat") as f:
                # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")".
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            children.append(int(entry))
    return children


def _die_with_parent() -> None:
    """In a new child process, before it runs: the kernel sends it SIGKILL when its parent
    thread dies (Linux prctl PR_SET_PDEATHSIG), so a SIGKILLed driver leaves no worker behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class _SdkWorkerPopen(subprocess.Popen):
    """Beam's multi-process SDK workers (``sh -c 'python -m …sdk_worker_main'``, the shell
    execs the worker): started so that they die with the driver, however it dies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("preexec_fn", _die_with_parent)
        super().__init__(*args, **kwargs)


def workers_die_with_this_process() -> None:
    """Makes the SDK workers of ``--direct_running_mode=multi_processing`` die with the driver.

    Beam starts them with ``subprocess.Popen`` from a thread that waits for them until they
    end, so "parent thread died" means "the driver died". On their own, workers of a killed
    driver wait minutes for a runner that is gone. Linux only; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    from apache_beam.runners.portability import local_job_service

    proxy = types.ModuleType("subprocess")
    proxy.__dict__.update(vars(subprocess))
    proxy.Popen = _SdkWorkerPopen
    local_job_service.subprocess = proxy


def _terminate_children(signum: int, frame: Any) -> None:
    """On SIGTERM/SIGINT: stop the SDK worker processes of a multi_processing run with us;
    on their own they wait minutes for a runner that is gone."""
    del frame
    for child in child_pids(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)
    sys.exit(128 + signum)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _terminate_children)
    workers_die_with_this_process()
    try:
        result = run(sys.argv[1:])
    except (manifest.PipelineError, locks.LockedError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:  # On a path the user gave: read-only, full disk, not a folder, ...
        sys.exit(f"error: {os_error_line(e)}")
    print(FileSystems.join(result["output_dir"], features.MANIFEST_FILE))


if __name__ == "__main__":
    main()
