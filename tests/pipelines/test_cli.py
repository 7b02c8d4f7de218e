"""Every command's flag mistakes end in one line ``error: …`` naming the flag, exit status 2."""

from __future__ import annotations

import argparse
import errno

import pytest

from pipelines import cli, portable, preprocess
from pipelines.cli import ArgumentParser, UsageError
from pipelines.demo import data, job
from pipelines.review import cli as review
from trainer import task


def _positive(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"--count {text!r}: expected a positive integer")
    return int(text)


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="tool")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("-n", "--count", type=_positive)
    parser.add_argument("--c", type=int)
    parser.add_argument("--mode", choices=["a", "b"])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("train").add_argument("--needed", required=True)
    return parser


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "x"], "--epochs: invalid int value: 'x' (see tool --help)"),
        # The flag's own message already names it: said once.
        (["--count", "-3"], "--count '-3': expected a positive integer (see tool --help)"),
        (["-n", "x"], "--count 'x': expected a positive integer (see tool --help)"),  # any of its names
        (["--c", "x"], "--c: invalid int value: 'x' (see tool --help)"),  # a prefix of another flag is not it
        (["--mode", "c"], "--mode: invalid choice: 'c' (choose from 'a', 'b') (see tool --help)"),
        (["--epochs"], "--epochs: expected one argument (see tool --help)"),
        (["stray"], "command: invalid choice: 'stray' (choose from 'train') (see tool --help)"),
        (["train"], "the following arguments are required: --needed (see tool train --help)"),
    ],
)
def test_a_mistake_is_one_line_naming_the_flag(argv, message, capsys):
    with pytest.raises(UsageError) as raised:
        _parser().parse_args(argv)
    assert raised.value.code == 2
    assert str(raised.value) == message
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.mark.parametrize(
    ("main", "argv", "flag"),
    [
        (preprocess.run, ["--images", "i", "--output", "o", "--labels_csv", "l.csv", "--seed", "x"], "--seed"),
        (task.main, ["train", "--data_dir", "d", "--job_dir", "j", "--epochs", "x"], "--epochs"),
        (task.main, [], "{tune,train,evaluate,predict,preflight,find_label_issues}"),
        (job.main, ["--dataset", "faces"], "--dataset"),
        (data.main, ["--dataset", "glasses", "--out", "o", "--count", "x"], "--count"),
        (review.main, ["--images", "i", "--overrides_csv", "o", "--exclude_csv", "e", "--port", "x"], "--port"),
        # The pipeline's own flags, read for the review: the review's command is named.
        (
            review.main,
            ["--images", "i", "--overrides_csv", "o", "--exclude_csv", "e", "--seed", "x"],
            "pipelines.review",
        ),
        (portable.main, ["job_service", "--port", "x"], "--port"),
    ],
)
def test_every_command_line_says_one_line(main, argv, flag, capsys):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], lines


def test_a_config_that_is_a_folder_or_not_text_is_one_line(tmp_path, capsys):
    binary = tmp_path / "config.json"
    binary.write_bytes(b"\xff\xfe{")
    for config in (tmp_path, binary):
        with pytest.raises(SystemExit) as raised:
            task.main(["train", "--config", str(config)])
        assert raised.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --config {config}: "), lines


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            FileExistsError(errno.EEXIST, "File exists", "out"),
            "out: File exists; a file is in the way: give the path of a folder",
        ),
        (
            NotADirectoryError(errno.ENOTDIR, "Not a directory", "f/out"),
            "f/out: Not a directory; a part of the path is a file",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "out/x"),
            "out/x: No space left on device; the disk is full: free",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "out"),
            "out: Read-only file system; the disk is read-only: give",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "out"),
            "out: Permission denied; give a path you may write",
        ),
        (OSError(errno.EIO, "Input/output error", "out"), "out: Input/output error"),
    ],
)
def test_an_os_error_is_one_line_naming_the_path_and_what_to_do(error, line):
    assert cli.os_error_line(error).startswith(line)
    assert "\n" not in cli.os_error_line(error)
