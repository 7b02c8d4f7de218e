"""The data sets facepipe knows by name (``--dataset``): the two Kaggle layouts, their flags'
values and their source for croissant.json. The demo data (pipelines/demo/) writes these layouts."""

from __future__ import annotations

from typing import Any

# The two Kaggle layouts' names: the presets below read them, the demo data writes them.
# "Glasses or No Glasses": faces-spring-2020/face-<id>.png, train.csv, test.csv (id,...,glasses).
GLASSES_IMAGE_DIR = "faces-spring-2020"
GLASSES_FILE_PATTERN = "face-{id}.png"
GLASSES_LABEL_COLUMN = "glasses"
TRAIN_CSV = "train.csv"
TEST_CSV = "test.csv"
# "Comic faces paired synthetic v2": <root>/comics/<n>.jpg and <root>/faces/<n>.jpg.
COMICS_ROOT = "face2comics_v2.0.0_by_Sxela"
COMICS_DIR = "comics"
FACES_DIR = "faces"
_GLASSES_IMAGES = f"{GLASSES_IMAGE_DIR}/{GLASSES_FILE_PATTERN.format(id='*')}"
# Named dataset layouts: the two Kaggle sets (and facepipe's demo data, which copies them).
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "glasses": {
        # Also the image folder nested in itself, as some downloads unpack it.
        "image_globs": [_GLASSES_IMAGES, f"{GLASSES_IMAGE_DIR}/{_GLASSES_IMAGES}"],
        "labels_csv": [TRAIN_CSV, TEST_CSV],
        "label_column": GLASSES_LABEL_COLUMN,
        "file_pattern": GLASSES_FILE_PATTERN,
        "classes": ["no_glasses", "glasses"],
        "image_size": (50, 50),
        "color_mode": "rgb",
        # Kaggle's latent vector of each face; used when every labels CSV has these columns.
        "numeric_columns": "v1..v512",
        "card": {
            "name": "glasses-or-no-glasses",
            "description": 'Jeff Heaton\'s Kaggle data set "Glasses or No Glasses": generated faces, '
            "labelled glasses / no glasses.",
            "url": "https://www.kaggle.com/datasets/jeffheaton/glasses-or-no-glasses",
            "citation": "Jeff Heaton. Glasses or No Glasses. Kaggle. "
            "https://www.kaggle.com/datasets/jeffheaton/glasses-or-no-glasses",
            "license": "see the source's terms: https://www.kaggle.com/datasets/jeffheaton/glasses-or-no-glasses",
        },
    },
    "comics": {
        "image_globs": [
            f"{COMICS_ROOT}/{COMICS_DIR}/*",
            f"{COMICS_ROOT}/{FACES_DIR}/*",
            f"{COMICS_DIR}/*",
            f"{FACES_DIR}/*",
        ],
        "class_folders": {COMICS_DIR: 0, FACES_DIR: 1},
        "classes": ["comic", "face"],
        # A face and its comic are one pair: keep them in the same split.
        "group_by": "stem",
        "card": {
            "name": "comic-faces-paired-synthetic-v2",
            "description": 'Alexander Spirin\'s (Sxela) Kaggle data set "Comic faces paired synthetic v2" '
            "(face2comics v2.0.0): real faces and their comic renderings.",
            "url": "https://www.kaggle.com/datasets/defileroff/comic-faces-paired-synthetic-v2",
            "citation": "Alexander Spirin (Sxela). Comic faces paired synthetic v2 (face2comics v2.0.0). Kaggle. "
            "https://www.kaggle.com/datasets/defileroff/comic-faces-paired-synthetic-v2",
            "license": "see the source's terms: https://www.kaggle.com/datasets/defileroff/comic-faces-paired-synthetic-v2",
        },
        "image_size": (128, 128),
        "color_mode": "grayscale",
    },
}
