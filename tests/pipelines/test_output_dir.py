"""The output directory: never overlapping an input, only facepipe's own files ever deleted."""

from __future__ import annotations

import pytest
import tensorflow as tf

from pipelines import features, output_dir
from pipelines.cli import UsageError


@pytest.fixture
def inputs(tmp_path):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    (images / "face-1.png").write_bytes(b"png")
    (tmp_path / "data" / "labels.csv").write_text("id,label\n1,0\n")
    return [str(images / "**"), str(tmp_path / "data" / "labels.csv")]


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("where", ["data/images", "data/images/out", "data", "."])
def test_an_output_overlapping_an_input_is_refused_and_nothing_deleted(tmp_path, inputs, where, overwrite):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError, match="overlaps the input") as raised:
        output_dir.prepare(str(tmp_path / where), inputs, overwrite=overwrite)
    assert raised.value.code == 2
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_foreign_directory_is_refused_even_with_overwrite(tmp_path, inputs):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(UsageError, match="not written by facepipe"):
        output_dir.prepare(str(foreign), inputs, overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "years of work"


def test_overwrite_deletes_only_facepipes_own_outputs(tmp_path, inputs):
    out = tmp_path / "out"
    output_dir.prepare(str(out), inputs, overwrite=False)
    assert (out / output_dir.MARKER_FILE).exists()
    own = ["train-00000-of-00001.tfrecord.gz", features.MANIFEST_FILE, output_dir.STATS_FILE]
    for name in own:
        (out / name).write_text("old")
    (out / features.DEAD_LETTER_DIR).mkdir()
    (out / features.DEAD_LETTER_DIR / "dead_letter-00000-of-00001.jsonl").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="--overwrite"):
        output_dir.prepare(str(out), inputs, overwrite=False)
    output_dir.prepare(str(out), inputs, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [output_dir.MARKER_FILE, "notes.txt"]


def test_empty_shard_is_a_valid_empty_gzip_tfrecord_file(tmp_path):
    output_dir.write_empty_shard(str(tmp_path), "validation")
    files = [str(p) for p in tmp_path.glob("validation-*" + features.SHARD_SUFFIX)]
    assert len(files) == 1
    assert list(tf.data.TFRecordDataset(files, compression_type="GZIP")) == []


def test_remove_run_files_removes_only_the_run_files(tmp_path):
    run_files = [*output_dir.RUN_FILES, "beam-temp-x-123"]
    for name in run_files[1:]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "part").write_text("temp")
    (tmp_path / output_dir.STATS_FILE).write_text("{}")
    (tmp_path / features.DEAD_LETTER_DIR / "beam-temp-dead_letter-1").mkdir(parents=True)
    (tmp_path / features.DEAD_LETTER_DIR / "dead_letter-00000-of-00001.jsonl").write_text("{}")
    (tmp_path / features.MANIFEST_FILE).write_text("{}")
    output_dir.remove_run_files(str(tmp_path))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        features.DEAD_LETTER_DIR,
        f"{features.DEAD_LETTER_DIR}/dead_letter-00000-of-00001.jsonl",
        features.MANIFEST_FILE,
    ]
