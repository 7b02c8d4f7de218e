"""Cross-validated quality: facepipe's own commands, k folds grouped by person or pair.

    python bench/quality.py --data_root ../shared/data [--workdir DIR] [--folds 4]
        [--parts orl,comics,vector,demo,dead_units] [--presets default,P,...] [--augment none,light,...] [--epochs N]
        [--orl_image_size 92,112] [--orl_color_mode grayscale] [--comics_color_mode rgb] [--comics_image_size 256]
        [--seeds 0,1,2] [--hyperparameters JSON]
        [--rotate_validation] [--train_flags "--patience 0"]

The headline rows (preset ``default``) are the README's commands as a user types them, with
no model flags: preprocess, ``tune`` (its default space and tuner), ``train`` (which reads the
tuned values), ``evaluate``; each fold's row says what ``tune`` chose on that fold's
validation people. The other rows train a named preset with its defaults, untuned.

orl     ORL glasses (320 photos, 32 people): --folds folds grouped by subject, every image
        tested once; validation (early stopping, tuning) is a sixth of the training people,
        never the test fold's. The README's command by default: the photos' own 92x112 grey,
        --balance none.
comics  face2comics_v2 (40 faces + 40 comics): folds grouped by pair (faces/<id> and
        comics/<id> are one group); 128x128 (the README's --dataset comics). The headline
        row runs the README's face2comics recipe: --color_mode rgb, tune, train --ensemble 3;
        the other rows grey unless --comics_color_mode.
vector  a demo glasses set with its v1..v512 vector (pipelines.demo.data --count 1500 --size
        256 --seed 23, a seed the demo does not use): every image the review keeps (no
        exclusions), labelled as the review labels it (overrides.csv: the truth), folds grouped
        by face (an injected copy with its source); preprocessed as the demo does (--dataset
        glasses: 50x50 RGB and the vector); by default image_latent and face_cnn with their
        defaults, untuned: which preset images with a vector should default to.
demo    the demo's glasses set (pipelines.demo.data --count 600 --size 256): preprocess as
        the demo does (its own train.csv / test.csv, validation carved from train), train
        each preset with its defaults (the seeds' at 10 epochs), evaluate on the test split.
dead_units  on that demo set, glasses_cnn with the seeds' recipe (constant Adam, no warm-up,
        no clipping) beside the shared recipe: first-epoch loss, test accuracy, collapse report.

Every fold is the same three commands a user types (printed as they run): preprocess with
per-fold train.csv / validation.csv / test.csv and --splits from_source, train, evaluate.
No hyperparameter is chosen on a test split. Prints mean ± sd accuracy over folds, the
groups with errors and wall times; writes everything to WORKDIR/quality.json. With several
--seeds every fold trains once per seed (train --seed), and a row "seeds K-ensemble" scores
the mean of the seeds' probabilities per test image: what `train --ensemble K --seed S`
exports, with seeds S..S+K-1 (docs/benchmarks.md section 9).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence

# The project root, so that its packages import from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# bench/, for the ORL set's flags that bench/real_photos.py defines.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
from real_photos import orl_image_flags

from pipelines import features
from pipelines.cli import ArgumentParser
from pipelines.demo import data as demo_data
from trainer import job_layout, models
from trainer.architectures import THRESHOLD
from trainer.folds import assign_folds

# The headline rows' "preset" and "augment": no --model, no --augment; tune, then train.
DEFAULT = "default"
# (part, preset, augment) run by default; --presets / --augment narrow or widen these.
DEFAULT_CONFIGS = (
    ("orl", DEFAULT, DEFAULT),
    ("orl", "glasses_cnn", "none"),
    ("orl", "face_cnn", "light"),
    ("orl", "face_cnn", "strong"),
    ("comics", DEFAULT, DEFAULT),
    ("comics", "comics_cnn", "none"),
    ("comics", "face_cnn", "light"),
    ("vector", "image_latent", DEFAULT),
    ("vector", "face_cnn", DEFAULT),
)
# The vector part's demo set: the demo's count and size, a seed of its own.
VECTOR_SET = ["--count", "1500", "--size", "256", "--seed", "23"]
DEMO_PRESETS = ("glasses_cnn", "face_cnn", "comics_cnn")
# Epochs of the seeds' presets on the demo set, as the demo trained them before it trained
# face_cnn (which trains for its own 30, as pipelines/demo/job.py does).
DEMO_EPOCHS = {"glasses_cnn": 10, "comics_cnn": 10}
# The README's recipe for a set beyond its generic commands (its section on real-face vs comic),
# which the headline rows run as written: (preprocess flags, train flags).
README_RECIPES = {"orl": ([], []), "comics": (["--color_mode", "rgb"], ["--ensemble", "3"]), "vector": ([], [])}
# A sixth of the training groups validate (early stopping); the rest train.
VALIDATION_FOLDS = 6
# What the seeds trained with: constant Adam from the first step, no clipping.
SEEDS_RECIPE = ["--warmup_epochs", "0", "--lr_schedule", "constant", "--clipnorm", "0"]


def _run(command: list[str]) -> float:
    """Runs ``command`` (printed first); its wall time in seconds. Exits on failure."""
    print(f"$ {shlex.join(command)}", flush=True)
    started = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode:
        sys.exit(f"failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return time.monotonic() - started


def _write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def fold_splits(
    groups: Sequence[str], folds: int, strata: Sequence[str] | None = None, validation_part: int = 0
) -> list[dict[str, np.ndarray]]:
    """Per fold, boolean masks over the examples: test (one fold), validation and train (the rest, by group).

    ``strata`` (one per example, constant within a group): validation people are drawn from
    each stratum separately. Why: by group alone, 3 of ORL's 4 folds validated on 4 people
    without glasses, so early stopping watched a one-class validation set.
    ``validation_part``: which sixth of each stratum's training people validates (the test
    folds do not depend on it).
    """
    groups = np.asarray(groups).astype(str)
    strata = np.zeros(len(groups), dtype=str) if strata is None else np.asarray(strata).astype(str)
    fold_of = assign_folds(groups, folds)
    out = []
    for fold in range(folds):
        test = fold_of == fold
        validation = np.zeros_like(test)
        for stratum in np.unique(strata[~test]):
            rows = ~test & (strata == stratum)
            count = len(np.unique(groups[rows]))
            if count >= 2:  # A stratum of one group trains: it cannot be split.
                parts = min(VALIDATION_FOLDS, count)
                validation[rows] = assign_folds(groups[rows], parts) == validation_part % parts
        out.append({"test": test, "validation": validation, "train": ~test & ~validation})
    return out


def _orl_inputs(root: str, **image: str) -> tuple[list[str], list[list[str]], list[str], list[str], list[str]]:
    """(header, rows, groups, strata, preprocess flags) of the ORL set; stratum: does the person ever wear glasses.

    ``image``: orl_image_flags' image_size / color_mode.
    """
    with open(os.path.join(root, "labels.csv"), newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [row for row in reader if row]
    groups = [row[header.index("subject")] for row in rows]
    with_glasses = {g for g, row in zip(groups, rows, strict=True) if row[header.index("glasses")] == "1"}
    strata = ["glasses" if g in with_glasses else "none" for g in groups]
    return header, rows, groups, strata, orl_image_flags(root, **image)


def _comics_inputs(root: str) -> tuple[list[str], list[list[str]], list[str], None, list[str]]:
    """(header, rows, groups, strata, preprocess flags) of face2comics: ids as the comics layout names them.

    No strata: every pair holds both classes. No --color_mode: the comics layout's grey.
    """
    rows, groups = [], []
    for folder in ("comics", "faces"):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            stem = os.path.splitext(name)[0]
            rows.append([f"{folder}/{stem}"])
            groups.append(stem)
    flags = ["--dataset", "comics", "--images", root]
    return ["id"], rows, groups, None, flags


def _vector_inputs(root: str) -> tuple[list[str], list[list[str]], list[str], None, list[str]]:
    """(header, rows, groups, strata, preprocess flags) of a demo glasses set with its vector.

    Rows: train.csv's and test.csv's ids less exclusions.csv's, each with its vector and the
    review's label (overrides.csv, else train.csv's); groups: a copy's source id, else the id.
    """

    def read(name: str) -> list[dict[str, str]]:
        with open(os.path.join(root, name), newline="") as f:
            return list(csv.DictReader(f))

    train, test = read(demo_data.TRAIN_CSV), read(demo_data.TEST_CSV)
    label = demo_data.GLASSES_LABEL_COLUMN
    reviewed = {row["id"]: row[label] for row in read(demo_data.OVERRIDES_CSV)}
    excluded = {row["id"] for row in read(demo_data.EXCLUSIONS_CSV)}
    source_of = {row["id"]: row["duplicate_of"] for row in read(demo_data.TRUTH_CSV) if row["duplicate_of"]}
    header = [*(k for k in train[0] if k != label), label]
    rows, groups = [], []
    for row in [*train, *test]:
        if row["id"] in excluded:
            continue
        rows.append([*(row[k] for k in header[:-1]), reviewed.get(row["id"], row.get(label))])
        groups.append(source_of.get(row["id"], row["id"]))
    return header, rows, groups, None, ["--dataset", "glasses", "--images", root]


def _predictions(job_dir: str) -> dict[str, tuple[int, float]]:
    """{id: (label, probability of class 1)} from a job's evaluate predictions.csv."""
    with open(os.path.join(job_dir, job_layout.EVAL_DIR, job_layout.PREDICTIONS_FILE), newline="") as f:
        return {row["id"]: (int(row["label"]), float(row["probability"])) for row in csv.DictReader(f)}


def _ensemble_errors(job_dirs: Sequence[str]) -> tuple[float, list[str]]:
    """(accuracy, ids wrong) of the mean probability over ``job_dirs``' predictions of the same test images."""
    predictions = [_predictions(job_dir) for job_dir in job_dirs]
    ids = sorted(predictions[0])
    if any(sorted(p) != ids for p in predictions):
        raise SystemExit(f"the seeds' predictions are for different images: {job_dirs}")
    labels = np.array([predictions[0][i][0] for i in ids])
    mean = np.mean([[p[i][1] for i in ids] for p in predictions], axis=0)
    wrong = (mean >= THRESHOLD).astype(int) != labels
    return float(1 - wrong.mean()), [i for i, w in zip(ids, wrong, strict=True) if w]


def _preprocess(
    header: Sequence[str], rows: Sequence[Sequence[str]], masks: dict, labels_dir: str, data_dir: str, flags
) -> float:
    """Writes one fold's train / validation / test CSVs and preprocesses them into ``data_dir``: seconds."""
    os.makedirs(labels_dir, exist_ok=True)
    csvs = []
    for split, mask in masks.items():
        csvs += ["--labels_csv", os.path.join(labels_dir, f"{split}.csv")]
        _write_csv(csvs[-1], header, [row for row, keep in zip(rows, mask, strict=True) if keep])
    return _run(
        [
            sys.executable,
            "-m",
            "pipelines.preprocess",
            *flags,
            *csvs,
            "--splits",
            "from_source",
            "--validation_fraction",
            "0",
            "--balance",
            "none",
            "--output",
            data_dir,
            "--overwrite",
        ]
    )


def _train_evaluate(
    data_dir: str, job_dir: str, preset: str, extra: Sequence[str], tune_flags: Sequence[str] = ()
) -> tuple[dict, dict]:
    """Trains and evaluates ``preset`` on ``data_dir``: (metrics.json, {tune_s, train_s, evaluate_s, ...}).

    ``preset`` DEFAULT: the documented commands, no model flags: ``tune`` (with ``tune_flags``),
    then ``train`` (with ``extra``), which reads what tune chose; "tuned" records that choice.
    """
    python = sys.executable
    trainer = [python, "-m", "trainer.task"]
    where = ["--data_dir", data_dir, "--job_dir", job_dir]
    tuned, tune_s = None, 0.0
    if preset == DEFAULT:
        tune_s = _run([*trainer, "tune", *where, "--verbose", "0", "--overwrite", *tune_flags])
        with open(os.path.join(job_dir, job_layout.BEST_HPARAMS_FILE)) as f:
            best = json.load(f)
        space = {k for k, v in models.PRESETS[best["model"]].space("small").items() if len(v) > 1}
        # trial_id None: a space of one point on this data (a task's settled values), no trial ran.
        searched = best["trial_id"] is not None
        tuned = {"model": best["model"], "searched": searched, "score": best["score"]}
        tuned.update({k: best["hyperparameters"][k] for k in space})
    model = [] if preset == DEFAULT else ["--model", preset]
    train_s = _run([*trainer, "train", *where, *model, "--verbose", "0", "--overwrite", *extra])
    evaluate_s = _run([*trainer, "evaluate", *where])
    with open(os.path.join(job_dir, job_layout.EVAL_DIR, job_layout.METRICS_FILE)) as f:
        metrics = json.load(f)
    # An ensemble (train --ensemble) has no history of its own: its members' epochs, summed.
    histories = []
    members = sorted(glob.glob(os.path.join(job_dir, job_layout.MEMBERS_DIR, "*", job_layout.HISTORY_FILE)))
    for path in [os.path.join(job_dir, job_layout.HISTORY_FILE), *members]:
        if os.path.exists(path):
            with open(path, newline="") as f:
                histories.append(list(csv.DictReader(f)))
    timing = {
        "tuned": tuned,
        "tune_s": tune_s,
        "train_s": train_s,
        "evaluate_s": evaluate_s,
        "epochs_run": sum(map(len, histories)),
        "first_epoch_loss": float(histories[0][0]["loss"]) if histories and histories[0] else float("nan"),
    }
    return metrics, timing


def cross_validate(
    part: str,
    root: str,
    workdir: str,
    folds: int,
    configs,
    epochs: int | None,
    orl_image: dict[str, str],
    seeds: Sequence[int] = (0,),
    comics_color_mode: str | None = None,
    comics_image_size: str | None = None,
    train_flags: Sequence[str] = (),
    rotate_validation: bool = False,
) -> list[dict]:
    """Every (preset, augment) of ``configs``, trained with every seed, over ``folds`` grouped folds of one set.

    ``epochs`` None: each preset's own; ``orl_image``: the ORL set's image_size / color_mode;
    ``comics_color_mode``, ``comics_image_size``: face2comics' for the named presets' rows.
    Several ``seeds``: one row per seed, and one for the mean of their probabilities.
    ``train_flags``: given to every train. ``rotate_validation``: seed s validates on the
    (s mod 6)-th sixth of the training people, so that the seeds' ensemble trained on all of them.
    """
    if part == "orl":
        header, rows, groups, strata, flags = _orl_inputs(root, **orl_image)
        named_flags = []
    elif part == "vector":
        header, rows, groups, strata, flags = _vector_inputs(root)
        named_flags = []
    else:
        header, rows, groups, strata, flags = _comics_inputs(root)
        named_flags = ["--color_mode", comics_color_mode] if comics_color_mode else []
        named_flags += ["--image_size", comics_image_size] if comics_image_size else []
    recipe_flags, recipe_train_flags = README_RECIPES[part]
    # Per preset, the preprocess flags over ``flags``: the headline rows the README's recipe.
    variant_of = {preset: tuple(recipe_flags if preset == DEFAULT else named_flags) for preset, _ in configs}
    runs = [(preset, augment, seed) for preset, augment in configs for seed in seeds]
    results = {run: {"folds": [], "errors": Counter(), "counts": Counter()} for run in runs}
    ensembles = {config: {"folds": [], "errors": Counter()} for config in configs} if len(seeds) > 1 else {}
    group_of = dict(zip((row[0] for row in rows), groups, strict=True))  # Both layouts: the id comes first.
    preprocess_s = []
    # The validation sixth each seed uses: the first, or with rotate_validation the seed's own.
    part_of_seed = {seed: (seed % VALIDATION_FOLDS if rotate_validation else 0) for seed in seeds}
    splits = {k: fold_splits(groups, folds, strata, k) for k in sorted(set(part_of_seed.values()))}
    for fold in range(folds):
        fold_dir = os.path.join(workdir, part, f"fold{fold}")
        data_dirs = {}
        for k, fold_masks in splits.items():
            for variant in sorted(set(variant_of.values())):
                # The first sixth's folders keep the names they had before rotate_validation;
                # a --color_mode's data is data_<mode>.
                suffix = (f"_v{k}" if k else "") + "".join(f"_{v}" for v in variant if not v.startswith("--"))
                labels_dir = os.path.join(fold_dir, "labels" + (f"_v{k}" if k else ""))
                data_dirs[k, variant] = os.path.join(fold_dir, "data" + suffix)
                preprocess_s.append(
                    _preprocess(header, rows, fold_masks[fold], labels_dir, data_dirs[k, variant], [*flags, *variant])
                )
        for preset, augment, seed in runs:
            # Seed 0's folder keeps the name it had before --seeds.
            job_dir = os.path.join(fold_dir, f"{preset}_{augment}" + (f"_seed{seed}" if seed else ""))
            data_dir = data_dirs[part_of_seed[seed], variant_of[preset]]
            common = ["--seed", str(seed), *(["--epochs", str(epochs)] if epochs else [])]
            recipe = recipe_train_flags if preset == DEFAULT else []
            extra = [*([] if augment == DEFAULT else ["--augment", augment]), *common, *recipe, *train_flags]
            metrics, timing = _train_evaluate(data_dir, job_dir, preset, extra, tune_flags=common)
            result = results[(preset, augment, seed)]
            result["folds"].append({"fold": fold, "accuracy": metrics["accuracy"], "job_dir": job_dir, **timing})
            for row in metrics.get("errors_per_group", []):
                result["errors"][row["group"]] += row["errors"]
                result["counts"][row["group"]] += row["count"]
            chose = f" (tune chose {timing['tuned']})" if timing["tuned"] else ""
            print(
                f"  {part} fold {fold} {preset}/{augment} seed {seed}: accuracy {metrics['accuracy']:.3f}{chose}",
                flush=True,
            )
        for preset, augment in ensembles:
            job_dirs = [results[(preset, augment, seed)]["folds"][-1]["job_dir"] for seed in seeds]
            accuracy, wrong = _ensemble_errors(job_dirs)
            ensembles[(preset, augment)]["folds"].append(accuracy)
            ensembles[(preset, augment)]["errors"].update(group_of.get(i, i) for i in wrong)
            print(
                f"  {part} fold {fold} {preset}/{augment} {len(seeds)}-seed ensemble: accuracy {accuracy:.3f}",
                flush=True,
            )
    out = []
    for (preset, augment, seed), result in results.items():
        accuracies = [f["accuracy"] for f in result["folds"]]
        out.append(
            {
                "set": part,
                "preset": preset,
                "augment": augment,
                "seed": seed,
                "epochs": epochs,
                "fold_accuracies": accuracies,
                "mean": statistics.fmean(accuracies),
                "sd": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "errors_per_group": {
                    g: f"{result['errors'][g]}/{result['counts'][g]}"
                    for g, _ in result["errors"].most_common()
                    if result["errors"][g]
                },
                "train_evaluate_s": sum(f["tune_s"] + f["train_s"] + f["evaluate_s"] for f in result["folds"]),
                "epochs_run": [f["epochs_run"] for f in result["folds"]],
                "tuned": [f["tuned"] for f in result["folds"]] if result["folds"][0]["tuned"] else None,
                "preprocess_s": sum(preprocess_s),
            }
        )
    for (preset, augment), ensemble in ensembles.items():
        members = [r for r in out if (r["preset"], r["augment"]) == (preset, augment)]
        accuracies, counts = ensemble["folds"], Counter(groups)
        out.append(
            {
                **members[0],
                "seed": f"{len(seeds)}-ensemble",
                "fold_accuracies": accuracies,
                "mean": statistics.fmean(accuracies),
                "sd": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "errors_per_group": {g: f"{e}/{counts[g]}" for g, e in ensemble["errors"].most_common()},
                "train_evaluate_s": sum(r["train_evaluate_s"] for r in members),
                "epochs_run": [],
            }
        )
    return out


def demo_and_dead_units(workdir: str, parts: Sequence[str], presets: Sequence[str]) -> list[dict]:
    """The demo set (600 images, 256 px): each preset's test accuracy, and the seeds' vs the shared recipe."""
    python = sys.executable
    raw, data_dir = os.path.join(workdir, "demo", "raw"), os.path.join(workdir, "demo", "data")
    generate_s = _run(
        [python, "-m", "pipelines.demo.data", "--dataset", "glasses", "--out", raw, "--count", "600", "--size", "256"]
    )
    # As the demo's preprocess stage: the set's own train.csv / test.csv, the review's CSVs.
    preprocess_s = _run(
        [
            python,
            "-m",
            "pipelines.preprocess",
            "--dataset",
            "glasses",
            "--images",
            raw,
            "--splits",
            "from_source",
            "--overrides_csv",
            os.path.join(raw, "overrides.csv"),
            "--exclude",
            os.path.join(raw, "exclusions.csv"),
            "--output",
            data_dir,
            "--overwrite",
        ]
    )
    with open(os.path.join(data_dir, features.MANIFEST_FILE)) as f:
        written = json.load(f)["counts"]["written"]
    runs = []
    if "demo" in parts:
        runs += [(preset, "shared", []) for preset in presets]
    if "dead_units" in parts:
        if "demo" not in parts or "glasses_cnn" not in presets:
            runs.append(("glasses_cnn", "shared", []))
        runs.append(("glasses_cnn", "seeds", SEEDS_RECIPE))
    out = []
    for preset, recipe, extra in runs:
        job_dir = os.path.join(workdir, "demo", f"{preset}_{recipe}")
        epochs = ["--epochs", str(DEMO_EPOCHS[preset])] if preset in DEMO_EPOCHS else []
        metrics, timing = _train_evaluate(data_dir, job_dir, preset, [*epochs, *extra])
        out.append(
            {
                "set": "demo",
                "preset": preset,
                "recipe": recipe,
                "accuracy": metrics["accuracy"],
                "roc_auc": metrics["roc_auc"],
                "test_examples": metrics["num_examples"],
                "identical_outputs": metrics.get("identical_outputs"),
                "dead_units": metrics.get("dead_units"),
                "written": written,
                "generate_s": generate_s,
                "preprocess_s": preprocess_s,
                **timing,
            }
        )
        print(f"  demo {preset} ({recipe} recipe): test accuracy {metrics['accuracy']:.3f}", flush=True)
    return out


def _report(rows: Sequence[dict]) -> None:
    print(
        "\nset | preset | augment | seed | mean ± sd accuracy | folds | epochs run | groups with errors | (tune+)train+eval s"
    )
    for r in rows:
        if "fold_accuracies" in r:
            groups = ", ".join(f"{g}: {e}" for g, e in r["errors_per_group"].items()) or "none"
            folds = " ".join(f"{a:.3f}" for a in r["fold_accuracies"])
            print(
                f"{r['set']} | {r['preset']} | {r['augment']} | {r['seed']} | {r['mean']:.3f} ± {r['sd']:.3f} | {folds} | "
                f"{r['epochs_run']} | {groups} | {r['train_evaluate_s']:.0f}"
            )
    for r in rows:
        if "recipe" in r:
            dead = ", ".join(f"{k} {v['dead']}/{v['units']}" for k, v in (r["dead_units"] or {}).items())
            print(
                f"demo | {r['preset']} | {r['recipe']} recipe | test accuracy {r['accuracy']:.3f} "
                f"(n={r['test_examples']}), AUC {r['roc_auc']:.3f} | first-epoch loss {r['first_epoch_loss']:.3f} | "
                f"epochs run {r['epochs_run']} | identical outputs {r['identical_outputs']} | dead units {dead} | "
                f"train+eval {r['train_s'] + r['evaluate_s']:.0f} s"
            )


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", required=True, help="the folder holding orl_glasses/ and face2comics_v2/")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "facepipe_quality"))
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--parts", default="orl,comics,vector,demo,dead_units")
    parser.add_argument("--presets", help="comma list: only these presets (default: the configs above)")
    parser.add_argument("--augment", help="comma list: these augmentation levels for every chosen preset")
    parser.add_argument(
        "--epochs", type=int, help="cross-validation epochs (early stopping on); default: each preset's own"
    )
    parser.add_argument(
        "--orl_image_size", default="92,112", help="ORL: preprocess --image_size (the README's: the photos' own)"
    )
    parser.add_argument("--orl_color_mode", default="grayscale", help="ORL: preprocess --color_mode")
    parser.add_argument(
        "--comics_color_mode",
        help="face2comics: preprocess --color_mode of the named presets' rows (default: the layout's grey; "
        "the headline row: the README's rgb)",
    )
    parser.add_argument(
        "--comics_image_size",
        help="face2comics: preprocess --image_size of the named presets' rows (default: the layout's 128)",
    )
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma list: train every fold once per seed (train --seed); several: their ensemble too",
    )
    parser.add_argument(
        "--hyperparameters", help="JSON of hyperparameter values over the presets' defaults, for every train"
    )
    parser.add_argument(
        "--rotate_validation",
        action="store_true",
        help="seed s validates on the (s mod 6)-th sixth of the training people (default: every seed the first)",
    )
    parser.add_argument(
        "--train_flags",
        default="",
        help='more flags for every train, e.g. "--patience 0" or "--ensemble 3" (a row is then the ensemble)',
    )
    args = parser.parse_args()
    train_flags = ["--hyperparameters", os.path.abspath(args.hyperparameters)] if args.hyperparameters else []
    train_flags += shlex.split(args.train_flags)
    parts = args.parts.split(",")
    presets = args.presets.split(",") if args.presets else None
    rows: list[dict] = []
    started = time.monotonic()
    vector_root = os.path.join(args.workdir, "vector", "raw")
    for part, root in (
        ("orl", os.path.join(args.data_root, "orl_glasses")),
        ("comics", os.path.join(args.data_root, "face2comics_v2")),
        ("vector", vector_root),
    ):
        if part not in parts:
            continue
        if part == "vector" and not os.path.exists(os.path.join(vector_root, demo_data.TRUTH_CSV)):
            _run(
                [sys.executable, "-m", "pipelines.demo.data", "--dataset", "glasses", "--out", vector_root, *VECTOR_SET]
            )
        configs = [(p, a) for s, p, a in DEFAULT_CONFIGS if s == part and (presets is None or p in presets)]
        if args.augment:  # The headline rows keep no --augment.
            levels = args.augment.split(",")
            configs = [(p, a) for p in dict.fromkeys(p for p, _ in configs) for a in ([p] if p == DEFAULT else levels)]
        rows += cross_validate(
            part,
            root,
            args.workdir,
            args.folds,
            configs,
            args.epochs,
            {"image_size": args.orl_image_size, "color_mode": args.orl_color_mode},
            seeds=[int(seed) for seed in args.seeds.split(",")],
            comics_color_mode=args.comics_color_mode,
            comics_image_size=args.comics_image_size,
            train_flags=train_flags,
            rotate_validation=args.rotate_validation,
        )
    if "demo" in parts or "dead_units" in parts:
        rows += demo_and_dead_units(args.workdir, parts, presets or DEMO_PRESETS)
    _report(rows)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "quality.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\nwall time {time.monotonic() - started:.0f} s; results in {os.path.join(args.workdir, 'quality.json')}")


if __name__ == "__main__":
    main()
