"""trainer/flags.py: every command's flags, with defaults from --config FILE."""

from __future__ import annotations

import pytest

from trainer import flags


def test_config_values_are_defaults_and_command_line_flags_win(write_config):
    config = write_config(
        {"data_dir": "d", "job_dir": "j", "epochs": 3, "strategy": "default", "nondeterministic": True}
    )
    args = flags.parse_args(["train", "--config", config])
    assert (args.data_dir, args.job_dir, args.epochs, args.strategy, args.nondeterministic) == (
        "d",
        "j",
        3,
        "default",
        True,
    )
    args = flags.parse_args(["train", "--config", config, "--epochs", "5", "--job_dir", "other"])
    assert (args.data_dir, args.job_dir, args.epochs) == ("d", "other", 5)


def test_a_config_file_with_the_commands_object_uses_that_object(write_config):
    config = write_config({"about": "text", "preprocess": {"images": "i"}, "train": {"data_dir": "d", "job_dir": "j"}})
    args = flags.parse_args(["train", "--config", config, "--epochs", "2"])
    assert (args.data_dir, args.job_dir, args.epochs) == ("d", "j", 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--epochs", "0"], "--epochs: expected an integer >= 1"),
        (["train", "--patience", "-1"], "--patience: expected an integer >= 0"),
        (["train", "--clipnorm", "-1"], "--clipnorm: expected a number >= 0"),
        (["tune", "--warmup_epochs", "nan"], "--warmup_epochs: expected a number >= 0"),
        (["tune", "--max_trials", "0"], "--max_trials: expected an integer >= 1"),
        (["tune", "--executions_per_trial", "0"], "--executions_per_trial: expected an integer >= 1"),
        (["evaluate", "--batch_size", "0"], "--batch_size: expected an integer >= 1"),
        (["predict", "--batch_size", "-2"], "--batch_size: expected an integer >= 1"),
        (["predict", "--max_pixels", "0"], "--max_pixels: expected an integer >= 1"),
        (["find_label_issues", "--epochs", "-1"], "--epochs: expected an integer >= 1"),
    ],
)
def test_a_flag_beyond_its_physical_bounds_is_refused_up_front(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        flags.parse_args([*argv, "--data_dir", "d", "--job_dir", "j"])
    assert raised.value.code == 2
    assert capsys.readouterr().err == f"error: {message} (see python -m trainer.task {argv[0]} --help)\n"


def test_a_config_value_beyond_its_bounds_is_refused_naming_the_file(write_config, capsys):
    config = write_config({"data_dir": "d", "job_dir": "j", "epochs": 0})
    with pytest.raises(SystemExit):
        flags.parse_args(["train", "--config", config])
    assert capsys.readouterr().err.startswith(f"error: --config {config}: epochs '0': expected an integer >= 1")
