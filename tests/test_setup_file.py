"""What Dataflow does with --setup_file: build the sdist, install it where the checkout is not,
and run the pipeline's entry point from there."""

from __future__ import annotations

import json
import os
import pathlib
import site
import subprocess
import sys

import pytest

from tests.image_files import write_glasses_like

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_sdist_installs_into_a_clean_venv_and_runs_the_pipeline(tmp_path):
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path / "dist")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (sdist,) = (tmp_path / "dist").glob("facepipe-*.tar.gz")
    venv = tmp_path / "worker_venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The third-party stack comes from this environment (a worker image has it installed);
    # a path added by a .pth file does not run that directory's own .pth files, so the
    # checkout's editable install of facepipe stays invisible to the worker venv.
    worker_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    pathlib.Path(worker_site, "stack.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(sdist)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    write_glasses_like(tmp_path / "data", [0, 1] * 6)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    completed = subprocess.run(
        [str(python), "-c", "import pipelines, trainer; print(pipelines.__file__, trainer.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert str(ROOT) not in completed.stdout and str(venv) in completed.stdout, completed.stdout
    subprocess.run(
        [
            str(python),
            "-m",
            "pipelines.preprocess",
            "--images",
            "data/images",
            "--labels_csv",
            "data/labels.csv",
            "--file_pattern",
            "face-{id}.png",
            "--output",
            "out",
            "--image_size",
            "8",
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        env=env,
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["images_seen"] == 12
