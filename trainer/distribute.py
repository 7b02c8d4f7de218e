"""Choosing the tf.distribute strategy: TPU, several GPUs, several workers, or none.

Everything that creates variables (model build, compile, optimizer) runs under
``strategy.scope()``; the input pipeline batches ``global_batch_size(per_replica, strategy)``
examples and the strategy splits each batch between the replicas. Training goes through
``model.fit``, except with several workers: Keras 3's fit cannot run under
MultiWorkerMirroredStrategy (see ``trainer/multiworker.py``), so ``is_multi_worker``
strategies train with the custom loop there; ``is_chief`` says which worker writes the
job's outputs.
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "tpu", "mirrored", "multi_worker")

# What a TPU that is absent, unreachable or misnamed raises, depending on where it fails:
# ValueError (no name, bad name), NotFoundError (no such device), IndexError (no TPU
# system found), OSError/URLError (metadata or Cloud TPU API unreachable), RuntimeError.
_TPU_ERRORS = (ValueError, tf.errors.NotFoundError, IndexError, OSError, RuntimeError, tf.errors.UnavailableError)


class StrategyError(RuntimeError):
    """An explicitly requested strategy cannot start."""


def tf_config_workers() -> int:
    """Number of workers (chief included) TF_CONFIG lists (0 when unset or malformed)."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError:
        logging.warning("TF_CONFIG is not valid JSON; ignoring it")
        return 0
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tf_config_workers() -> int:
    # The name get_strategy calls, so that tests can fake a cluster without TF_CONFIG.
    return tf_config_workers()


def _tpu_strategy(tpu: str) -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except _TPU_ERRORS as e:
        raise StrategyError(
            f"--strategy tpu: cannot start TPU {tpu!r} ({type(e).__name__}: {e}). "
            "Check --tpu / TPU_NAME, the zone and that the TPU is READY, or pick another --strategy."
        ) from e


def get_strategy(name: str = "auto", *, tpu: str | None = None) -> tf.distribute.Strategy:
    """Returns the strategy for ``--strategy name`` and logs which one and why.

    Args:
      name: One of ``STRATEGIES``. "auto": TPUStrategy when a TPU is named (``tpu`` or
        the TPU_NAME environment variable), MultiWorkerMirroredStrategy when TF_CONFIG
        lists several workers, MirroredStrategy with more than one GPU, else the
        default (no-op) strategy. Defaults to "auto". Call it before anything else
        initialises TensorFlow's runtime (MultiWorkerMirroredStrategy must come first).
      tpu: TPU name or grpc:// address ("local" on a TPU VM).

    Raises:
      StrategyError: an explicitly requested (or, for auto, named TPU) strategy cannot start.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}, expected one of {STRATEGIES}")
    tpu = tpu or os.environ.get("TPU_NAME")
    # Physical, not logical, devices: listing logical devices initialises the TF runtime,
    # after which MultiWorkerMirroredStrategy can no longer configure its collective ops
    # ("Collective ops must be configured at program startup").
    gpus = tf.config.list_physical_devices("GPU")
    workers = _tf_config_workers()

    if name == "auto":
        if tpu:
            name, why = "tpu", f"a TPU is named ({tpu!r})"
        elif workers > 1:  # Before GPUs: each worker of a cluster may have several.
            name, why = "multi_worker", f"TF_CONFIG lists {workers} workers"
        elif len(gpus) > 1:
            name, why = "mirrored", f"{len(gpus)} GPUs"
        else:
            name, why = "default", f"no TPU named, {len(gpus)} GPU(s), {workers or 1} worker"
    else:
        why = "requested"

    if name == "tpu":
        if not tpu:
            raise StrategyError("--strategy tpu needs --tpu NAME (or the TPU_NAME environment variable)")
        strategy = _tpu_strategy(tpu)
    elif name == "mirrored":
        try:
            strategy = tf.distribute.MirroredStrategy()
        except (ValueError, RuntimeError) as e:
            raise StrategyError(f"--strategy mirrored cannot start: {e}") from e
    elif name == "multi_worker":
        if workers < 1:
            raise StrategyError("--strategy multi_worker needs TF_CONFIG with a cluster of workers")
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            raise StrategyError(f"--strategy multi_worker cannot start: {e}") from e
    else:
        strategy = tf.distribute.get_strategy()

    logging.info(
        "strategy: %s (%s), %d replica(s) in sync", type(strategy).__name__, why, strategy.num_replicas_in_sync
    )
    return strategy


def global_batch_size(per_replica_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The batch the input pipeline makes: every replica gets ``per_replica_batch_size``."""
    return int(per_replica_batch_size) * strategy.num_replicas_in_sync


def is_default(strategy: tf.distribute.Strategy) -> bool:
    """True for the no-op default strategy (keras-tuner wants None then)."""
    return not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for a MultiWorkerMirroredStrategy whose cluster has more than one worker."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


def tf_config_is_chief() -> bool:
    """:func:`is_chief`'s rule read from TF_CONFIG alone, before any strategy exists (True without a task)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "{}"))
        task_type, task_id = config["task"]["type"], int(config["task"].get("index", 0))
    except (ValueError, KeyError, TypeError):
        return True
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in config.get("cluster", {}))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the job's outputs (the TF multi-worker guide's rule).

    The chief is the "chief" task when the cluster has one, else worker 0; a process
    outside any cluster (no TF_CONFIG task) is its own chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and not has_chief and resolver.task_id == 0


def worker_name(strategy: tf.distribute.Strategy) -> str:
    """ "worker 1", "chief 0", or "local" outside a cluster (for log lines and temp dirs)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    return f"{task_type} {resolver.task_id}" if task_type else "local"
