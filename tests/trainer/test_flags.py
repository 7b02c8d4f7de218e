"""trainer/flags.py: every command's flags, with defaults from --config FILE."""

from __future__ import annotations

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
