"""Command-line mistakes as one line ``error: …`` (exit 2), for every facepipe command.

Beam- and TensorFlow-free, so that ``trainer.task`` and the demo can use it without paying
for either import. :class:`ArgumentParser` is argparse's, except that a bad or missing flag
ends in that one line, which names the flag, instead of argparse's whole usage block.
"""

from __future__ import annotations

import argparse
import re
import sys
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
