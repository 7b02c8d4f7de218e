"""Flag parsing: the job's flags, Beam's pipeline options, and nothing else."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.demo import job
from pipelines.options import UsageError, parse_args

BASE = ["--images", "imgs", "--output", "out", "--labels_csv", "labels.csv"]


def test_beam_options_pass_through_to_beam():
    config, beam_args = parse_args([*BASE, "--direct_num_workers=2", "--runner", "FnApiRunner", "--overwrite"])
    assert beam_args == ["--direct_num_workers=2", "--runner", "FnApiRunner"]
    assert config.overwrite


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--overides_csv", "unknown flag --overides_csv (did you mean --overrides_csv?)"),
        ("--direct_num_worker=2", "unknown flag --direct_num_worker (did you mean --direct_num_workers?)"),
        ("--zzzz", "unknown flag --zzzz"),
    ],
)
def test_unknown_flag_is_a_usage_error_with_a_suggestion(flag, message, capsys):
    with pytest.raises(UsageError) as raised:
        parse_args([*BASE, flag, "reviewed.csv"])
    assert raised.value.code == 2
    assert str(raised.value) == message
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize("module", ["pipelines.preprocess", "pipelines.preflight"])
def test_command_lines_exit_2_with_one_line_on_a_misspelled_flag(module, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", module, *BASE, "--overides_csv", "reviewed.csv"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1] == (
        "error: unknown flag --overides_csv (did you mean --overrides_csv?)"
    )
    assert not (tmp_path / "out").exists()


def test_demo_refuses_a_misspelled_flag_before_any_stage(tmp_path):
    with pytest.raises(UsageError, match="did you mean --overrides_csv"):
        job.main(["--workdir", str(tmp_path / "runs"), "--overides_csv", "reviewed.csv"])
    assert not (tmp_path / "runs").exists()
