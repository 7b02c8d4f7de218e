"""The trainer's command line: tune | train | evaluate | predict | preflight | find_label_issues.

  python -m trainer.task tune     --data_dir DATA --job_dir JOB [--tuner grid] [--search_space small|full|wide] [--overwrite]
  python -m trainer.task train    --data_dir DATA --job_dir JOB [--epochs N] [--ensemble N]
  python -m trainer.task evaluate --data_dir DATA --job_dir JOB [--baseline OTHER_JOB]
  python -m trainer.task predict  --job_dir JOB --input IMAGE_OR_FOLDER [...] [--vectors_csv V.csv] [--output preds.csv]
  python -m trainer.task preflight --data_dir DATA --job_dir JOB [--tpu NAME] [--model M] [--strategy S]
  python -m trainer.task find_label_issues --data_dir DATA --job_dir JOB [--folds 5] [--model M] [--epochs N]

``--model`` defaults to the preset cross-validation found best for the data's shape
(``models.DEFAULT_MODELS``: face_cnn for grey or RGB images, image_latent with a
``--numeric_columns`` vector; on ``--dataset comics`` data with ``input_norm`` none,
``models.DATASET_DEFAULTS``), logged with why; the seeds' presets by name. ``tune``
searches the ``small`` space by default (face_cnn: ``input_norm`` none or local, two grid
points chosen by validation loss; on a validation split of fewer than 30 examples by 3-fold
cross-validation over the train and validation splits pooled; a space of one point, as on
comics data, trains no trial). ``--tuner`` defaults to hyperband for ``--search_space
wide`` (too large for a grid), else grid. tune and train share the training recipe flags: ``--warmup_epochs``,
``--lr_schedule``, ``--clipnorm`` (the optimizer), ``--bn_statistics`` (what
BatchNormalization normalises with at inference), ``--augment`` (training inputs only;
default: the preset's "augment" value), ``--class_weight``. ``train``
reads JOB/best_hyperparameters.json when ``tune`` wrote one for the same model, else the
preset's defaults. Killed ``tune`` and ``train`` runs resume when restarted with the same
command. Paths may be local or gs://.

A job's settings in one file: every command takes ``--config FILE``, a JSON object whose
keys are the command's flags by dest name (``{"data_dir": "gs://b/data", "epochs": 5}``).
Its values are defaults: flags given on the command line win. A key that is not a flag of
the command (or a value outside a flag's choices) is an error, exit 2. ``train`` records its
flags in JOB/training_config.json under "flags", so ``train --config JOB/training_config.json``
reruns the same command. They are nested there because that file's top-level keys record
what was trained, under names that are also flags but hold other values ("model": the
preset chosen, "hyperparameters": their values, "strategy": the strategy's class); a config
file with a "flags" object uses that object and ignores the rest of the file; so does one
with an object under the command's name (``configs/``: one file, the flags of every stage).
The reading is pipelines/cli.py's, shared with ``pipelines.preprocess --config``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from pipelines import features
from pipelines.cli import ArgumentParser, apply_config, config_path, number_in
from trainer import augmentation, distribute, job_layout, models, tuning
from trainer.recipe import BN_STATISTICS, LR_SCHEDULES

COMMANDS = ("tune", "train", "evaluate", "predict", "preflight", "find_label_issues")
# Dests that are not a command's flags: the subcommand itself, and --config (a config
# file does not name another one).
_NOT_FLAGS = ("command", "config", "debug", "help")
DEBUG_ENV = "FACEPIPE_DEBUG"
_MODEL_HELP = "default: the best preset for the data's shape (face_cnn for images; logged with why)"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and its subcommands' parsers by name."""
    parser = ArgumentParser(prog="python -m trainer.task", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")

    def common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
        p.add_argument("--data_dir", required=data, help="preprocessing output (shards, transform/, manifest.json)")
        p.add_argument("--job_dir", required=True, help="where this job's outputs go (local or gs://)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity (0, 1, 2)")

    def modelling(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", choices=sorted(models.PRESETS), help=_MODEL_HELP)
        p.add_argument("--epochs", type=number_in(1), help="override the epochs hyperparameter")
        p.add_argument("--strategy", choices=distribute.STRATEGIES, default="auto")
        p.add_argument("--tpu", help="TPU name or address (also TPU_NAME); implies TPUStrategy under auto")
        p.add_argument(
            "--nondeterministic", action="store_true", help="let tf.data return elements out of order (faster)"
        )
        p.add_argument(
            "--warmup_epochs",
            type=number_in(0, kind=float),
            default=1.0,
            help="linear learning-rate warm-up from 0 (epochs; 0: none)",
        )
        p.add_argument("--lr_schedule", choices=LR_SCHEDULES, default="cosine", help="after the warm-up")
        p.add_argument(
            "--clipnorm", type=number_in(0, kind=float), default=1.0, help="gradient norm clipping (0: none)"
        )
        p.add_argument(
            "--bn_statistics",
            choices=BN_STATISTICS,
            default="precise",
            help="BatchNormalization at inference: statistics of clean training batches, re-measured before "
            "every validation and the export (precise), or Keras' moving averages (moving)",
        )
        p.add_argument(
            "--augment",
            choices=augmentation.LEVELS,
            help="training-only augmentation (default: the preset's; none for the seed presets)",
        )
        p.add_argument(
            "--class_weight",
            choices=("auto", "none"),
            default="auto",
            help="auto: weigh classes by the manifest's train counts when they are unequal",
        )

    tune = commands.add_parser("tune", help="hyperparameter search (resumable)")
    common(tune)
    modelling(tune)
    tune.add_argument("--tuner", choices=tuning.TUNERS, help="default: hyperband for --search_space wide, else grid")
    tune.add_argument(
        "--search_space",
        choices=models.SEARCH_SPACES,
        default="small",
        help="small (default: what cross-validation found decisive, face_cnn's input_norm), full (the grid), "
        "wide (for hyperband)",
    )
    tune.add_argument("--max_trials", type=number_in(1), help="default: the whole grid (grid), 10 (random, bayesian)")
    tune.add_argument("--executions_per_trial", type=number_in(1), default=1)
    tune.add_argument(
        "--patience",
        type=number_in(0),
        default=2,
        help="EarlyStopping patience on val_loss, from half a trial's epochs on",
    )
    tune.add_argument(
        "--overwrite",
        action="store_true",
        help="delete JOB/tuning/<model>_<tuner> and start afresh (default: resume it); chief or single process only",
    )

    train = commands.add_parser("train", help="final training, checkpoints, export (resumable)")
    common(train)
    modelling(train)
    train.add_argument(
        "--hyperparameters", help="JSON written by tune (default: JOB/best_hyperparameters.json if present)"
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="delete JOB/backup of an interrupted run and start afresh (with --ensemble: retrain every member)",
    )
    train.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="train N models with seeds --seed, --seed+1, ... (JOB/members/) and export the mean of their "
        "probabilities: N times the training, steadier on unseen people (docs/benchmarks.md section 9)",
    )
    train.add_argument(
        "--patience",
        type=number_in(0),
        default=3,
        help="early stopping from half the epochs on: epochs without a better val_loss before stopping; "
        "the best epoch's weights are kept (0: off)",
    )

    evaluate = commands.add_parser("evaluate", help="metrics, plots and the model card on the test split")
    common(evaluate)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--batch_size", type=number_in(1), default=64)
    evaluate.add_argument(
        "--baseline",
        metavar="OTHER_JOB_DIR",
        help="a job already evaluated on the same examples: exact McNemar test of the two models",
    )

    predict = commands.add_parser("predict", help="probabilities for image files with the exported model")
    common(predict, data=False)
    predict.add_argument("--input", nargs="+", help="image files and/or folders (latent_mlp: optional)")
    predict.add_argument(
        "--vectors_csv",
        metavar="FILE",
        help="models with the --numeric_columns vector: CSV of id and the vector columns; without --input "
        "(latent_mlp) every row is predicted",
    )
    predict.add_argument("--output", help="CSV to write (default: print only)")
    predict.add_argument("--export_dir", help="default: JOB/export")
    predict.add_argument("--batch_size", type=number_in(1), default=32)
    predict.add_argument(
        "--max_pixels",
        type=number_in(1),
        default=features.MAX_PIXELS,
        help="refuse images with more pixels (by their header) before decoding, as the pipeline does",
    )

    preflight = commands.add_parser("preflight", help="check paths, data, model and strategy before a cloud run")
    preflight.add_argument("--data_dir", required=True)
    preflight.add_argument("--job_dir", required=True)
    preflight.add_argument("--tpu", help="the TPU the job will run on (also TPU_NAME)")
    preflight.add_argument("--model", choices=sorted(models.PRESETS), help=_MODEL_HELP)
    preflight.add_argument("--strategy", choices=distribute.STRATEGIES, default="auto")
    preflight.add_argument("--tuner", choices=tuning.TUNERS, default="grid", help="for the tuning project check")
    preflight.add_argument("--overwrite", action="store_true", help="as tune --overwrite")

    issues = commands.add_parser(
        "find_label_issues",
        help="k-fold out-of-fold probabilities and confident learning: the likely wrong labels",
        description="Scores every labelled example of every split (train, validation and test) with a "
        "model trained on the other folds, and flags the labels the models confidently contradict "
        "(confident learning). Preprocess with --balance none, so that no image is left out. "
        f"Writes JOB/{job_layout.LABEL_ISSUES_CSV}, {job_layout.LABEL_ISSUES_SUMMARY}, "
        f"{job_layout.OOF_PROBABILITIES_CSV} and {job_layout.SUGGESTED_LABELS_CSV} (the unlabelled images).",
    )
    issues.add_argument("--data_dir", required=True, help="preprocessing output, made with --balance none")
    issues.add_argument("--job_dir", required=True, help="where the outputs go; its best_hyperparameters.json is used")
    issues.add_argument("--folds", type=int, default=5, help="number of folds, at least 2 (default 5)")
    issues.add_argument("--model", choices=sorted(models.PRESETS), help=_MODEL_HELP)
    issues.add_argument("--epochs", type=number_in(1), help="override the epochs hyperparameter")
    issues.add_argument("--seed", type=int, default=0)
    issues.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity (0, 1, 2)")
    issues.add_argument(
        "--overwrite",
        action="store_true",
        help="fit every fold afresh (default: reuse the folds an earlier run fitted with the same settings)",
    )

    subparsers = {name: commands.choices[name] for name in COMMANDS}
    for sub in subparsers.values():
        sub.add_argument(
            "--config",
            metavar="FILE",
            help="JSON object of this command's flags (dest names) used as defaults, e.g. JOB/training_config.json",
        )
        sub.add_argument("--debug", action="store_true", help=f"show the traceback of an error (also {DEBUG_ENV}=1)")
    return parser, subparsers


def _read_text(path: str) -> str:
    with tf.io.gfile.GFile(path) as f:
        return f.read()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with defaults from ``--config FILE`` when it names one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    if argv and argv[0] in subparsers:
        command = subparsers[argv[0]]
        config = config_path(argv[1:], command.prog)
        if config:
            # A training_config.json's flags are under "flags"; a configs/ file's under the command's name.
            apply_config(
                command,
                config,
                read_text=_read_text,
                read_errors=(tf.errors.OpError,),
                sections=(job_layout.CONFIG_FLAGS_KEY, argv[0]),
                not_flags=_NOT_FLAGS,
            )
    return parser.parse_args(argv)


def command_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags by dest name, as a ``--config`` file holds them."""
    return {key: value for key, value in vars(args).items() if key not in _NOT_FLAGS}
