"""The trainer's command line: tune | train | evaluate | predict | preflight.

  python -m trainer.task tune     --data_dir DATA --job_dir JOB [--tuner grid] [--search_space small|full|wide] [--overwrite]
  python -m trainer.task train    --data_dir DATA --job_dir JOB [--epochs N]
  python -m trainer.task evaluate --data_dir DATA --job_dir JOB
  python -m trainer.task predict  --job_dir JOB --input IMAGE_OR_FOLDER [...] [--output preds.csv]
  python -m trainer.task preflight --data_dir DATA --job_dir JOB [--tpu NAME] [--model M] [--strategy S]

``--model`` defaults from the manifest (1 channel: comics_cnn, 3: glasses_cnn; face_cnn by
name). ``--tuner`` defaults to hyperband for ``--search_space wide`` (too large for a
grid), else grid. tune and train share the training recipe flags: ``--warmup_epochs``,
``--lr_schedule``, ``--clipnorm`` (the optimizer), ``--augment`` (training inputs only;
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
file with a "flags" object uses that object and ignores the rest of the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from pipelines.findings import report
from trainer import distribute, job_layout, models, tuning

if TYPE_CHECKING:
    from trainer import data

COMMANDS = ("tune", "train", "evaluate", "predict", "preflight")
# Dests that are not a command's flags: the subcommand itself, and --config (a config
# file does not name another one).
_NOT_FLAGS = ("command", "config", "help")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and its subcommands' parsers by name."""
    parser = argparse.ArgumentParser(prog="python -m trainer.task", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
        p.add_argument("--data_dir", required=data, help="preprocessing output (shards, transform/, manifest.json)")
        p.add_argument("--job_dir", required=True, help="where this job's outputs go (local or gs://)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity (0, 1, 2)")

    def modelling(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", choices=sorted(models.PRESETS), help="default: from the manifest's channels")
        p.add_argument("--epochs", type=int, help="override the epochs hyperparameter")
        p.add_argument("--strategy", choices=distribute.STRATEGIES, default="auto")
        p.add_argument("--tpu", help="TPU name or address (also TPU_NAME); implies TPUStrategy under auto")
        p.add_argument(
            "--nondeterministic", action="store_true", help="let tf.data return elements out of order (faster)"
        )
        p.add_argument(
            "--warmup_epochs", type=float, default=1.0, help="linear learning-rate warm-up from 0 (epochs; 0: none)"
        )
        p.add_argument("--lr_schedule", choices=models.LR_SCHEDULES, default="cosine", help="after the warm-up")
        p.add_argument("--clipnorm", type=float, default=1.0, help="gradient norm clipping (0: none)")
        p.add_argument(
            "--augment",
            choices=models.AUGMENT_LEVELS,
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
    tune.add_argument("--search_space", choices=models.SEARCH_SPACES, default="full")
    tune.add_argument("--max_trials", type=int, help="default: the whole grid (grid), 10 (random, bayesian)")
    tune.add_argument("--executions_per_trial", type=int, default=1)
    tune.add_argument("--patience", type=int, default=2, help="EarlyStopping patience on val_loss")
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
        "--patience",
        type=int,
        default=3,
        help="early stopping: epochs without a better val_loss before stopping; the best epoch's weights are kept (0: off)",
    )

    evaluate = commands.add_parser("evaluate", help="metrics and plots on the test split")
    common(evaluate)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--batch_size", type=int, default=64)

    predict = commands.add_parser("predict", help="probabilities for image files with the exported model")
    common(predict, data=False)
    predict.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    predict.add_argument("--output", help="CSV to write (default: print only)")
    predict.add_argument("--export_dir", help="default: JOB/export")
    predict.add_argument("--batch_size", type=int, default=32)

    preflight = commands.add_parser("preflight", help="check paths, data, model and strategy before a cloud run")
    preflight.add_argument("--data_dir", required=True)
    preflight.add_argument("--job_dir", required=True)
    preflight.add_argument("--tpu", help="the TPU the job will run on (also TPU_NAME)")
    preflight.add_argument("--model", choices=sorted(models.PRESETS), help="default: from the manifest's channels")
    preflight.add_argument("--strategy", choices=distribute.STRATEGIES, default="auto")
    preflight.add_argument("--tuner", choices=tuning.TUNERS, default="grid", help="for the tuning project check")
    preflight.add_argument("--overwrite", action="store_true", help="as tune --overwrite")

    subparsers = {name: commands.choices[name] for name in COMMANDS}
    for sub in subparsers.values():
        sub.add_argument(
            "--config",
            metavar="FILE",
            help="JSON object of this command's flags (dest names) used as defaults, e.g. JOB/training_config.json",
        )
    return parser, subparsers


def _apply_config(parser: argparse.ArgumentParser, path: str) -> None:
    """Makes the flags in the JSON file ``path`` the defaults of ``parser`` (exit 2 when it cannot)."""
    try:
        with tf.io.gfile.GFile(path) as f:
            values = json.load(f)
    except (tf.errors.NotFoundError, json.JSONDecodeError) as e:
        parser.error(f"--config {path}: {e}")
    if isinstance(values, dict) and isinstance(values.get(job_layout.CONFIG_FLAGS_KEY), dict):
        values = values[job_layout.CONFIG_FLAGS_KEY]  # A training_config.json: the flags it recorded.
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a JSON object of flags, got {type(values).__name__}")
    actions = {action.dest: action for action in parser._actions if action.dest not in _NOT_FLAGS}
    for key, value in values.items():
        action = actions.get(key)
        if action is None:
            parser.error(f"unknown key {key!r} in --config {path}: not a flag of {parser.prog}")
        # argparse checks choices on the command line only; a file's values get the same check.
        if action.choices is not None and value != action.default and value not in action.choices:
            parser.error(f"--config {path}: {key} {value!r} is not one of {list(action.choices)}")
        action.default = value
        action.required = False  # The file gives it; the command line may still override it.


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with defaults from ``--config FILE`` when it names one."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = _parser()
    if argv and argv[0] in subparsers:
        # --config is read before the real parse, which checks required flags the file may give.
        peek = argparse.ArgumentParser(add_help=False)
        peek.add_argument("--config")
        config = peek.parse_known_args(argv[1:])[0].config
        if config:
            _apply_config(subparsers[argv[0]], config)
    return parser.parse_args(argv)


def command_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags by dest name, as a ``--config`` file holds them."""
    return {key: value for key, value in vars(args).items() if key not in _NOT_FLAGS}


def _preset(args: argparse.Namespace, data_dir: data.DataDir) -> models.Preset:
    preset = models.get_preset(args.model, channels=data_dir.image_shape[2])
    logging.info("model: %s (%s)", preset.name, "--model" if args.model else "default for the manifest's channels")
    return preset


def _recipe(args: argparse.Namespace) -> models.Recipe:
    return models.Recipe(warmup_epochs=args.warmup_epochs, schedule=args.lr_schedule, clipnorm=args.clipnorm or None)


def run_tune(args: argparse.Namespace) -> None:
    from trainer import data, training

    data_dir = data.DataDir.read(args.data_dir)
    preset = _preset(args, data_dir)
    strategy = distribute.get_strategy(args.strategy, tpu=args.tpu)
    tuner_name = tuning.default_tuner(args.search_space) if args.tuner is None else args.tuner
    weights = training.class_weights(data_dir.manifest) if args.class_weight == "auto" else None
    overrides = {}
    if args.augment:
        overrides["augment"] = [args.augment]
    if args.epochs:
        overrides["epochs"] = [args.epochs]
    elif tuner_name == "hyperband":
        # Hyperband schedules epochs itself, up to max_epochs; a grid over them is redundant.
        overrides["epochs"] = [max(preset.space(args.search_space)["epochs"])]
    hypermodel = models.FaceHyperModel(
        preset,
        input_shape=data_dir.image_shape,
        make_datasets=data.make_datasets_fn(
            data_dir, strategy=strategy, seed=args.seed, deterministic=not args.nondeterministic
        ),
        space=args.search_space,
        overrides=overrides,
        num_classes=len(data_dir.classes),
        recipe=_recipe(args),
        steps_per_epoch=lambda batch: data.steps_per_epoch(
            data.split_size(data_dir.manifest, "train"), distribute.global_batch_size(batch, strategy)
        ),
        fit_kwargs={"class_weight": weights} if weights else None,
    )
    best = tuning.tune(
        job_dir=args.job_dir,
        hypermodel=hypermodel,
        tuner_name=tuner_name,
        max_trials=args.max_trials,
        executions_per_trial=args.executions_per_trial,
        seed=args.seed,
        patience=args.patience,
        strategy=None if distribute.is_default(strategy) else strategy,
        verbose=args.verbose,
        overwrite=args.overwrite,
    )
    if best is None:
        print(f"tuner {os.environ['KERASTUNER_TUNER_ID']} finished its trials; the chief writes the results")
        return
    print(f"best {tuning.OBJECTIVE.name} {best['score']:.4f}: {best['hyperparameters']}")
    print(
        f"tuning outputs in {args.job_dir}/{job_layout.TUNING_DIR}, best hyperparameters in {args.job_dir}/{job_layout.BEST_HPARAMS_FILE}"
    )


def run_train(args: argparse.Namespace) -> None:
    from trainer import data, training

    data_dir = data.DataDir.read(args.data_dir)
    preset = _preset(args, data_dir)
    if args.hyperparameters:
        with tf.io.gfile.GFile(args.hyperparameters) as f:
            loaded = json.load(f)
        values = loaded.get("hyperparameters", loaded)
        source = args.hyperparameters
    else:
        values = tuning.read_best_hyperparameters(args.job_dir, model=preset.name)
        source = f"{args.job_dir}/{job_layout.BEST_HPARAMS_FILE}" if values is not None else f"{preset.name} defaults"
    logging.info("hyperparameters from %s", source)
    if args.augment:
        values = {**(values or {}), "augment": args.augment}
    strategy = distribute.get_strategy(args.strategy, tpu=args.tpu)
    training.train(
        data_dir=data_dir,
        job_dir=args.job_dir,
        preset=preset,
        hyperparameters=values,
        epochs=args.epochs,
        strategy=strategy,
        seed=args.seed,
        deterministic=not args.nondeterministic,
        verbose=args.verbose,
        flags=command_flags(args),
        recipe=_recipe(args),
        class_weight=args.class_weight,
        patience=args.patience,
    )
    print(
        f"trained model in {args.job_dir}/{job_layout.MODEL_FILE}, serving export in {args.job_dir}/{job_layout.EXPORT_DIR}"
    )


def run_evaluate(args: argparse.Namespace) -> None:
    from trainer import data, evaluation

    evaluation.evaluate(
        data_dir=data.DataDir.read(args.data_dir), job_dir=args.job_dir, split=args.split, batch_size=args.batch_size
    )


def run_predict(args: argparse.Namespace) -> None:
    from trainer import predict

    export_dir = args.export_dir or tf.io.gfile.join(args.job_dir, job_layout.EXPORT_DIR)
    predict.predict(export_dir, args.input, output=args.output, batch_size=args.batch_size)


def run_preflight(args: argparse.Namespace) -> int:
    from trainer import preflight

    findings = preflight.preflight(
        data_dir=args.data_dir,
        job_dir=args.job_dir,
        tpu=args.tpu,
        model=args.model,
        strategy=args.strategy,
        tuner=args.tuner,
        overwrite=args.overwrite,
    )
    return report(findings)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit status (preflight: 1 when a check fails)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    commands = {
        "tune": run_tune,
        "train": run_train,
        "evaluate": run_evaluate,
        "predict": run_predict,
        "preflight": run_preflight,
    }
    return commands[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
