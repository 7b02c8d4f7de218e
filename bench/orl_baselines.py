"""What the ORL glasses set supports without pretraining: linear models on pixels and HOG.

    python bench/orl_baselines.py --data_root ../shared/data [--folds 4]

The same subject-grouped folds as bench/quality.py (every image tested once, no person in
both training and test). Each feature set is standardised and fed to a class-balanced
logistic regression, at several regularisation strengths C; the figure is the pooled
out-of-fold accuracy. Why: when these linear baselines sit at the majority rate as the CNN
presets do, the limit is the data (12 of 32 people ever wear glasses, so a model easily
learns who rather than what), not the training recipe; a gain from resolution (the native
92x112 photo, the band around the eyes) says where the signal is.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cv2
import numpy as np
from quality import _orl_inputs, fold_splits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.cli import ArgumentParser

# Rows of the 112-pixel-high ORL photo that hold the eyes (and any glasses) in every shot.
EYE_BAND = slice(28, 68)
STRENGTHS = (0.01, 0.1, 1.0)


def hog(image: np.ndarray, *, cell: int = 8, bins: int = 9) -> np.ndarray:
    """Histograms of unsigned gradient orientation per cell, weighted by magnitude, each L2-normalised."""
    image = image.astype(np.float32)
    gx, gy = cv2.Sobel(image, cv2.CV_32F, 1, 0), cv2.Sobel(image, cv2.CV_32F, 0, 1)
    magnitude = np.hypot(gx, gy)
    orientation = np.minimum(((np.arctan2(gy, gx) % np.pi) / np.pi * bins).astype(int), bins - 1)
    cells = []
    for top in range(0, image.shape[0] - cell + 1, cell):
        for left in range(0, image.shape[1] - cell + 1, cell):
            window = (slice(top, top + cell), slice(left, left + cell))
            cells.append(np.bincount(orientation[window].ravel(), magnitude[window].ravel(), bins))
    cells = np.asarray(cells)
    return (cells / (np.linalg.norm(cells, axis=1, keepdims=True) + 1e-6)).ravel()


def _features(images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """{name: [N, D]}: pixels and HOG at the presets' 50x50, HOG at full size and on the eye band."""
    small = [cv2.resize(image, (50, 50), interpolation=cv2.INTER_AREA) for image in images]
    return {
        "pixels 50x50": np.stack([image.ravel() for image in small]).astype(np.float32),
        "HOG 50x50 (cells of 6)": np.stack([hog(image, cell=6) for image in small]),
        "HOG 92x112": np.stack([hog(image) for image in images]),
        "HOG eye band 92x40": np.stack([hog(image[EYE_BAND]) for image in images]),
    }


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True, help="the folder holding orl_glasses/")
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()
    root = os.path.join(args.data_root, "orl_glasses")
    header, rows, groups, strata, _ = _orl_inputs(root)
    labels = np.array([int(row[header.index("glasses")]) for row in rows])
    images = [cv2.imread(os.path.join(root, "images", f"face-{row[header.index('id')]}.png"), 0) for row in rows]
    folds = fold_splits(groups, args.folds, strata)
    print(
        f"{len(labels)} photos, {labels.mean():.3f} with glasses; majority rate {max(labels.mean(), 1 - labels.mean()):.3f}"
    )
    for name, x in _features(images).items():
        figures = []
        for strength in STRENGTHS:
            predicted = np.empty_like(labels)
            for fold in folds:
                test = fold["test"]
                model = make_pipeline(
                    StandardScaler(), LogisticRegression(C=strength, max_iter=3000, class_weight="balanced")
                )
                model.fit(x[~test], labels[~test])
                predicted[test] = model.predict(x[test])
            figures.append(f"C={strength:g}: {(predicted == labels).mean():.3f}")
        print(f"{name:24s} " + "  ".join(figures), flush=True)


if __name__ == "__main__":
    main()
