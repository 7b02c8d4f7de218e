"""What the tests of the label rules (test_labels.py) and of the CSVs (test_csv_rows.py) share."""

from __future__ import annotations

from pipelines.config import PreprocessConfig
from pipelines.options import parse_args

IMAGE = ("/data/face-7.png", 123, None, "")  # (path, size, folder_label, group)


def job_config(*extra: str) -> PreprocessConfig:
    """The config of a job on /data with the classes no,yes and the flags ``extra``."""
    config, _ = parse_args(["--images", "/data", "--output", "/dev/null", "--classes", "no,yes", *extra])
    return config
