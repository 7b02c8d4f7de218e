"""trainer/records.py and trainer/atomic.py: strict JSON, and files that appear whole or not at all."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tests.failing_files import patch_local_writes
from trainer import atomic, errors, records


def _strict_load(path) -> object:
    def refuse(name):
        raise AssertionError(f"not strict JSON: {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_non_finite_floats_are_written_as_null(tmp_path):
    path = tmp_path / "metrics.json"
    records.write_json(str(path), {"roc_auc": float("nan"), "rates": [np.float32(np.inf), 0.5], "n": np.int64(3)})
    assert _strict_load(path) == {"roc_auc": None, "rates": [None, 0.5], "n": 3}


def _crash_after_part(monkeypatch):
    """The file being written gets half of what it is given, then the process 'dies'."""

    def half_then_killed(file, content):
        file.write(content[: len(content) // 2])
        raise KeyboardInterrupt("killed mid-write")

    patch_local_writes(monkeypatch, half_then_killed)


def test_a_crash_mid_write_keeps_the_previous_file(tmp_path, monkeypatch):
    records.write_config(str(tmp_path), {"model": "old", "hyperparameters": {"units": 8}})
    before = (tmp_path / "training_config.json").read_text()
    _crash_after_part(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        records.write_config(str(tmp_path), {"model": "new", "hyperparameters": {"units": 16}})
    assert (tmp_path / "training_config.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_config.json"]  # No temporary left.


def test_a_crash_mid_write_leaves_no_partial_file_under_the_final_name(tmp_path, monkeypatch):
    _crash_after_part(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        records.write_json(str(tmp_path / "metrics.json"), {"accuracy": 0.5, "ids": list(range(100))})
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_replaced_only_when_the_new_one_is_complete(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "saved_model.pb").write_text("old")
    with pytest.raises(RuntimeError), atomic.writing(str(export)) as temporary:
        tf.io.gfile.makedirs(temporary)
        tf.io.gfile.GFile(f"{temporary}/saved_model.pb", "w").write("half")
        raise RuntimeError("killed while saving")
    assert (export / "saved_model.pb").read_text() == "old"
    with atomic.writing(str(export)) as temporary:
        tf.io.gfile.makedirs(temporary)
        tf.io.gfile.GFile(f"{temporary}/saved_model.pb", "w").write("new")
    assert (export / "saved_model.pb").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_history_rows_are_appended(tmp_path):
    for epoch in range(2):
        records.append_history(
            str(tmp_path), {"epoch": epoch, "accuracy": 0.5, "loss": 1.0, "val_accuracy": 0.5, "val_loss": math.pi}
        )
    assert [row["epoch"] for row in records.read_history(str(tmp_path))] == [0.0, 1.0]


def test_a_half_written_history_row_is_dropped_before_a_resume_and_skipped_when_read(tmp_path):
    header = ",".join(records.HISTORY_COLUMNS)
    (tmp_path / "history.csv").write_text(f"{header}\n0,0.5,1.0,0.5,0.9\n1,0.6,0.")  # killed mid-row
    assert [row["epoch"] for row in records.read_history(str(tmp_path))] == [0.0]
    records.drop_partial_history_row(str(tmp_path))
    assert (tmp_path / "history.csv").read_text() == f"{header}\n0,0.5,1.0,0.5,0.9\n"
    with open(tmp_path / "history.csv", "a") as f:  # What a resumed CSVLogger appends.
        f.write("1,0.6,0.8,0.6,0.7\n")
    assert [row["val_loss"] for row in records.read_history(str(tmp_path))] == [0.9, 0.7]
    (tmp_path / "history.csv").write_text(f"{header}\n0,0.5,1.0,0.5,0.9,9\n1,0.6,0.8,0.6,0.7\n")
    assert [row["epoch"] for row in records.read_history(str(tmp_path))] == [1.0]  # the odd row skipped


def test_resuming_with_other_hyperparameters_is_refused(tmp_path):
    config = {"model": "glasses_cnn", "hyperparameters": {"units": 8, "epochs": 2}, "image_shape": [8, 8, 3]}
    records.write_config(str(tmp_path), config)
    records.check_resumable(str(tmp_path), config)  # The same run resumes.
    with pytest.raises(errors.UsageError, match=r"other hyperparameters \(units 8 -> 16\); pass --overwrite .*backup"):
        records.check_resumable(str(tmp_path), {**config, "hyperparameters": {"units": 16, "epochs": 2}})
