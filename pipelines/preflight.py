"""Preflight: check a preprocessing command before paying for a cluster run.

    python -m pipelines.preflight [the same flags as pipelines.preprocess]

Checks what commonly fails on Dataflow or Flink — paths that workers cannot read, a missing
``--setup_file`` or container image, a temp location on the wrong filesystem, inputs that
match nothing, CSVs without the expected columns, an output that would be refused — and
says exactly what to fix. Exits 1 when any check fails. Reads headers and lists files only.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from pipelines.config import PreprocessConfig
from pipelines.csv_rows import CsvError, LabelsCsvLayout
from pipelines.findings import Finding, report
from pipelines.options import parse_args
from pipelines.output_dir import refusal
from pipelines.paths import is_remote
from pipelines.sources import CSV_KINDS, csv_layout, resolve_vector_columns

# Runners whose workers run somewhere else: local paths are not theirs to read.
REMOTE_RUNNERS = ("DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner")


def _check_inputs(config: PreprocessConfig) -> list[Finding]:
    findings = []
    matched = sum(len(result.metadata_list) for result in FileSystems.match(list(config.image_globs)))
    if matched:
        findings.append(Finding(True, f"{matched} files match {list(config.image_globs)}"))
    else:
        findings.append(
            Finding(False, f"no files match {list(config.image_globs)}: check --images (and --dataset's layout)")
        )
    for kind in CSV_KINDS:
        for path in getattr(config, kind):
            try:
                layout = csv_layout(path, kind, config)  # The run's own check of the file.
            except CsvError as e:
                findings.append(Finding(False, str(e)))
                continue
            if isinstance(layout, LabelsCsvLayout) and layout.label_index is None:
                findings.append(
                    Finding(
                        True,
                        f"{path}: no label column {config.label_column!r}: its ids are "
                        "unlabelled unless overridden (fine for a Kaggle test.csv)",
                    )
                )
    return findings


def _check_output(config: PreprocessConfig) -> list[Finding]:
    reason = refusal(config.output_dir, config.inputs, overwrite=config.overwrite)
    if reason:
        return [Finding(False, reason)]
    return [Finding(True, f"output {config.output_dir} is free")]


def _check_runner(config: PreprocessConfig, options: PipelineOptions) -> list[Finding]:
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if runner not in REMOTE_RUNNERS:
        return [Finding(True, f"{runner} runs on this machine: local paths are fine")]
    findings = []
    portable = options.view_as(PortableOptions)
    same_machine = runner == "PortableRunner" and portable.environment_type in ("EXTERNAL", "LOOPBACK")
    paths = [*config.image_globs, *config.labels_csv, *config.overrides_csv, *config.exclude_csv, config.output_dir]
    local = [p for p in paths if not is_remote(p)]
    if local and not same_machine:
        findings.append(
            Finding(
                False,
                f"{runner} workers cannot read local paths {local}: "
                "copy the data to gs:// (or s3://, hdfs://) and use that",
            )
        )
    setup = options.view_as(SetupOptions)
    image = options.view_as(WorkerOptions).sdk_container_image
    if runner == "DataflowRunner":
        cloud = options.view_as(GoogleCloudOptions)
        if not setup.setup_file and not image:
            findings.append(
                Finding(
                    False,
                    "Dataflow workers need facepipe: pass --setup_file ./setup.py or "
                    "--sdk_container_image with the Dockerfile's image",
                )
            )
        for name, value in (("--project", cloud.project), ("--region", cloud.region)):
            if not value:
                findings.append(Finding(False, f"DataflowRunner needs {name}"))
        if not cloud.temp_location or not is_remote(cloud.temp_location):
            findings.append(Finding(False, "DataflowRunner needs --temp_location gs://BUCKET/tmp"))
    elif portable.environment_type == "DOCKER" and not portable.environment_config:
        findings.append(
            Finding(
                False,
                f"{runner} with DOCKER workers needs --environment_config IMAGE "
                "(the Dockerfile's image, which has facepipe installed)",
            )
        )
    if not findings:
        findings.append(Finding(True, f"{runner}: paths and worker environment look right"))
    return findings


def preflight(argv: Sequence[str]) -> list[Finding]:
    """All findings for a preprocessing command line (its arguments without the program)."""
    config, beam_args = parse_args(argv, prog="python -m pipelines.preflight")
    config = resolve_vector_columns(config)
    options = PipelineOptions(beam_args)
    return [*_check_inputs(config), *_check_output(config), *_check_runner(config, options)]


def main() -> None:
    sys.exit(report(preflight(sys.argv[1:])))


if __name__ == "__main__":
    main()
