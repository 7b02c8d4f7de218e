"""Runs the trainer's commands (``python -m trainer.task COMMAND``); their flags, ``--config``
and defaults: trainer/flags.py.

A mistake the command can foresee (a missing data directory or file, an empty split, a
flag combination that cannot work, a job directory of another run) ends in one line
``error: …`` on stderr: exit 2 for flags, 1 for data. ``--debug`` (or FACEPIPE_DEBUG=1)
shows the traceback instead. TensorFlow's start-up lines are hidden unless
FACEPIPE_VERBOSE=1 (pipelines/quiet.py).
"""

from __future__ import annotations

# The imports after quiet.preload() follow code: TensorFlow must see its log level first.
# ruff: noqa: E402
import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pipelines import quiet

# Before TensorFlow is imported: it reads its C++ log level once, at import.
quiet.configure()
quiet.preload("tensorflow")

import tensorflow as tf

from pipelines import cli, locks
from pipelines.findings import report
from trainer import checkpoints, distribute, errors, fitting, flags, job_layout, models, preflight, tuning
from trainer.recipe import Recipe

if TYPE_CHECKING:
    from trainer import data

# The splits each command reads (all must hold examples; see preflight.empty_split).
_SPLITS = {"tune": ("train", "validation"), "train": ("train", "validation")}


def _read_data_dir(args: argparse.Namespace, splits: Sequence[str]) -> data.DataDir:
    """``--data_dir``'s manifest, and each of ``splits`` holds examples (DataError if not)."""
    from trainer import data

    if not tf.io.gfile.isdir(args.data_dir):
        raise errors.MissingFile(
            f"--data_dir {args.data_dir} does not exist: pass the --output folder of pipelines.preprocess"
        )
    try:
        data_dir = data.DataDir.read(args.data_dir)
    except (FileNotFoundError, ValueError) as e:  # json.JSONDecodeError is a ValueError.
        raise errors.DataError(f"--data_dir: {e}") from e
    for split in splits:
        problem = preflight.empty_split(args.data_dir, data_dir.manifest, split)
        if problem:
            raise errors.DataError(problem)
    return data_dir


def _read_json(path: str, flag: str) -> Any:
    """A JSON file named by ``flag`` (DataError when it is missing or not JSON)."""
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    except tf.errors.NotFoundError as e:
        raise errors.DataError(f"{flag} {path}: no such file") from e
    except (tf.errors.OpError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise errors.DataError(f"{flag} {path}: not a readable JSON file ({e})") from e


def _check_job_matches_data(job_dir: str, data_dir: data.DataDir) -> None:
    """JOB holds a trained model, for images of ``data_dir``'s shape and classes."""
    path = tf.io.gfile.join(job_dir, job_layout.MODEL_FILE)
    if not tf.io.gfile.exists(path) or tf.io.gfile.stat(path).length == 0:
        raise errors.DataError(
            f"{path} not found (or empty): run `python -m trainer.task train` with this --job_dir first"
        )
    config_path = tf.io.gfile.join(job_dir, job_layout.CONFIG_FILE)
    if not tf.io.gfile.exists(config_path):
        return
    config = _read_json(config_path, "--job_dir")
    trained = {"image_shape": config.get("image_shape"), "classes": config.get("classes")}
    given = {"image_shape": list(data_dir.image_shape), "classes": data_dir.classes}
    if trained != given:
        raise errors.DataError(
            f"--job_dir {job_dir} holds a model trained on other data (image shape {trained['image_shape']}, classes "
            f"{trained['classes']}; {data_dir.path} has {given['image_shape']}, {given['classes']}): pass the "
            "--data_dir it was trained on, or the --job_dir of a model trained on this data"
        )


def _preset(args: argparse.Namespace, data_dir: data.DataDir, *, vector: bool = True) -> models.Preset:
    """``--model``'s preset, or the default for the data's shape (``vector`` False: for its images alone)."""
    try:
        preset, why = models.get_preset(
            args.model,
            shape=data_dir.image_shape,
            vector_length=data_dir.vector_length if vector else 0,
            dataset=data_dir.named_dataset,
        )
    except ValueError as e:  # No measured default for this shape (neither grey nor RGB).
        raise errors.UsageError(str(e)) from e
    refusal = preflight.missing_vector(preset, data_dir.path, data_dir.manifest)
    if refusal:
        raise errors.UsageError(refusal)
    logging.info("model: %s (%s)", preset.name, why)
    return preset


def _recipe(args: argparse.Namespace) -> Recipe:
    return Recipe(
        warmup_epochs=args.warmup_epochs,
        schedule=args.lr_schedule,
        clipnorm=args.clipnorm or None,
        bn_statistics=args.bn_statistics,
    )


def _fit_run(
    args: argparse.Namespace, data_dir: data.DataDir, preset: models.Preset, values: dict[str, Any] | None, **settings
) -> fitting.Run:
    """The run tune's trials, train and the folds fit: ``values`` with --epochs, --seed, --verbose.

    ``settings``: the rest of :class:`fitting.Run` (the modelling flags of tune and train).
    """
    values = dict(values or {})
    if args.epochs:
        values["epochs"] = int(args.epochs)
    return fitting.Run(
        data_dir=data_dir, preset=preset, hyperparameters=values, seed=args.seed, verbose=args.verbose, **settings
    )


def _modelling(args: argparse.Namespace) -> dict[str, Any]:
    """The Run settings of tune's and train's modelling flags."""
    return dict(
        recipe=_recipe(args),
        strategy=distribute.get_strategy(args.strategy, tpu=args.tpu),
        class_weight=args.class_weight,
        patience=args.patience,
        deterministic=not args.nondeterministic,
    )


def run_tune(args: argparse.Namespace) -> None:
    data_dir = _read_data_dir(args, _SPLITS["tune"])
    preset = _preset(args, data_dir)
    tuner_name = tuning.default_tuner(args.search_space) if args.tuner is None else args.tuner
    overrides = {}
    if args.augment:
        overrides["augment"] = [args.augment]
    if args.epochs:
        overrides["epochs"] = [args.epochs]
    elif tuner_name == "hyperband":
        # Hyperband schedules epochs itself, up to max_epochs; a grid over them is redundant.
        overrides["epochs"] = [max(preset.space(args.search_space)["epochs"])]
    run = _fit_run(args, data_dir, preset, None, **_modelling(args))
    hypermodel = tuning.FaceHyperModel(run, space=args.search_space, overrides=overrides, tuner_name=tuner_name)
    best = tuning.tune(
        job_dir=args.job_dir,
        hypermodel=hypermodel,
        max_trials=args.max_trials,
        executions_per_trial=args.executions_per_trial,
        overwrite=args.overwrite,
    )
    if best is None:
        print(f"tuner {os.environ['KERASTUNER_TUNER_ID']} finished its trials; the chief writes the results")
        return
    if best["score"] is None:
        print(f"nothing to search in the {args.search_space} space: train uses {best['hyperparameters']}")
    else:
        print(f"best {tuning.OBJECTIVE.name} {best['score']:.4f}: {best['hyperparameters']}")
    print(
        f"tuning outputs in {args.job_dir}/{job_layout.TUNING_DIR}, best hyperparameters in {args.job_dir}/{job_layout.BEST_HPARAMS_FILE}"
    )


def run_train(args: argparse.Namespace) -> None:
    from trainer import training

    data_dir = _read_data_dir(args, _SPLITS["train"])
    preset = _preset(args, data_dir)
    if args.hyperparameters:
        loaded = _read_json(args.hyperparameters, "--hyperparameters")
        if not isinstance(loaded, dict):
            raise errors.DataError(f"--hyperparameters {args.hyperparameters}: expected a JSON object")
        values = loaded.get("hyperparameters", loaded)
        source = args.hyperparameters
        tuning.warn_if_other_data(loaded, source, data_dir.fingerprint)
    else:
        values = tuning.read_best_hyperparameters(
            args.job_dir, model=preset.name, data_fingerprint=data_dir.fingerprint
        )
        source = f"{args.job_dir}/{job_layout.BEST_HPARAMS_FILE}" if values is not None else f"{preset.name} defaults"
    logging.info("hyperparameters from %s", source)
    if args.augment:
        values = {**(values or {}), "augment": args.augment}
    run = _fit_run(
        args,
        data_dir,
        preset,
        values,
        job_dir=args.job_dir,
        overwrite=args.overwrite,
        flags=flags.command_flags(args),
        **_modelling(args),
    )
    if args.ensemble != 1:  # train_ensemble refuses fewer than one member.
        training.train_ensemble(run, members=args.ensemble)
    else:
        training.train(run)
    print(
        f"trained model in {args.job_dir}/{job_layout.MODEL_FILE}, serving export in {args.job_dir}/{job_layout.EXPORT_DIR}"
    )


def run_evaluate(args: argparse.Namespace) -> int:
    from trainer import evaluation

    data_dir = _read_data_dir(args, (args.split,))
    _check_job_matches_data(args.job_dir, data_dir)
    try:
        evaluation.evaluate(
            data_dir=data_dir,
            job_dir=args.job_dir,
            split=args.split,
            batch_size=args.batch_size,
            baseline=args.baseline,
        )
    except evaluation.BaselineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_predict(args: argparse.Namespace) -> None:
    from trainer import predict

    if args.output and tf.io.gfile.isdir(args.output):
        raise errors.UsageError(f"--output {args.output} is a folder: name a file, e.g. {args.output}/predictions.csv")
    export_dir = args.export_dir or tf.io.gfile.join(args.job_dir, job_layout.EXPORT_DIR)
    if not tf.io.gfile.exists(tf.io.gfile.join(export_dir, "saved_model.pb")):
        flag = "--export_dir" if args.export_dir else "--job_dir"
        raise errors.DataError(
            f"{flag}: no serving SavedModel in {export_dir}: run `python -m trainer.task train` first, "
            "or pass the --export_dir it wrote"
        )
    if not args.input and not args.vectors_csv:
        raise errors.UsageError("predict needs --input IMAGE_OR_FOLDER (or --vectors_csv FILE for latent_mlp)")
    predict.predict(
        export_dir,
        args.input or [],
        output=args.output,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
        vectors_csv=args.vectors_csv,
    )


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


def run_find_label_issues(args: argparse.Namespace) -> None:
    from trainer import data, label_issues

    if args.folds < 2:
        flags.build_parser()[1]["find_label_issues"].error(f"--folds {args.folds}: need at least 2")
    data_dir = data.DataDir.read(args.data_dir)
    label_issues.check_cross_validatable(data_dir, args.folds)
    preset = _preset(args, data_dir, vector=False)  # It scores the images: the vector is not cross-validated.
    if preset.needs_vector:
        raise errors.UsageError(
            f"--model {preset.name}: find_label_issues cross-validates the image presets only; pass --model face_cnn "
            "or leave --model out"
        )
    values = tuning.read_best_hyperparameters(args.job_dir, model=preset.name)
    logging.info("hyperparameters from %s", "JOB/best_hyperparameters.json" if values else f"{preset.name} defaults")
    run = _fit_run(args, data_dir, preset, values, overwrite=args.overwrite)
    label_issues.run(run, job_dir=args.job_dir, num_folds=args.folds)


def _os_error_line(e: Exception) -> str:
    """An OS or filesystem error as one line naming the path."""
    if isinstance(e, OSError):
        return cli.os_error_line(e)
    return e.message.splitlines()[0]


# The commands that write JOB: one at a time per JOB (pipelines/locks.py).
_JOB_WRITERS = ("tune", "train", "evaluate", "find_label_issues")


def _job_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """JOB's lock for a command that writes it; none for a search's worker or a cluster's non-chief,
    which write beside their chief (it holds the lock)."""
    if args.command not in _JOB_WRITERS:
        return contextlib.nullcontext()
    if tuning.role() == "worker" if args.command == "tune" else not distribute.tf_config_is_chief():
        return contextlib.nullcontext()
    return _held_and_tidied(args.job_dir)


@contextlib.contextmanager
def _held_and_tidied(job_dir: str) -> Iterator[None]:
    """JOB's lock, then the temporaries a killed run left there removed (no other writer can be at work)."""
    with locks.held(job_dir):
        checkpoints.remove_stale_job_temporaries(job_dir)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit status (preflight: 1 when a check fails).

    A user mistake (errors.UserError, or a strategy that cannot start) is one line
    ``error: …`` on stderr and its exit status; ``--debug`` or FACEPIPE_DEBUG=1 raises it.
    """
    args = flags.parse_args(argv)
    quiet.configure()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[quiet.StderrHandler()],
        force=True,
    )
    commands = {
        "tune": run_tune,
        "train": run_train,
        "evaluate": run_evaluate,
        "predict": run_predict,
        "preflight": run_preflight,
        "find_label_issues": run_find_label_issues,
    }
    try:
        with _job_lock(args):
            return commands[args.command](args) or 0
    except locks.LockedError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.UsageError.exit_code
    except (errors.UserError, distribute.StrategyError) as e:
        if args.debug or os.environ.get(flags.DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", errors.UsageError.exit_code)
    except (OSError, tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError, tf.errors.NotFoundError) as e:
        # On a path the user gave: a read-only or full disk, a folder where a file goes, ...
        if args.debug or os.environ.get(flags.DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"error: {_os_error_line(e)}", file=sys.stderr)
        return errors.DataError.exit_code


if __name__ == "__main__":
    sys.exit(main())
