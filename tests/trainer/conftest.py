"""Fixtures shared by the trainer's tests."""

from __future__ import annotations

import pytest

from trainer import data, fitting, models, task, training

EVALUATED_SPLITS = {"train": 24, "validation": 8, "test": 8}


@pytest.fixture(scope="module")
def evaluated_job(make_data_dir, tmp_path_factory):
    """(data dir, job dir): glasses_cnn trained two epochs on 16x16 RGB data (EVALUATED_SPLITS
    examples per class) and evaluated; one job per test module, so that a module may add to it."""
    data_dir = make_data_dir("rgb16", height=16, width=16, channels=3, n_per_class_split=EVALUATED_SPLITS)
    job_dir = tmp_path_factory.mktemp("evaluated_job")
    training.train(
        fitting.Run(
            data_dir=data.DataDir.read(data_dir),
            job_dir=str(job_dir),
            preset=models.GLASSES_CNN,
            hyperparameters={"epochs": 2},
            verbose=0,
        )
    )
    task.main(["evaluate", "--data_dir", data_dir, "--job_dir", str(job_dir)])
    return data_dir, job_dir
