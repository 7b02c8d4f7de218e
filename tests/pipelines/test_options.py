"""Flag parsing: the job's flags, Beam's pipeline options, and nothing else."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.cli import UsageError
from pipelines.config import NumericColumns
from pipelines.demo import job
from pipelines.options import parse_args

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


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--image_size", "abc", "--image_size 'abc': expected N or W,H with positive integers"),
        ("--image_size", "0", "--image_size '0': expected N or W,H with positive integers"),
        ("--splits", "train=x,test=1", "--splits: train='x' is not a fraction"),
        ("--splits", "train=0.5,test=0.4", "--splits 'train=0.5,test=0.4': fractions must be >= 0 and sum to 1"),
        ("--duplicate_distance", "x", "--duplicate_distance x: expected 0..15 bits"),
        ("--duplicate_distance", "16", "--duplicate_distance 16: expected 0..15 bits"),
        ("--duplicate_similarity", "high", "--duplicate_similarity high: expected a correlation in -1..1"),
        ("--duplicate_similarity", "1.5", "--duplicate_similarity 1.5: expected a correlation in -1..1"),
    ],
)
def test_a_bad_flag_value_says_what_the_flag_expects(flag, value, message, capsys):
    with pytest.raises(UsageError) as raised:
        parse_args([*BASE, flag, value])
    assert raised.value.code == 2
    assert str(raised.value).startswith(message)
    assert capsys.readouterr().err == f"error: {raised.value}\n"


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


def test_numeric_columns_stay_a_request_until_the_sources_resolve_them(tmp_path):
    # The flag parser reads no CSV: the labels CSV need not even exist yet.
    config, _ = parse_args([*BASE, "--numeric_columns", "v1..v3"])
    assert config.numeric_columns == NumericColumns("v1..v3", optional=False) and config.vector_columns == ()
    config, _ = parse_args(["--dataset", "glasses", "--images", str(tmp_path), "--output", "o", *BASE[4:]])
    assert config.numeric_columns == NumericColumns("v1..v512", optional=True)
    config, _ = parse_args([*BASE, "--numeric_columns", "none"])
    assert config.numeric_columns is None
    with pytest.raises(UsageError, match="give --labels_csv"):
        parse_args(["--images", "i", "--output", "o", "--class_folders", "a=0,b=1", "--numeric_columns", "v1"])


def test_config_values_are_defaults_and_the_command_line_wins(write_config):
    config_file = write_config(
        {
            "images": "imgs",
            "output": "out",
            "labels_csv": ["a.csv", "b.csv"],
            "image_size": "92,112",
            "color_mode": "grayscale",
            "splits": "from_source",
            "seed": 7,
            "balance": "none",
        },
    )
    config, beam_args = parse_args(["--config", config_file, "--direct_num_workers=2"])
    assert (config.image_globs, config.output_dir, config.labels_csv) == (("imgs/**",), "out", ("a.csv", "b.csv"))
    assert (config.image_size, config.color_mode, config.splits, config.seed, config.balance) == (
        (92, 112),
        "grayscale",
        None,
        7,
        "none",
    )
    assert beam_args == ["--direct_num_workers=2"]
    config, _ = parse_args(
        ["--config", config_file, "--output", "elsewhere", "--image_size", "50", "--labels_csv", "c.csv", "--seed=1"]
    )
    # The command line's repeatable flag replaces the file's list; its other flags replace the file's values.
    assert (config.output_dir, config.image_size, config.labels_csv, config.seed) == (
        "elsewhere",
        (50, 50),
        ("c.csv",),
        1,
    )
    assert config.color_mode == "grayscale"


def test_a_config_file_with_a_preprocess_object_uses_that_object(write_config):
    config_file = write_config(
        {
            "about": "any text",
            "preprocess": {"images": "imgs", "output": "out", "dataset": "comics"},
            "train": {"x": 1},
        },
    )
    config, _ = parse_args(["--config", config_file])
    assert config.output_dir == "out" and config.class_folders == {"comics": 0, "faces": 1}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"images": "imgs", "overides_csv": ["x.csv"]}, "unknown key 'overides_csv' in --config {path}: not a flag of"),
        ({"balance": "upsample"}, "--config {path}: balance 'upsample' is not one of ['downsample', 'none']"),
        ({"image_size": "big"}, "--config {path}: --image_size 'big': expected N or W,H"),
        ({"seed": "x"}, "--config {path}: seed 'x': invalid literal for int()"),
        ({"seed": 1.5}, "--config {path}: seed '1.5': invalid literal for int()"),
        ({"image_size": [92, 112]}, "--config {path}: image_size [92, 112]: expected one value, as on the command"),
        ({"overwrite": "yes"}, "--config {path}: overwrite 'yes': expected true or false"),
        ({"exclude": "1,2"}, "--config {path}: exclude '1,2': expected a list of strings (a repeatable flag)"),
        (["images", "imgs"], "--config {path}: expected a JSON object of flags, got list"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_it(capsys, values, message, write_config):
    config_file = write_config(values)
    with pytest.raises(UsageError) as raised:
        parse_args([*BASE, "--config", config_file])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: " + message.format(path=config_file))


@pytest.mark.parametrize("name", ["missing.json", "."])
def test_a_config_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, capsys, name):
    config_file = str(tmp_path / name)
    with pytest.raises(UsageError):
        parse_args([*BASE, "--config", config_file])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --config {config_file}: ")


def test_a_config_file_that_is_not_json_is_one_line_naming_it(tmp_path, capsys):
    config_file = tmp_path / "flags.json"
    config_file.write_text("images: imgs\n")
    with pytest.raises(UsageError):
        parse_args([*BASE, "--config", str(config_file)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --config {config_file}: Expecting value")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max_pixels", "0", "--max_pixels: expected an integer >= 1"),  # Else every image is too_large.
        ("--min_side", "0", "--min_side: expected an integer >= 1"),
        ("--num_shards", "-1", "--num_shards: expected an integer >= 0"),
        ("--max_bad_fraction", "2", "--max_bad_fraction: expected a number in 0..1"),
        ("--max_unusable_fraction", "nan", "--max_unusable_fraction: expected a number in 0..1"),
        ("--validation_fraction", "1.5", "--validation_fraction: expected a number in 0..1"),
        ("--outlier_threshold", "-1", "--outlier_threshold: expected a number >= 0"),
    ],
)
def test_a_flag_beyond_its_physical_bounds_is_refused_up_front(flag, value, message, capsys):
    with pytest.raises(UsageError) as raised:
        parse_args([*BASE, flag, value])
    assert str(raised.value) == f"{message} (see python -m pipelines.preprocess --help)"
    assert capsys.readouterr().err == f"error: {raised.value}\n"
