"""trainer/eval_plots.py: the misclassified grid."""

from __future__ import annotations

import numpy as np
from PIL import Image

from trainer import eval_plots


def test_misclassified_grid_plot(tmp_path):
    rows = [{"label": "no", "predicted": "yes", "probability": 0.7 + i / 100} for i in range(7)]
    pixels = np.random.default_rng(0).integers(0, 255, (7, 16, 16, 1), dtype=np.uint8)
    eval_plots.plot_misclassified(pixels, rows, str(tmp_path / "grid.png"))
    with Image.open(tmp_path / "grid.png") as image:
        assert image.width > 300 and image.height > 250  # 5 columns x 2 rows
