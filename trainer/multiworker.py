"""Several workers: synchronous data-parallel training with a custom loop.

Run by every worker of a MultiWorkerMirroredStrategy cluster with the same arguments
(``trainer.fitting.fit``'s backend when ``distribute.is_multi_worker``).
The chief writes history.csv, TensorBoard logs and tf.train checkpoints
(``checkpoints/epoch-N.*``) in job_dir, which are also what a restarted cluster resumes from.

Why not model.fit: Keras 3.15's TensorFlow trainer breaks under a multi-worker
MultiWorkerMirroredStrategy (CollectiveAllReduceStrategy with more than one worker):
 1. fit() first builds the model symbolically from one batch (``_maybe_symbolic_build``)
    and gets that batch by ``strategy.reduce("MEAN", (x, y), axis=None)`` on the whole
    (x, y) tuple of PerReplica values. With one worker the strategy reduces each value
    locally; with several it hands the tuple to the collective cross-device ops, which
    try ``convert_to_tensor`` on it: "ValueError: Attempt to convert a value
    (PerReplica:{...}) with an unsupported type".
 2. Past that, the step's logs (scalar loss and metric values per replica) are reduced
    by ``reduce_per_replica`` with ``strategy.reduce("MEAN", v, axis=0)`` when the
    strategy is multi-worker; ``axis=0`` reduces along a batch dimension that a scalar
    does not have: "Invalid reduction dimension 0 for input with 0 dimensions".
Both are in Keras' multi-worker-only branches, so MirroredStrategy and the default
strategy are unaffected (and keep model.fit). The loop below uses the model, optimizer
and loss that ``models.build_model`` compiled; only the step and its bookkeeping are ours.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from trainer import architectures, batch_norm, distribute, job_layout, records

_SUM = tf.distribute.ReduceOp.SUM


def _join(*parts: str) -> str:
    return tf.io.gfile.join(*parts)


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
    predicted = tf.cast(architectures.positive_probability(outputs) >= architectures.THRESHOLD, labels.dtype)
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
    calibration_ds: tf.data.Dataset | None = None,
    job_dir: str,
    config: Mapping[str, Any],
    class_weight: Mapping[int, float] | None = None,
    patience: int | None = None,
    watch_from_epoch: int = 0,
) -> list[dict[str, float]]:
    """Synchronous data-parallel training on every worker of ``strategy``; returns the history.

    Run by every worker with the same arguments. The chief writes history.csv,
    TensorBoard logs and the epoch checkpoints in ``job_dir``; the other workers write
    their checkpoints to a temporary directory (checkpoint saving is collective) and
    delete it. A cluster restarted after a failure resumes from the chief's last epoch
    checkpoint when the run had not finished (no ``model.keras`` yet).

    ``class_weight`` weighs each example's loss by its class, as ``model.fit`` does.
    ``calibration_ds`` (clean training batches, the same on every worker): BatchNormalization's
    statistics are re-measured after every epoch's training, before its validation, as in
    the fit path (batch_norm.recalibrate); None: the moving averages.
    ``patience``: early stopping as in the single-process fit (trainer.fitting.
    ScheduledEarlyStopping): val_loss is watched from epoch ``watch_from_epoch`` on, the run
    stops after ``patience`` epochs without a new best, and the best epoch's checkpoint is
    restored. Every worker decides alike: the validation figures are all-reduced.
    """
    chief = distribute.is_chief(strategy)
    name = distribute.worker_name(strategy)
    checkpoint_dir = _join(job_dir, job_layout.CHECKPOINT_DIR)
    history_path = records.history_path(job_dir)
    model_path = _join(job_dir, job_layout.MODEL_FILE)

    optimizer = model.optimizer
    with strategy.scope():
        # Built now, not at the first step, so that a restore finds its slot variables.
        optimizer.build(model.trainable_variables)
    epoch_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_done)

    # Decide before anyone writes: every worker reads the chief's directory, then waits.
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    resuming = latest is not None and not tf.io.gfile.exists(model_path)
    if resuming:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("%s: resuming the interrupted run from %s (epoch %d)", name, latest, int(epoch_done.numpy()))
    _all_workers_agree(strategy, int(epoch_done.numpy()), "the epoch to start from")

    write_dir = job_layout.write_dir(job_dir, chief=chief)
    if chief:
        tf.io.gfile.makedirs(job_dir)
        if not resuming:
            for stale in (history_path, model_path):
                if tf.io.gfile.exists(stale):
                    tf.io.gfile.remove(stale)  # A finished earlier run's; this run starts over.
            for stale in tf.io.gfile.glob(
                _join(checkpoint_dir, job_layout.CHECKPOINT_PREFIX + "-*")
            ) + tf.io.gfile.glob(_join(checkpoint_dir, job_layout.CHECKPOINT_STATE_FILE)):
                tf.io.gfile.remove(stale)
        records.write_config(job_dir, config)
    manager = tf.train.CheckpointManager(
        checkpoint,
        _join(write_dir, job_layout.CHECKPOINT_DIR),
        max_to_keep=None,
        checkpoint_name=job_layout.CHECKPOINT_PREFIX,
    )
    train_writer = (
        tf.summary.create_file_writer(_join(job_dir, job_layout.LOGS_DIR, job_layout.TRAIN_LOGS))
        if chief
        else tf.summary.create_noop_writer()
    )
    validation_writer = (
        tf.summary.create_file_writer(_join(job_dir, job_layout.LOGS_DIR, job_layout.VALIDATION_LOGS))
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
    if class_weight:
        table = tf.constant([class_weight.get(c, 1.0) for c in range(max(class_weight) + 1)], tf.float32)

        def training_loss(labels, outputs):
            return per_example_loss(labels, outputs) * tf.gather(table, labels)
    else:
        training_loss = per_example_loss

    def train_step(images, labels):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            losses = training_loss(labels, outputs)
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

    # Every worker keeps the rows (the chief's history.csv, read back on a resume): the
    # early-stopping decision needs the earlier epochs.
    history = (
        [row for row in records.read_history(job_dir) if row["epoch"] < int(epoch_done.numpy())] if resuming else []
    )
    iterator = iter(train_dist)
    calibration = iter(calibration_ds) if calibration_ds is not None else None
    recalibrate = batch_norm.Recalibrator(model)
    # A resumed run restarts the input at its beginning; with reshuffling each epoch that
    # only changes which permutation the remaining epochs see.
    for epoch in range(int(epoch_done.numpy()), epochs):
        best = records.best_watched_row(history, watch_from_epoch) if patience else None
        if best is not None and epoch - 1 - int(best["epoch"]) >= patience:
            logging.info("%s: early stopping after epoch %d: val_loss best at epoch %d", name, epoch, best["epoch"] + 1)
            break
        loss_sum, correct, count = train_epoch(iterator).numpy()
        if calibration is not None:
            # Every worker runs the same batches in the same order: the statistics agree.
            recalibrate(calibration, max_batches=steps_per_epoch)
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
            records.append_history(job_dir, row)
            for writer, prefix in ((train_writer, ""), (validation_writer, "val_")):
                with writer.as_default():
                    tf.summary.scalar("epoch_loss", row[prefix + "loss"], step=epoch)
                    tf.summary.scalar("epoch_accuracy", row[prefix + "accuracy"], step=epoch)
                writer.flush()
        history.append(row)
        epoch_done.assign(epoch + 1)
        manager.save(checkpoint_number=epoch + 1)  # On every worker: saving is collective.

    best = records.best_watched_row(history, watch_from_epoch) if patience else None
    if best is not None:
        best_epoch = int(best["epoch"])
        _all_workers_agree(strategy, best_epoch, "the best epoch")
        # The chief's checkpoint of that epoch (every worker reads job_dir, as on a resume).
        path = _join(checkpoint_dir, f"{job_layout.CHECKPOINT_PREFIX}-{best_epoch + 1}")
        logging.info("%s: restoring the best epoch's weights (epoch %d) from %s", name, best_epoch + 1, path)
        checkpoint.restore(path).assert_existing_objects_matched()

    if not chief:
        tf.io.gfile.rmtree(write_dir)
    return records.read_history(job_dir) if chief else []
