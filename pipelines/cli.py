"""Command-line mistakes as one line ``error: …`` (exit 2), for every facepipe command.

Beam- and TensorFlow-free, so that ``trainer.task`` and the demo can use it without paying
for either import. :class:`ArgumentParser` is argparse's, except that a bad or missing flag
ends in that one line, which names the flag, instead of argparse's whole usage block.

``--config FILE`` (``pipelines.preprocess`` and every ``trainer.task`` command): a JSON
object of the command's flags by dest name (``{"image_size": "92,112", "epochs": 5}``)
whose values become the flags' defaults, so that flags on the command line win. A value is
what the flag takes on the command line (a string for flags such as ``--splits``) or, for a
repeatable flag, a list (the command line's occurrences replace it). A key that is not a
flag, or a value the flag refuses, ends in one line naming the file. A file may hold the
flags of several commands, each under the command's name (``{"preprocess": {...}, "train":
{...}}``, as in ``configs/``): a command reads the object under its own name and ignores the
rest of the file.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import re
import sys
from collections.abc import Callable, Collection, Sequence
from typing import NoReturn


class UsageError(SystemExit):
    """A user mistake on the command line: exits 2; ``str()`` is the message."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def usage_error(message: str) -> NoReturn:
    """Prints ``error: message`` and exits 2 (also when nothing above catches it)."""
    print(f"error: {message}", file=sys.stderr)
    raise UsageError(message)


# What to do about an OS error on a path the user gave, by its errno.
_OS_ERROR_ADVICE = {
    errno.EEXIST: "a file is in the way: give the path of a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: give a path under a folder",
    errno.EISDIR: "it is a folder: give the path of a file",
    errno.EACCES: "give a path you may write, or change its permissions",
    errno.EPERM: "give a path you may write, or change its permissions",
    errno.EROFS: "the disk is read-only: give a path on a writable disk",
    errno.ENOSPC: "the disk is full: free space, or give a path on another disk",
    errno.EDQUOT: "your disk quota is used up: free space, or give a path on another disk",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "give a shorter path",
}


def os_error_line(e: OSError) -> str:
    """An OS error on a path the user gave, as one line: the path, what went wrong, what to do."""
    what = f"{e.filename}: {e.strerror or e}" if e.filename else str(e)
    advice = _OS_ERROR_ADVICE.get(e.errno)
    return f"{what}; {advice}" if advice else what


def number_in(low: float, high: float = math.inf, *, kind: type = int) -> Callable[[str], float]:
    """An argparse ``type``: the flag's text as ``kind`` (int or float) within ``low``..``high``,
    else one line saying what it takes. For flags with physical bounds, refused up front rather
    than failing every image, epoch or batch later (NaN is refused too)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:
            what = "an integer" if kind is int else "a number"
            bounds = f">= {low:g}" if high == math.inf else f"in {low:g}..{high:g}"
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}")
        return value

    return parse


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser; its errors are :func:`usage_error`'s one line, pointing at ``--help``.

    Subparsers made with ``add_subparsers`` are of this class too (argparse's default).
    """

    def error(self, message: str) -> NoReturn:
        # argparse says "argument --epochs: invalid int value: 'x'"; a flag's own type
        # function may already start its message with the flag: say it once.
        head, colon, rest = message.partition(": ")
        if head.startswith("argument ") and colon:
            flag = head.removeprefix("argument ")  # "--count" or "-n/--count"
            said = any(re.match(re.escape(name) + r"(\W|$)", rest) for name in flag.split("/"))
            message = rest if said else f"{flag}: {rest}"
        usage_error(f"{message} (see {self.prog} --help)")


CONFIG_FLAG = "--config"


def config_path(argv: Sequence[str], prog: str) -> str | None:
    """The ``--config FILE`` in ``argv``, read before the real parse: the file may give the
    command's required flags, which the real parse checks."""
    peek = ArgumentParser(prog=prog, add_help=False)
    peek.add_argument(CONFIG_FLAG)
    return peek.parse_known_args(list(argv))[0].config


class _ConfigList(list):
    """A repeatable flag's list from a config file: the command line's first occurrence
    starts a new list instead of extending it (argparse's append copies its default)."""

    def __copy__(self) -> list:
        return []


def apply_config(
    parser: argparse.ArgumentParser,
    path: str,
    *,
    read_text: Callable[[str], str],
    read_errors: tuple[type[BaseException], ...],
    sections: Sequence[str] = (),
    not_flags: Collection[str] = ("config", "help"),
) -> None:
    """Makes the flags in the JSON file ``path`` the defaults of ``parser`` (exit 2 when it cannot).

    Args:
      read_text: reads the file (local or remote: the caller's filesystem).
      read_errors: what ``read_text`` raises for a missing or unreadable file.
      sections: keys that, when the file holds an object under one of them, name the object
        of flags to use (the first found); the rest of the file is then ignored.
      not_flags: dests that a file may not set (``--config`` itself, ``--help``, ...).
    """
    try:
        values = json.loads(read_text(path))
    except (*read_errors, json.JSONDecodeError, UnicodeDecodeError) as e:
        # Missing, a folder, unreadable, not JSON, not text: one line naming the file.
        parser.error(f"--config {path}: {e}")
    # A file of several commands' flags (configs/) that has no object for this command.
    hint = ""
    for section in sections:
        if isinstance(values, dict) and isinstance(values.get(section), dict):
            values = values[section]
            break
    else:
        if isinstance(values, dict) and any(isinstance(value, dict) for value in values.values()) and sections:
            hint = f", and the file has no {sections[-1]!r} object"
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a JSON object of flags, got {type(values).__name__}")
    actions = {action.dest: action for action in parser._actions if action.dest not in not_flags}
    for key, value in values.items():
        action = actions.get(key)
        if action is None:
            parser.error(f"unknown key {key!r} in --config {path}: not a flag of {parser.prog}{hint}")
        # argparse checks choices and types on the command line only; a file's values get the same checks.
        if action.choices is not None and value != action.default and value not in action.choices:
            parser.error(f"--config {path}: {key} {value!r} is not one of {list(action.choices)}")
        if isinstance(action, argparse._AppendAction):
            if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
                parser.error(f"--config {path}: {key} {value!r}: expected a list of strings (a repeatable flag)")
            for item in value:
                _check_type(parser, path, key, action, item)
            value = _ConfigList(value)
        elif action.nargs == 0:  # A switch (--overwrite): true or false.
            if not isinstance(value, bool):
                parser.error(f"--config {path}: {key} {value!r}: expected true or false")
        elif isinstance(value, list):
            if action.nargs not in ("+", "*"):
                parser.error(f"--config {path}: {key} {value!r}: expected one value, as on the command line")
        elif value is not None:
            # As the command line would give it (argparse converts a string default itself).
            _check_type(parser, path, key, action, value if isinstance(value, str) else json.dumps(value))
        action.default = value
        action.required = False  # The file gives it; the command line may still override it.


def _check_type(parser: argparse.ArgumentParser, path: str, key: str, action: argparse.Action, text: str) -> None:
    """``text`` through the flag's own type, as if given on the command line (one line if refused)."""
    if not callable(action.type):
        return
    try:
        action.type(text)
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        # A flag's own type function may already name the flag: say it once.
        said = str(e).startswith(f"--{key}")
        parser.error(f"--config {path}: {e}" if said else f"--config {path}: {key} {text!r}: {e}")
