"""The pipeline's preflight says what would fail on a cluster, and what to fix."""

from __future__ import annotations

import pytest

from pipelines.preflight import preflight
from tests.image_files import write_glasses_like


def _failures(findings) -> list[str]:
    return [f.message for f in findings if not f.ok]


def _args(tmp_path, *extra: str) -> list[str]:
    return [
        "--images",
        str(tmp_path / "images"),
        "--labels_csv",
        str(tmp_path / "labels.csv"),
        "--file_pattern",
        "face-{id}.png",
        "--output",
        str(tmp_path / "out"),
        *extra,
    ]


def test_local_run_on_good_inputs_passes(tmp_path):
    write_glasses_like(tmp_path, [0, 1])
    assert _failures(preflight(_args(tmp_path))) == []


def test_dataflow_with_local_paths_and_no_setup_file_fails_with_fixes(tmp_path):
    write_glasses_like(tmp_path, [0, 1])
    failures = _failures(preflight(_args(tmp_path, "--runner", "DataflowRunner", "--temp_location", "/tmp/x")))
    text = "\n".join(failures)
    assert "cannot read local paths" in text
    assert "--setup_file" in text
    assert "--project" in text and "--region" in text
    assert "--temp_location gs://" in text


def test_flink_docker_without_image_fails(tmp_path):
    write_glasses_like(tmp_path, [0, 1])
    failures = _failures(preflight(_args(tmp_path, "--runner", "FlinkRunner", "--environment_type", "DOCKER")))
    assert any("--environment_config IMAGE" in f for f in failures)


def test_portable_runner_on_this_machine_may_use_local_paths(tmp_path):
    write_glasses_like(tmp_path, [0, 1])
    args = _args(
        tmp_path, "--runner", "PortableRunner", "--environment_type", "EXTERNAL", "--environment_config", "localhost:1"
    )
    assert _failures(preflight(args)) == []


def test_missing_images_csv_columns_and_existing_output(tmp_path):
    write_glasses_like(tmp_path, [0, 1])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    (tmp_path / "labels.csv").write_text("name,label\n1,0\n")
    args = [
        "--images",
        str(tmp_path / "nothing"),
        "--labels_csv",
        str(tmp_path / "labels.csv"),
        "--output",
        str(tmp_path / "out"),
    ]
    text = "\n".join(_failures(preflight(args)))
    assert "no files match" in text
    assert "no id column 'id'" in text
    assert "--overwrite" in text


def test_preflight_refuses_what_the_run_would_refuse(tmp_path):
    """The same header checks as the run: id-only overrides, unknown columns, another encoding."""
    write_glasses_like(tmp_path, [0, 1])
    (tmp_path / "overrides.csv").write_text("id\n1\n")
    (tmp_path / "exclusions.csv").write_text("foo,bar\n1,2\n")
    (tmp_path / "more.csv").write_bytes("id,label\n1,0\n".encode("utf-16"))
    args = _args(
        tmp_path,
        "--overrides_csv",
        str(tmp_path / "overrides.csv"),
        "--exclude",
        str(tmp_path / "exclusions.csv"),
        "--labels_csv",
        str(tmp_path / "more.csv"),
    )
    failures = _failures(preflight(args))
    assert len(failures) == 3
    assert failures[0].startswith(f"{tmp_path / 'more.csv'} is not utf-8 text")
    assert failures[1].startswith(f"{tmp_path / 'overrides.csv'}: header ['id'] has no column 'id' and 'label'")
    assert failures[2].startswith(f"{tmp_path / 'exclusions.csv'}: header ['foo', 'bar'] has no column 'id'")


def test_a_missing_exclusions_file_is_a_usage_error_not_an_id(tmp_path, capsys):
    write_glasses_like(tmp_path, [0, 1])
    for missing in ("missing_file.txt", "gone.csv", str(tmp_path / "no" / "ids")):
        with pytest.raises(SystemExit) as exited:
            preflight(_args(tmp_path, "--exclude", missing))
        assert exited.value.code == 2
        assert (
            capsys.readouterr().err
            == f"error: --exclude {missing}: no such file (give an existing CSV or comma-separated ids)\n"
        )
    assert _failures(preflight(_args(tmp_path, "--exclude", "1,2"))) == []
