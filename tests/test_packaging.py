"""Static checks of the packaging: the Dockerfile, setup.py and requirements.txt agree."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import tarfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not pinned with =="
            pins[re.sub(r"\[.*\]", "", name).lower()] = version
    return pins


def test_dockerfile_copies_existing_files_and_installs_the_requirements():
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = [source for line in dockerfile.splitlines() if line.startswith("COPY ") for source in line.split()[1:-1]]
    assert copied, "the Dockerfile copies nothing"
    for source in copied:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile


def test_dockerfile_base_image_matches_pinned_beam_and_python():
    base = re.search(r"^FROM apache/beam_python(\d+\.\d+)_sdk:(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert base, "the Dockerfile must start from the official Beam Python SDK image"
    python, beam = base.groups()
    assert beam == _requirements()["apache-beam"]
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_requirements_pin_the_tested_stack():
    pins = _requirements()
    expected = {
        "apache-beam": "2.77",
        "tensorflow": "2.21",
        "tensorflow-transform": "1.21",
        "keras": "3.15",
        "keras-tuner": "1.4.8",
        "tensorboard": "2.21",
    }
    for name, version in expected.items():
        assert pins[name].startswith(version), (name, pins.get(name))
    assert "opencv-python-headless" in pins


def test_sdist_for_beam_setup_file_holds_both_packages_and_requirements(tmp_path):
    # What Dataflow's --setup_file does first: build the sdist from setup.py.
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (archive,) = tmp_path.glob("facepipe-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    for expected in (
        "requirements.txt",
        "pipelines/preprocess.py",
        "pipelines/features.py",
        "trainer/task.py",
        "pipelines/review/static/index.html",
    ):
        assert any(name.endswith("/" + expected) for name in names), expected
