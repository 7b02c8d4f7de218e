"""facepipe: Beam preprocessing (pipelines/) and Keras training (trainer/) for face classifiers.

Also Beam's ``--setup_file`` for Dataflow workers: they build this sdist and install it.
"""

from __future__ import annotations

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setuptools.setup(
    name="facepipe",
    version="0.1.0",
    description="Image-classification pipeline: Apache Beam preprocessing and Keras training",
    packages=setuptools.find_packages(include=["pipelines", "pipelines.*", "trainer", "trainer.*"]),
    # The label review page (python -m pipelines.review) is served from these files.
    package_data={"pipelines.review": ["static/*"]},
    python_requires=">=3.11,<3.12",
    install_requires=_requirements(),
)
