"""Real photos: facepipe's own commands on the real images beside the project.

    python bench/real_photos.py --data_root ../shared/data [--workdir DIR] [--epochs N]

Runs, for each set, exactly the commands a user would type (printed as they run; tune and
train with their defaults: the default preset for the data, tune's default space), and
prints test accuracy, the confusion matrix and the misclassified images:
  orl_glasses     320 ORL faces (92x112 grey), labels.csv id,subject,shot,glasses; split
                  60/20/20 by subject so that nobody is in two splits, not balanced (each
                  split keeps its people whole); 50x50 RGB
  face2comics_v2  40 faces + 40 comics (256x256), the Kaggle folder layout; 128x128 grey,
                  pairs kept in one split
The images are read where they are; nothing is copied into the project.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile

# The project root, so that its packages import from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pipelines import features
from pipelines.cli import ArgumentParser
from trainer import job_layout


def orl_image_flags(root: str, *, image_size: str = "50", color_mode: str = "rgb") -> list[str]:
    """The ORL set's images, labels column, classes, groups and size (no labels CSV, no splits).

    The default size is the glasses preset's; the photos themselves are 92x112 grey.
    """
    return [
        "--images",
        os.path.join(root, "images"),
        "--label_column",
        "glasses",
        "--file_pattern",
        "face-{id}.png",
        "--classes",
        "no_glasses,glasses",
        "--group_by",
        "subject",
        "--image_size",
        image_size,
        "--color_mode",
        color_mode,
    ]


def _preprocess_args(name: str, root: str) -> list[str]:
    if name == "orl_glasses":
        return [
            "--labels_csv",
            os.path.join(root, "labels.csv"),
            *orl_image_flags(root),
            # 32 people, 12 with glasses: 10% of them (3) is too few to hold both classes.
            "--splits",
            "train=0.6,validation=0.2,test=0.2",
            "--balance",
            "none",
        ]
    return ["--dataset", "comics", "--images", root]


def _run(command: list[str]) -> None:
    print(f"$ {shlex.join(command)}", flush=True)
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode:
        sys.exit(f"failed ({completed.returncode}):\n{completed.stderr[-3000:]}")


def evaluate_set(name: str, root: str, workdir: str, epochs: int | None) -> dict:
    python = sys.executable
    data_dir, job_dir = os.path.join(workdir, name, "data"), os.path.join(workdir, name, "job")
    _run([python, "-m", "pipelines.preprocess", *_preprocess_args(name, root), "--output", data_dir, "--overwrite"])
    extra = ["--epochs", str(epochs)] if epochs else []
    _run(
        [
            python,
            "-m",
            "trainer.task",
            "tune",
            "--data_dir",
            data_dir,
            "--job_dir",
            job_dir,
            "--verbose",
            "0",
            *extra,
        ]
    )
    _run(
        [python, "-m", "trainer.task", "train", "--data_dir", data_dir, "--job_dir", job_dir, "--verbose", "0", *extra]
    )
    _run([python, "-m", "trainer.task", "evaluate", "--data_dir", data_dir, "--job_dir", job_dir])
    with open(os.path.join(job_dir, job_layout.EVAL_DIR, job_layout.METRICS_FILE)) as f:
        metrics = json.load(f)
    with open(os.path.join(data_dir, features.MANIFEST_FILE)) as f:
        counts = json.load(f)["counts"]["written"]
    return {"metrics": metrics, "written": counts, "eval_dir": os.path.join(job_dir, job_layout.EVAL_DIR)}


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", required=True, help="the folder holding orl_glasses/ and face2comics_v2/")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "facepipe_real"))
    parser.add_argument("--epochs", type=int, help="override the presets' epochs (small sets need more)")
    args = parser.parse_args()
    for name in ("orl_glasses", "face2comics_v2"):
        result = evaluate_set(name, os.path.join(args.data_root, name), args.workdir, args.epochs)
        metrics = result["metrics"]
        print(f"\n{name}: written per split/class {result['written']}")
        print(
            f"  test accuracy {metrics['accuracy']:.3f}, loss {metrics['loss']:.3f}, "
            f"confusion matrix (rows true, columns predicted) {metrics['confusion_matrix']}"
        )
        wrong = metrics.get("misclassified", [])
        print(
            f"  misclassified ({len(wrong)}): " + ", ".join(f"{m['id']} (p={m['probability']:.2f})" for m in wrong[:20])
        )
        print(f"  plots and predictions: {result['eval_dir']}\n", flush=True)


if __name__ == "__main__":
    main()
