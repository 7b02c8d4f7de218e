"""Final training with the chosen hyperparameters: checkpoints, logs, history, export.

Outputs in job_dir:
  backup/                    BackupAndRestore state while training runs (deleted at the end);
                             a restarted run resumes from the last finished epoch
  checkpoints/epoch-NNN.weights.h5
                             (several workers: tf.train checkpoints checkpoints/epoch-N.*,
                             which are also what a restarted cluster resumes from)
  logs/                      TensorBoard
  history.csv                one row per epoch (CSVLogger, appended across restarts)
  training_config.json       model, hyperparameters, data, strategy
  model.keras                the trained Keras model
  export/                    the serving SavedModel (trainer/export.py)
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from pipelines import features
from trainer import data, distribute, export, models

HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
CONFIG_FILE = "training_config.json"
BACKUP_DIR = "backup"


def _join(*parts: str) -> str:
    return tf.io.gfile.join(*parts)


def make_datasets_fn(
    data_dir: str,
    manifest: Mapping[str, Any],
    *,
    strategy: tf.distribute.Strategy,
    seed: int = 0,
    deterministic: bool = True,
):
    """``fn(per_replica_batch_size) -> (train_ds, validation_ds, steps_per_epoch)`` for fit and tuning."""
    tft_output = data.load_transform(data_dir, manifest)

    def make_datasets(per_replica_batch_size: int):
        batch = distribute.global_batch_size(per_replica_batch_size, strategy)
        common = dict(manifest=manifest, tft_output=tft_output, global_batch_size=batch, deterministic=deterministic)
        train_ds = data.make_dataset(data_dir, "train", training=True, seed=seed, **common)
        validation_ds = data.make_dataset(data_dir, "validation", training=False, **common)
        return train_ds, validation_ds, data.steps_per_epoch(data.split_size(manifest, "train"), batch)

    return make_datasets


def train(
    *,
    data_dir: str,
    job_dir: str,
    preset: models.Preset,
    hyperparameters: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    seed: int = 0,
    deterministic: bool = True,
    verbose: int | str = 2,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> keras.Model:
    """Trains ``preset`` with ``hyperparameters`` (else its defaults), saves and exports it.

    A run that finds ``job_dir/backup`` (left by a killed run) resumes from its last
    finished epoch and appends to ``history.csv``; otherwise it starts afresh. Under a
    multi-worker strategy every worker calls this with the same arguments; training goes
    through :func:`fit_multi_worker` and only the chief writes to ``job_dir``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    multi_worker = distribute.is_multi_worker(strategy)
    chief = distribute.is_chief(strategy)
    if multi_worker and not deterministic:
        # Every worker reads the whole split and keeps its share of each global batch
        # (DATA autosharding): the workers must see the same order or they overlap.
        logging.warning("several workers: using a deterministic input order (--nondeterministic ignored)")
        deterministic = True
    keras.utils.set_random_seed(seed)
    manifest = features.read_manifest(data_dir)
    input_shape = features.image_shape(manifest)
    values = dict(hyperparameters or {})
    if epochs:
        values["epochs"] = int(epochs)
    hp = models.fixed_hyperparameters(preset, values)
    logging.info("training %s on %s with %s", preset.name, data_dir, json.dumps(hp.values, sort_keys=True))

    config = {
        "model": preset.name,
        "hyperparameters": hp.values,
        "data_dir": data_dir,
        "image_shape": list(input_shape),
        "classes": manifest["classes"],
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "seed": seed,
    }
    make_datasets = make_datasets_fn(data_dir, manifest, strategy=strategy, seed=seed, deterministic=deterministic)
    train_ds, validation_ds, steps = make_datasets(hp.get("batch_size"))
    with strategy.scope():
        model = models.build_model(hp, preset=preset, input_shape=input_shape, num_classes=len(manifest["classes"]))
    if verbose:
        model.summary(print_fn=logging.info)

    if multi_worker:
        if extra_callbacks:
            raise ValueError("several workers train with a custom loop: Keras callbacks are not supported there")
        fit_multi_worker(
            model,
            strategy=strategy,
            train_ds=train_ds,
            validation_ds=validation_ds,
            steps_per_epoch=steps,
            epochs=hp.get("epochs"),
            global_batch_size=distribute.global_batch_size(hp.get("batch_size"), strategy),
            job_dir=job_dir,
            config=config,
        )
    else:
        _fit(
            model,
            train_ds=train_ds,
            validation_ds=validation_ds,
            steps_per_epoch=steps,
            epochs=hp.get("epochs"),
            job_dir=job_dir,
            config=config,
            verbose=verbose,
            extra_callbacks=extra_callbacks,
        )

    # Saving may read distributed variables, which can take part in collectives: every
    # worker saves (TF multi-worker guide), the others to a temporary directory they delete.
    out_dir = job_dir if chief else tempfile.mkdtemp(prefix="facepipe-worker-")
    logging.info("%s: final weights sha256 %s", distribute.worker_name(strategy), weights_fingerprint(model))
    model_path = _join(out_dir, MODEL_FILE)
    model.save(model_path)
    export_dir = export.export_model(
        model,
        tft_output=data.load_transform(data_dir, manifest),
        manifest=manifest,
        export_dir=_join(out_dir, export.EXPORT_DIR),
    )
    if not chief:
        tf.io.gfile.rmtree(out_dir)
        logging.info("%s: done; the chief writes the model and the export", distribute.worker_name(strategy))
        return model
    history_path = _join(job_dir, HISTORY_FILE)
    logging.info(
        "saved %s, exported %s, history %s, TensorBoard logs %s",
        model_path,
        export_dir,
        history_path,
        _join(job_dir, "logs"),
    )
    return model


def _write_config(job_dir: str, config: Mapping[str, Any]) -> None:
    with tf.io.gfile.GFile(_join(job_dir, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2)


def _fit(
    model: keras.Model,
    *,
    train_ds: tf.data.Dataset,
    validation_ds: tf.data.Dataset,
    steps_per_epoch: int,
    epochs: int,
    job_dir: str,
    config: Mapping[str, Any],
    verbose: int | str,
    extra_callbacks: Sequence[keras.callbacks.Callback],
) -> None:
    """``model.fit`` with BackupAndRestore, CSV history, epoch weights and TensorBoard."""
    tf.io.gfile.makedirs(job_dir)
    backup_dir = _join(job_dir, BACKUP_DIR)
    history_path = _join(job_dir, HISTORY_FILE)
    resuming = tf.io.gfile.exists(_join(backup_dir, "training_metadata.json"))
    if resuming:
        logging.info("found %s: resuming the interrupted run", backup_dir)
    elif tf.io.gfile.exists(history_path):
        tf.io.gfile.remove(history_path)  # A finished earlier run's history; this run starts over.
    _write_config(job_dir, config)

    checkpoint_dir = _join(job_dir, "checkpoints")
    tf.io.gfile.makedirs(checkpoint_dir)
    callbacks = [
        # The CSV row before the backup: a kill between the two repeats that epoch's row on
        # resume (read_history keeps the last row per epoch) instead of losing it.
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.BackupAndRestore(backup_dir),
        keras.callbacks.ModelCheckpoint(_join(checkpoint_dir, "epoch-{epoch:03d}.weights.h5"), save_weights_only=True),
        keras.callbacks.TensorBoard(_join(job_dir, "logs")),
        *extra_callbacks,
    ]
    model.fit(
        train_ds,
        validation_data=validation_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # The dataset shuffles (with a seed); Keras cannot shuffle a tf.data input.
    )


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 of all the model's weights (equal on every worker after synchronous training)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Several workers: a custom training loop.
#
# Why not model.fit: Keras 3.15's TensorFlow trainer breaks under a multi-worker
# MultiWorkerMirroredStrategy (CollectiveAllReduceStrategy with more than one worker):
#  1. fit() first builds the model symbolically from one batch (``_maybe_symbolic_build``)
#     and gets that batch by ``strategy.reduce("MEAN", (x, y), axis=None)`` on the whole
#     (x, y) tuple of PerReplica values. With one worker the strategy reduces each value
#     locally; with several it hands the tuple to the collective cross-device ops, which
#     try ``convert_to_tensor`` on it: "ValueError: Attempt to convert a value
#     (PerReplica:{...}) with an unsupported type".
#  2. Past that, the step's logs (scalar loss and metric values per replica) are reduced
#     by ``reduce_per_replica`` with ``strategy.reduce("MEAN", v, axis=0)`` when the
#     strategy is multi-worker; ``axis=0`` reduces along a batch dimension that a scalar
#     does not have: "Invalid reduction dimension 0 for input with 0 dimensions".
# Both are in Keras' multi-worker-only branches, so MirroredStrategy and the default
# strategy are unaffected (and keep model.fit). The loop below uses the model, optimizer
# and loss that ``models.build_model`` compiled; only the step and its bookkeeping are ours.

CHECKPOINT_PREFIX = "epoch"
_SUM = tf.distribute.ReduceOp.SUM


def per_example_loss_fn(model: keras.Model):
    """``fn(labels [B] int64, outputs) -> [B]``: the compiled loss, unreduced.

    Keras' loss functions take labels shaped like the outputs (sigmoid [B, 1]) or class
    indices (sparse softmax [B, 2]); a sigmoid head's labels get the trailing axis.
    """
    loss = model.loss
    fn = loss.call if isinstance(loss, keras.losses.Loss) else keras.losses.get(loss)
    if fn is None:
        raise ValueError(f"{model.name} is compiled without a loss")

    def per_example(labels: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
        if outputs.shape[-1] == 1:
            labels = tf.cast(tf.expand_dims(labels, -1), outputs.dtype)
        return fn(labels, outputs)

    return per_example


def _batch_sums(labels: tf.Tensor, outputs: tf.Tensor, per_example_loss: tf.Tensor) -> tf.Tensor:
    """[loss sum, correct, examples] of one per-replica batch (SUM-reduced across replicas).

    Sums, not means: a replica's batch may be partial or empty (the last validation batch).
    "correct" is the compiled "accuracy" of a 2-class head: P(class 1) >= 0.5 == label.
    """
    predicted = tf.cast(models.positive_probability(outputs) >= export.THRESHOLD, labels.dtype)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
    count = tf.cast(tf.size(labels), tf.float32)
    return tf.stack([tf.reduce_sum(per_example_loss), correct, count])


def _all_workers_agree(strategy: tf.distribute.Strategy, value: int, what: str) -> None:
    """A barrier that also checks every worker computed the same ``value``."""
    per_replica = strategy.run(lambda: tf.constant([float(value), 1.0]))
    total, replicas = strategy.reduce(_SUM, per_replica, axis=None).numpy()
    if total != value * replicas:
        raise RuntimeError(f"the workers disagree on {what} (this worker: {value}); do they share the job_dir?")


def fit_multi_worker(
    model: keras.Model,
    *,
    strategy: tf.distribute.Strategy,
    train_ds: tf.data.Dataset,
    validation_ds: tf.data.Dataset,
    steps_per_epoch: int,
    epochs: int,
    global_batch_size: int,
    job_dir: str,
    config: Mapping[str, Any],
) -> list[dict[str, float]]:
    """Synchronous data-parallel training on every worker of ``strategy``; returns the history.

    Run by every worker with the same arguments. The chief writes history.csv,
    TensorBoard logs and the epoch checkpoints in ``job_dir``; the other workers write
    their checkpoints to a temporary directory (checkpoint saving is collective) and
    delete it. A cluster restarted after a failure resumes from the chief's last epoch
    checkpoint when the run had not finished (no ``model.keras`` yet).
    """
    chief = distribute.is_chief(strategy)
    name = distribute.worker_name(strategy)
    checkpoint_dir = _join(job_dir, "checkpoints")
    history_path = _join(job_dir, HISTORY_FILE)

    optimizer = model.optimizer
    with strategy.scope():
        # Built now, not at the first step, so that a restore finds its slot variables.
        optimizer.build(model.trainable_variables)
    epoch_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_done)

    # Decide before anyone writes: every worker reads the chief's directory, then waits.
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    resuming = latest is not None and not tf.io.gfile.exists(_join(job_dir, MODEL_FILE))
    if resuming:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("%s: resuming the interrupted run from %s (epoch %d)", name, latest, int(epoch_done.numpy()))
    _all_workers_agree(strategy, int(epoch_done.numpy()), "the epoch to start from")

    write_dir = job_dir if chief else tempfile.mkdtemp(prefix="facepipe-worker-")
    if chief:
        tf.io.gfile.makedirs(job_dir)
        if not resuming:
            for stale in (history_path, _join(job_dir, MODEL_FILE)):
                if tf.io.gfile.exists(stale):
                    tf.io.gfile.remove(stale)  # A finished earlier run's; this run starts over.
            for stale in tf.io.gfile.glob(_join(checkpoint_dir, CHECKPOINT_PREFIX + "-*")) + tf.io.gfile.glob(
                _join(checkpoint_dir, "checkpoint")
            ):
                tf.io.gfile.remove(stale)
        _write_config(job_dir, config)
    manager = tf.train.CheckpointManager(
        checkpoint, _join(write_dir, "checkpoints"), max_to_keep=None, checkpoint_name=CHECKPOINT_PREFIX
    )
    train_writer = (
        tf.summary.create_file_writer(_join(job_dir, "logs", "train")) if chief else tf.summary.create_noop_writer()
    )
    validation_writer = (
        tf.summary.create_file_writer(_join(job_dir, "logs", "validation"))
        if chief
        else tf.summary.create_noop_writer()
    )

    # DATA autosharding: every worker runs the same (seeded, deterministic) pipeline and
    # keeps its replicas' slices of each global batch. FILE sharding would give each worker
    # a subset of the shards, which make_dataset's manifest cardinality check rejects and
    # which needs at least one shard per worker; the price is that each worker decodes all.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train_dist = strategy.experimental_distribute_dataset(train_ds.with_options(options))
    validation_dist = strategy.experimental_distribute_dataset(validation_ds.with_options(options))
    per_example_loss = per_example_loss_fn(model)

    def train_step(images, labels):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            losses = per_example_loss(labels, outputs)
            # Scaled by the global batch: the optimizer SUMs the replicas' gradients.
            loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return _batch_sums(labels, outputs, losses)

    @tf.function
    def train_epoch(iterator):
        totals = tf.zeros([3])
        for _ in tf.range(steps_per_epoch):
            totals += strategy.reduce(_SUM, strategy.run(train_step, args=next(iterator)), axis=None)
        return totals

    def validation_step(images, labels):
        outputs = model(images, training=False)
        return _batch_sums(labels, outputs, per_example_loss(labels, outputs))

    @tf.function(reduce_retracing=True)  # The last batch is partial.
    def validate(batch):
        return strategy.reduce(_SUM, strategy.run(validation_step, args=batch), axis=None)

    iterator = iter(train_dist)
    # A resumed run restarts the input at its beginning; with reshuffling each epoch that
    # only changes which permutation the remaining epochs see.
    for epoch in range(int(epoch_done.numpy()), epochs):
        loss_sum, correct, count = train_epoch(iterator).numpy()
        totals = sum((validate(batch) for batch in validation_dist), tf.zeros([3])).numpy()
        row = {
            "epoch": epoch,
            "accuracy": correct / count,
            "loss": loss_sum / count,
            "val_accuracy": totals[1] / max(totals[2], 1.0),
            "val_loss": totals[0] / max(totals[2], 1.0),
        }
        logging.info(
            "%s: epoch %d/%d - loss: %.4f - accuracy: %.4f - val_loss: %.4f - val_accuracy: %.4f",
            name,
            epoch + 1,
            epochs,
            row["loss"],
            row["accuracy"],
            row["val_loss"],
            row["val_accuracy"],
        )
        # The CSV row before the checkpoint, as in the fit path: a failure between the two
        # repeats that epoch's row on resume (read_history keeps the last) instead of losing it.
        if chief:
            _append_history(history_path, row)
            for writer, prefix in ((train_writer, ""), (validation_writer, "val_")):
                with writer.as_default():
                    tf.summary.scalar("epoch_loss", row[prefix + "loss"], step=epoch)
                    tf.summary.scalar("epoch_accuracy", row[prefix + "accuracy"], step=epoch)
                writer.flush()
        epoch_done.assign(epoch + 1)
        manager.save(checkpoint_number=epoch + 1)  # On every worker: saving is collective.

    if not chief:
        tf.io.gfile.rmtree(write_dir)
    return read_history(job_dir) if chief else []


def _append_history(path: str, row: Mapping[str, float]) -> None:
    """Appends one epoch to history.csv (CSVLogger's columns), writing the header first."""
    import io

    columns = ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    if not tf.io.gfile.exists(path):
        writer.writeheader()
    writer.writerow({k: row[k] for k in columns})
    with tf.io.gfile.GFile(path, "a") as f:
        f.write(buffer.getvalue())


def read_history(job_dir: str) -> list[dict[str, float]]:
    """history.csv rows, one per epoch (the last row wins when a resumed run repeated one)."""
    path = _join(job_dir, HISTORY_FILE)
    with tf.io.gfile.GFile(path) as f:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    by_epoch = {int(row["epoch"]): row for row in rows}
    return [by_epoch[e] for e in sorted(by_epoch)]
