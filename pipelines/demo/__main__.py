"""``python -m pipelines.demo``: the whole job end to end (see :mod:`pipelines.demo.job`)."""

from __future__ import annotations

import sys

from pipelines.demo.job import main

sys.exit(main())
