"""trainer/job_layout.py: where a job's workers write, and the tuning project's name."""

from __future__ import annotations

import os

from trainer import job_layout


def test_the_chief_writes_to_the_job_dir_and_the_other_workers_to_a_folder_of_their_own(tmp_path):
    assert job_layout.write_dir(str(tmp_path), chief=True) == str(tmp_path)
    other = job_layout.write_dir(str(tmp_path), chief=False)
    try:
        assert os.path.isdir(other) and not other.startswith(str(tmp_path))
    finally:
        os.rmdir(other)


def test_tuning_project_names_the_model_and_the_tuner():
    assert job_layout.tuning_project("glasses_cnn", "grid") == "glasses_cnn_grid"
