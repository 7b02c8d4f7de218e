"""The review's command line: python -m pipelines.review prints its address and serves.

The test starts it as a process over a copy of the glasses demo data (conftest.py).
"""

from __future__ import annotations

import http.client
import json
import pathlib
import subprocess
import sys
import threading

import pytest

from tests.pipelines.review.client import review_argv

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_the_command_line_prints_its_address_and_serves(images, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.review", *review_argv(images, tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)  # A server that never prints must not hang the tests.
    watchdog.start()
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Open http://127.0.0.1:"):
                break
        else:
            pytest.fail("no address printed:\n" + "".join(lines))
        port = int(lines[-1].split(":")[2].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/api/state")
        assert json.loads(connection.getresponse().read())["progress"]["total"] == 40
        connection.close()
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(timeout=10)
    assert (tmp_path / "overrides.csv").read_text() == "id,glasses\n"  # Created for the pipeline at once.
    assert (tmp_path / "exclusions.csv").read_text() == "id\n"


def test_a_missing_label_issues_file_ends_in_one_error_line_and_exit_2(images, tmp_path):
    missing = tmp_path / "job" / "label_issues.csv"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.review", *review_argv(images, tmp_path, "--label_issues", str(missing))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --label_issues {missing}: cannot read it ([Errno 2] No such file or directory: '{missing}'); "
        "give the label_issues.csv that python -m trainer.task find_label_issues writes"
    ]
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("where", ["under_a_file", "a_folder"])
def test_an_overrides_csv_that_cannot_be_used_ends_in_one_error_line(images, tmp_path, where):
    (tmp_path / "file").write_text("a file, not a folder")
    overrides = tmp_path / "file" / "overrides.csv" if where == "under_a_file" else images
    argv = review_argv(images, tmp_path)
    argv[argv.index("--overrides_csv") + 1] = str(overrides)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.review", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in result.stderr and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    expected = {
        "under_a_file": (1, f"error: {overrides}: Not a directory; a part of the path is a file, not a folder"),
        "a_folder": (2, f"error: {overrides} is a folder, not a CSV file"),
    }[where]
    assert (result.returncode, len(errors)) == (expected[0], 1) and errors[0].startswith(expected[1]), result.stderr
    assert (tmp_path / "file").read_text() == "a file, not a folder"
