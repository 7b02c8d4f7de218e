"""trainer/distribute.py: strategy choice, and training under a non-default strategy."""

from __future__ import annotations

import json
import logging

import pytest
import tensorflow as tf

from trainer import data, distribute, fitting, models, task, training


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)


def test_auto_is_the_default_strategy_on_cpu(caplog):
    with caplog.at_level(logging.INFO):
        strategy = distribute.get_strategy("auto")
    assert strategy is tf.distribute.get_strategy() and distribute.is_default(strategy)
    assert strategy.num_replicas_in_sync == 1
    assert "_DefaultDistributionStrategy (no TPU named, 0 GPU(s), 1 worker)" in caplog.text
    assert distribute.global_batch_size(32, strategy) == 32


def test_auto_with_a_named_tpu_that_does_not_exist_fails_clearly(monkeypatch):
    monkeypatch.setenv("TPU_NAME", "no-such-tpu")
    with pytest.raises(distribute.StrategyError, match="cannot start TPU 'no-such-tpu'"):
        distribute.get_strategy("auto")


def test_explicit_tpu_fails_at_once_with_a_clear_message():
    with pytest.raises(distribute.StrategyError, match="needs --tpu NAME"):
        distribute.get_strategy("tpu")
    with pytest.raises(distribute.StrategyError, match=r"--strategy tpu: cannot start TPU 'no-such-tpu' \(\w+"):
        distribute.get_strategy("tpu", tpu="no-such-tpu")


def test_auto_picks_multi_worker_from_tf_config(monkeypatch):
    monkeypatch.setattr(distribute, "_tf_config_workers", lambda: 2)
    created = []
    monkeypatch.setattr(
        tf.distribute, "MultiWorkerMirroredStrategy", lambda: created.append(1) or tf.distribute.get_strategy()
    )
    distribute.get_strategy("auto")
    assert created == [1]


def test_tf_config_worker_count(monkeypatch):
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}})
    )
    assert distribute._tf_config_workers() == 2
    monkeypatch.setenv("TF_CONFIG", "{not json")
    assert distribute._tf_config_workers() == 0
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(distribute.StrategyError, match="needs TF_CONFIG"):
        distribute.get_strategy("multi_worker")


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy"):
        distribute.get_strategy("horovod")


def test_mirrored_strategy_with_one_cpu_device_trains(make_data_dir, tmp_path):
    data_dir = make_data_dir(
        "rgb16", height=16, width=16, channels=3, n_per_class_split={"train": 24, "validation": 8, "test": 8}
    )
    strategy = distribute.get_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync == 1
    assert not distribute.is_default(strategy)
    model = training.train(
        fitting.Run(
            data_dir=data.DataDir.read(data_dir),
            job_dir=str(tmp_path),
            preset=models.GLASSES_CNN,
            hyperparameters={"epochs": 1},
            strategy=strategy,
            verbose=0,
        )
    )
    # Variables were created under the strategy's scope: they are mirrored.
    assert all(
        isinstance(v.value, tf.distribute.DistributedValues) or "Mirrored" in type(v.value).__name__
        for v in model.weights
    )
    assert json.loads((tmp_path / "training_config.json").read_text())["strategy"] == "MirroredStrategy"


def test_cli_explicit_tpu_fails_before_any_work(make_data_dir, tmp_path, capsys):
    data_dir = make_data_dir(
        "rgb16", height=16, width=16, channels=3, n_per_class_split={"train": 24, "validation": 8, "test": 8}
    )
    argv = ["train", "--data_dir", data_dir, "--job_dir", str(tmp_path / "job"), "--strategy", "tpu", "--tpu", "nope"]
    assert task.main(argv) == 2  # One line, no traceback: the user asked for a TPU that is not there.
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "nope" in errors[0]
    assert not (tmp_path / "job").exists()
    with pytest.raises(distribute.StrategyError):  # --debug shows the exception itself.
        task.main([*argv, "--debug"])
