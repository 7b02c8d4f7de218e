"""``python -m pipelines.review``: runs the command line (pipelines/review/cli.py)."""

from __future__ import annotations

import sys

from pipelines.review.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
