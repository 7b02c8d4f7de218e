"""End to end: the preprocessing job on small generated images in a tmp dir."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import apache_beam as beam
import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from apache_beam.testing.util import assert_that, equal_to

from pipelines import features, locks
from pipelines.cli import UsageError
from pipelines.config import PreprocessConfig
from pipelines.manifest import PipelineError, summary_table
from pipelines.preprocess import child_pids, run
from pipelines.sinks import sum_hashes
from pipelines.sources import LabelledImages
from tests.image_files import labelled_image, offline_test_pipeline, write_glasses_like

LABELS = [0, 1, 1] * 20  # 60 images, 20 of class 0 and 40 of class 1


def _write_bad_corpus(images_dir) -> dict[str, str]:
    """Adds broken files next to good ones; returns {file name: expected reason}."""
    good = (images_dir / "face-1.png").read_bytes()
    corpus = {
        "face-101.png": (b"", "zero_bytes"),
        "face-102.png": (b"this is text, not an image", "not_an_image"),
        "face-103.png": (good[: len(good) // 2], "truncated"),
        "face-104.jpg": (b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9", "undecodable"),
    }
    for name, (data, _) in corpus.items():
        (images_dir / name).write_bytes(data)
    (images_dir / "notes.txt").write_text("not an image file")
    return {name: reason for name, (data, reason) in corpus.items()}


def _preprocess(tmp_path, name: str, *extra: str) -> dict:
    return run(
        [
            "--images",
            str(tmp_path / "images"),
            "--labels_csv",
            str(tmp_path / "labels.csv"),
            "--file_pattern",
            "face-{id}",
            "--output",
            str(tmp_path / name),
            "--image_size",
            "12,10",
            "--seed",
            "1",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("corpus")
    images = write_glasses_like(tmp_path, LABELS)
    bad = _write_bad_corpus(images)
    with open(tmp_path / "labels.csv", "a") as f:
        f.writelines(f"{name.split('-')[1].split('.')[0]},1\n" for name in bad)
    manifest = _preprocess(tmp_path, "out")
    return tmp_path, manifest, bad


def _read_split(output_dir: str, split: str) -> list[dict]:
    spec = features.raw_feature_spec()
    files = sorted(glob.glob(features.shard_pattern(output_dir, split)))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").map(
        lambda record: tf.io.parse_single_example(record, spec)
    )
    return [{k: v.numpy() for k, v in example.items()} for example in dataset]


def test_manifest_counts_add_up_and_every_image_is_accounted_for(corpus):
    _, manifest, bad = corpus
    counts = manifest["counts"]
    assert counts["images_seen"] == len(LABELS) + len(bad)
    assert counts["non_image_files"] == 1
    assert counts["written_total"] + counts["dead_letter_total"] == counts["images_seen"]
    for split, per_class in counts["written"].items():
        before = counts["before_balance"][split]
        present = [n for n in before.values() if n]
        assert sorted(set(per_class.values()) - {0}) == ([min(present)] if present else [])
    assert sum(sum(c.values()) for c in counts["before_balance"].values()) == len(LABELS)
    assert counts["dead_letter"]["balanced_out"] == len(LABELS) - counts["written_total"]
    assert manifest["image"] == {"height": 10, "width": 12, "channels": 3, "color_mode": "rgb"}


def test_bad_files_are_dead_letters_with_their_reasons(corpus):
    tmp_path, _, bad = corpus
    records = [
        json.loads(line)
        for path in glob.glob(str(tmp_path / "out" / "dead_letter" / "*.jsonl"))
        for line in pathlib.Path(path).read_text().splitlines()
    ]
    by_file = {os.path.basename(r["path"]): r["reason"] for r in records if r["stage"] == "decode"}
    assert by_file == bad


def test_shards_parse_with_the_feature_spec_and_match_the_manifest(corpus):
    tmp_path, manifest, _ = corpus
    for split in features.SPLITS:
        examples = _read_split(str(tmp_path / "out"), split)
        assert len(examples) == sum(manifest["counts"]["written"][split].values())
        for example in examples:
            assert len(example["image"]) == 10 * 12 * 3
            assert (example["height"], example["width"], example["channels"]) == (10, 12, 3)
        ids = [e["id"].decode() for e in examples]
        assert len(ids) == len(set(ids))
    train_pixels = np.stack([np.frombuffer(e["image"], np.uint8) for e in _read_split(str(tmp_path / "out"), "train")])
    # The pixels are the area-resized RGB image, not floats: check one against OpenCV directly.
    example = _read_split(str(tmp_path / "out"), "train")[0]
    source = cv2.imread(str(tmp_path / "images" / f"face-{example['id'].decode()}.png"))
    expected = cv2.cvtColor(cv2.resize(source, (12, 10), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(np.frombuffer(example["image"], np.uint8).reshape(10, 12, 3), expected)
    assert train_pixels.dtype == np.uint8


def test_transform_statistics_equal_numpy_on_the_train_split(corpus):
    tmp_path, _, _ = corpus
    output = str(tmp_path / "out")
    train = (
        np.stack([np.frombuffer(e["image"], np.uint8).reshape(10, 12, 3) for e in _read_split(output, "train")]).astype(
            np.float64
        )
        / 255.0
    )
    mean = train.mean(axis=(0, 1, 2))
    std = train.std(axis=(0, 1, 2))
    transform = tft.TFTransformOutput(os.path.join(output, features.TRANSFORM_DIR))
    test = _read_split(output, "test")
    raw = {
        features.IMAGE_KEY: tf.constant([e["image"] for e in test]),
        features.LABEL_KEY: tf.constant([e["label"] for e in test], tf.int64),
    }
    transformed = transform.transform_raw_features(raw)[features.NORMALIZED_IMAGE_KEY].numpy()
    pixels = np.stack([np.frombuffer(e["image"], np.uint8).reshape(10, 12, 3) for e in test]) / 255.0
    np.testing.assert_allclose(transformed, (pixels - mean) / std, atol=1e-4)


def test_multi_process_run_writes_the_same_examples(corpus):
    tmp_path, manifest, _ = corpus
    cache_dir = tmp_path / "cache_mp"
    other = _preprocess(
        tmp_path,
        "out_mp",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
        "--cache_dir",
        str(cache_dir),
    )
    # Both workers write the cache: one entry per decodable image, no temp file left.
    assert other["cache"]["cache_misses"] == len(LABELS) + 4  # The 4 bad files miss and are not cached.
    assert len(glob.glob(str(cache_dir / "*" / "*.fpdc"))) == len(LABELS)
    assert not glob.glob(str(cache_dir / "*" / ".*.facepipe-*.tmp"))  # pipelines/atomic.py temporaries.
    assert other["counts"] == manifest["counts"]
    assert other["fingerprint"] == manifest["fingerprint"]
    for split in features.SPLITS:
        first = sorted((e["id"], e["image"]) for e in _read_split(str(tmp_path / "out"), split))
        second = sorted((e["id"], e["image"]) for e in _read_split(str(tmp_path / "out_mp"), split))
        assert first == second


def test_existing_output_refused_without_overwrite(corpus):
    tmp_path, _, _ = corpus
    with pytest.raises(SystemExit, match="--overwrite"):
        _preprocess(tmp_path, "out")


def test_a_second_writer_of_an_output_is_refused_and_deletes_nothing(corpus):
    tmp_path, _, _ = corpus
    before = sorted(os.listdir(tmp_path / "out"))
    with locks.held(str(tmp_path / "out")):  # The first writer, still running.
        with pytest.raises(locks.LockedError, match=f"being written by PID {os.getpid()} on "):
            _preprocess(tmp_path, "out", "--overwrite")
        assert sorted(os.listdir(tmp_path / "out")) == sorted([*before, locks.LOCK_FILE])
    assert sorted(os.listdir(tmp_path / "out")) == before


def test_rejected_override_and_exclusion_rows_are_reported_and_strict_fails_on_them(tmp_path, capsys):
    write_glasses_like(tmp_path, [0, 1] * 5)
    (tmp_path / "overrides.csv").write_text("id,label\n3,inf\n3,glases\n999,1\n2,0\n")
    (tmp_path / "exclusions.csv").write_text("id\nnope\n")
    lists = ["--overrides_csv", str(tmp_path / "overrides.csv"), "--exclude", str(tmp_path / "exclusions.csv")]
    result = _preprocess(tmp_path, "out", *lists)
    assert result["counts"]["rejected_csv_rows"] == {
        "overrides": {"count": 3, "first_ids": ["3", "999"]},
        "exclusions": {"count": 1, "first_ids": ["nope"]},
    }
    assert result["counts"]["overrides_applied"] == 1  # The good row still applies.
    summary = [line for line in capsys.readouterr().err.splitlines() if line.startswith("NOT APPLIED")]
    assert len(summary) == 1 and "3 --overrides_csv rows rejected (3, 999, ...)" in summary[0]

    with pytest.raises(PipelineError, match=r"^--strict: 3 --overrides_csv rows rejected"):
        _preprocess(tmp_path, "strict", *lists, "--strict")
    assert not (tmp_path / "strict" / features.MANIFEST_FILE).exists()


def _process_run_manifest(tmp_path: pathlib.Path, images: pathlib.Path) -> dict:
    """The manifest of ``python -m pipelines.preprocess`` run as a process over ``images`` (labels.csv
    beside them) into tmp_path/out: a FIFO opened in the test's own process could hang it."""
    argv = ["--images", str(images), "--labels_csv", str(tmp_path / "labels.csv"), "--output", str(tmp_path / "out")]
    argv += ["--file_pattern", "face-{id}", "--image_size", "12,10", "--balance", "none"]
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[2]))
    process = subprocess.run(
        [sys.executable, "-m", "pipelines.preprocess", *argv], env=env, capture_output=True, text=True, timeout=240
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads((tmp_path / "out" / features.MANIFEST_FILE).read_text())


@pytest.mark.slow
def test_a_fifo_and_a_dangling_link_are_dead_letters_counted_in_the_manifest_not_a_hang(tmp_path):
    images = write_glasses_like(tmp_path, [0, 1] * 5)
    os.mkfifo(images / "face-11.png")  # Nothing ever writes to it: opening it would block forever.
    os.symlink(tmp_path / "gone.png", images / "face-12.png")
    with open(tmp_path / "labels.csv", "a") as f:
        f.write("11,1\n12,0\n")
    manifest = _process_run_manifest(tmp_path, images)
    assert manifest["counts"]["images_seen"] == 12
    assert manifest["counts"]["dead_letter"] == {"dangling_link": 1, "not_a_regular_file": 1}
    records = [
        json.loads(line)
        for path in glob.glob(str(tmp_path / "out" / features.DEAD_LETTER_DIR / "*.jsonl"))
        for line in pathlib.Path(path).read_text().splitlines()
    ]
    assert sorted((r["id"], r["reason"]) for r in records) == [("11", "not_a_regular_file"), ("12", "dangling_link")]


@pytest.mark.slow
def test_links_to_nothing_loops_and_folders_named_like_images_in_a_subfolder_are_dead_letters(tmp_path):
    images = write_glasses_like(tmp_path, [0, 1] * 5)
    (images / "sub").mkdir()
    os.symlink(tmp_path / "gone.png", images / "sub" / "face-11.png")
    os.symlink(images / "sub" / "face-12.png", images / "sub" / "face-12.png")  # A loop of one link.
    (images / "sub" / "face-13.png").mkdir()
    with open(tmp_path / "labels.csv", "a") as f:
        f.write("11,1\n12,0\n13,1\n")
    manifest = _process_run_manifest(tmp_path, images)
    assert manifest["counts"]["images_seen"] == 13
    assert manifest["counts"]["dead_letter"] == {"dangling_link": 2, "not_a_regular_file": 1}


def test_mostly_bad_input_aborts_without_a_manifest(tmp_path):
    images = write_glasses_like(tmp_path, [0, 1])
    for i in range(10, 16):
        (images / f"face-{i}.png").write_bytes(b"garbage")
        with open(tmp_path / "labels.csv", "a") as f:
            f.write(f"{i},1\n")
    with pytest.raises(PipelineError, match="max_bad_fraction"):
        _preprocess(tmp_path, "out")
    assert not (tmp_path / "out" / features.MANIFEST_FILE).exists()


def _hash_sum(values) -> str:
    """The fingerprint the tests expect: the sum of the items' SHA-256 modulo 2**256, in hex."""
    total = sum(int.from_bytes(hashlib.sha256(v).digest(), "big") for v in values) % 2**256
    return f"{total:064x}"


def _listing_fingerprint(paths) -> str:
    return _hash_sum(f"{p}\0{os.path.getsize(p)}".encode() for p in paths)


def test_fingerprints_are_the_hash_sums_of_the_listed_files_and_decoded_contents(corpus):
    tmp_path, manifest, bad = corpus
    images = sorted(p for p in (tmp_path / "images").iterdir() if p.suffix in (".png", ".jpg"))
    decoded = [p for p in images if p.name not in bad]
    assert manifest["fingerprint"]["images"] == _listing_fingerprint(map(str, images))
    assert manifest["fingerprint"]["content"] == _hash_sum(p.read_bytes() for p in decoded)
    assert manifest["fingerprint"]["csvs"] == {
        str(tmp_path / "labels.csv"): hashlib.sha256((tmp_path / "labels.csv").read_bytes()).hexdigest()
    }


def test_copies_of_an_image_add_to_the_content_fingerprint_instead_of_cancelling(tmp_path):
    images = write_glasses_like(tmp_path, [0, 1, 0, 1])
    one = _preprocess(tmp_path, "one")
    for copy_id in (5, 6):  # Two more copies of face-1: with XOR the pair would vanish.
        shutil.copy(images / "face-1.png", images / f"face-{copy_id}.png")
        with open(tmp_path / "labels.csv", "a") as f:
            f.write(f"{copy_id},0\n")
    three = _preprocess(tmp_path, "three")
    assert three["counts"]["images_seen"] == 6
    assert three["fingerprint"]["content"] != one["fingerprint"]["content"]
    assert three["fingerprint"]["content"] == _hash_sum(p.read_bytes() for p in images.iterdir())
    assert three["fingerprint"]["data"] != one["fingerprint"]["data"]


def test_an_image_listed_twice_counts_once_in_the_listing_fingerprint(tmp_path):
    images = write_glasses_like(tmp_path, [0, 1, 1])
    once = str(images / "*.png")
    twice = (once, str(images / "face-1.png"))  # Overlapping globs: face-1 is listed twice.
    config = PreprocessConfig(
        image_globs=twice,
        output_dir=str(tmp_path / "out"),
        classes=("0", "1"),
        labels_csv=(str(tmp_path / "labels.csv"),),
        file_pattern="face-{id}",
    )
    with offline_test_pipeline() as pipeline:
        sources = pipeline | LabelledImages(config)
        fingerprint = sources["fingerprint"] | beam.CombineGlobally(sum_hashes)
        assert_that(fingerprint, equal_to([int(_listing_fingerprint(glob.glob(once)), 16)]), label="Fingerprint")
        count = sources["images"] | beam.combiners.Count.Globally()
        assert_that(count, equal_to([3]), label="Count")


def test_the_hash_sum_does_not_depend_on_order_or_bundles():
    items = [bytes([i % 7, i]) for i in range(200)]
    expected = int(_hash_sum(items), 16)
    for order in (items, items[::-1], sorted(items)):
        with offline_test_pipeline() as pipeline:
            combined = (
                pipeline
                | beam.Create(order, reshuffle=True)
                | beam.Map(lambda item: int.from_bytes(hashlib.sha256(item).digest(), "big"))
                | beam.Reshuffle()
                | beam.CombineGlobally(sum_hashes)
                | "AcrossStages" >> beam.Reshuffle()  # The 256-bit result must survive its coder.
            )
            assert_that(combined, equal_to([expected]))


RUN_FILES = (".tft_tmp", ".tmp_shards", "_stats.json")


def _run_files_left(output) -> list[str]:
    return sorted(
        str(p.relative_to(output)) for p in output.rglob("*") if p.name in RUN_FILES or p.name.startswith("beam-temp-")
    )


def test_kaggle_layout_with_an_empty_split_stray_files_and_a_tiny_image(tmp_path):
    folder = tmp_path / "kaggle" / "faces-spring-2020"
    folder.mkdir(parents=True)
    rows = ["id,glasses"]
    for i, label in enumerate(LABELS[:20], start=1):
        cv2.imwrite(str(folder / f"face-{i}.png"), labelled_image(label, i))
        rows.append(f"{i},{label}")
    cv2.imwrite(str(folder / "face-50.png"), np.zeros((1, 1, 3), np.uint8))
    rows.append("50,1")
    for name in ("face-60.PNG", "face-61.jpg", "face-62.webp", "notes.txt"):
        (folder / name).write_bytes(b"not listed by the preset's face-*.png")
    (tmp_path / "kaggle" / "train.csv").write_text("\n".join(rows) + "\n")
    result = run(
        [
            "--dataset",
            "glasses",
            "--images",
            str(tmp_path / "kaggle"),
            "--output",
            str(tmp_path / "out"),
            "--image_size",
            "12,10",
            "--splits",
            "train=0.8,test=0.2",
            "--balance",
            "none",
        ]
    )
    counts = result["counts"]
    assert counts["unlisted_files"] == 4
    assert counts["dead_letter"] == {"too_small": 1}
    assert counts["written_total"] == 20
    assert sum(counts["written"]["validation"].values()) == 0
    assert result["shards"]["validation"] == ["validation-00000-of-00001.tfrecord.gz"]
    for split in features.SPLITS:
        assert len(_read_split(str(tmp_path / "out"), split)) == sum(counts["written"][split].values())
    assert _run_files_left(tmp_path / "out") == []


def test_images_under_min_side_fail_naming_min_side_not_the_label_flags(tmp_path):
    write_glasses_like(tmp_path, [0, 1, 1])
    with pytest.raises(PipelineError) as failed:
        _preprocess(tmp_path, "out", "--min_side", "100")
    message = str(failed.value)
    assert "{'too_small': 3}" in message and "--min_side 100" in message
    assert "--labels_csv" not in message


def test_no_image_written_fails_without_a_manifest_or_temp_files(tmp_path):
    write_glasses_like(tmp_path, [0, 1, 1])
    (tmp_path / "labels.csv").write_text("id,label\n")  # Header only: every image has no_label_row.
    with pytest.raises(PipelineError, match=r"3 of 3 images have no usable label.*max_unusable_fraction"):
        _preprocess(tmp_path, "out")
    assert not (tmp_path / "out" / features.MANIFEST_FILE).exists()
    assert _run_files_left(tmp_path / "out") == []
    with pytest.raises(PipelineError, match="no examples written"):
        _preprocess(tmp_path, "out", "--overwrite", "--max_unusable_fraction", "1")
    assert not (tmp_path / "out" / features.MANIFEST_FILE).exists()


def test_images_matching_nothing_fail_before_the_run(tmp_path):
    write_glasses_like(tmp_path, [])
    with pytest.raises(UsageError, match="no image files match"):
        _preprocess(tmp_path, "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_a_multi_process_run_stops_its_workers(corpus, kill):
    tmp_path, _, _ = corpus
    command = [
        sys.executable,
        "-m",
        "pipelines.preprocess",
        "--images",
        str(tmp_path / "images"),
        "--labels_csv",
        str(tmp_path / "labels.csv"),
        "--file_pattern",
        "face-{id}",
        "--output",
        str(tmp_path / f"out_killed_{kill.name}"),
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    ]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = child_pids(driver.pid)
    assert len(workers) >= 2, "the run never started its SDK workers"
    time.sleep(1)
    driver.send_signal(kill)
    driver.wait(timeout=60)
    time.sleep(5)
    survivors = [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == []


def test_examples_carry_their_group_so_folds_can_keep_a_person_together(tmp_path):
    images = write_glasses_like(tmp_path, [0, 1] * 6)
    rows = ["id,label,subject"] + [f"{i},{i % 2 == 0:d},s{(i - 1) // 4}" for i in range(1, 13)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    run(
        [
            "--images",
            str(images),
            "--labels_csv",
            str(tmp_path / "labels.csv"),
            "--file_pattern",
            "face-{id}.png",
            "--group_by",
            "subject",
            "--balance",
            "none",
            "--image_size",
            "8",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    examples = [e for split in features.SPLITS for e in _read_split(str(tmp_path / "out"), split)]
    groups = {e[features.ID_KEY].decode(): e[features.GROUP_KEY].decode() for e in examples}
    assert groups == {str(i): f"s{(i - 1) // 4}" for i in range(1, 13)}


def test_without_numeric_columns_examples_have_no_vector(corpus):
    tmp_path, manifest, _ = corpus
    assert manifest["vector"] == {"key": "latent", "length": 0, "columns": []}
    assert set(manifest["feature_spec"]) == {"image", "label", "id", "group", "height", "width", "channels"}
    files = sorted(glob.glob(features.shard_pattern(str(tmp_path / "out"), "train")))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(3):
        assert set(tf.train.Example.FromString(record.numpy()).features.feature) == set(manifest["feature_spec"])


VECTOR_BAD_ROWS = {101: ("", "column f2: missing"), 102: ("abc", "column f2: 'abc' is not a number")}
VECTOR_BAD_ROWS[103] = ("inf", "column f2: 'inf' is not a finite float32")


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    """30 labelled images whose CSV rows hold random float32 values f1..f3 (and 3 rows with a bad f2)."""
    tmp_path = tmp_path_factory.mktemp("vector")
    images = write_glasses_like(tmp_path, LABELS[:30])
    rng = np.random.default_rng(5)
    vectors = {i: (rng.standard_normal(3) * [1, 10, 0.01] + [0, 5, -3]).astype(np.float32) for i in range(1, 31)}
    rows = ["id,f1,label,f2,note,f3"]
    for i, label in enumerate(LABELS[:30], start=1):
        f1, f2, f3 = (str(v) for v in vectors[i])  # the shortest text that reads back as this float32
        rows.append(f"{i},{f1},{label},{f2},x,{f3}")
    for i, (cell, _) in VECTOR_BAD_ROWS.items():
        cv2.imwrite(str(images / f"face-{i}.png"), labelled_image(1, i))
        rows.append(f"{i},0.5,1,{cell},x,0.5")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    manifest = _preprocess(tmp_path, "out", "--numeric_columns", "f1..f3", "--balance", "none")
    return tmp_path, manifest, vectors


def test_the_vector_reaches_the_shards_bit_for_bit(vector_run):
    tmp_path, manifest, vectors = vector_run
    assert manifest["vector"] == {"key": "latent", "length": 3, "columns": ["f1", "f2", "f3"]}
    assert manifest["feature_spec"]["latent"].startswith("float32[3]")
    spec = features.raw_feature_spec(features.vector_length(manifest))
    seen = {}
    for split in features.SPLITS:
        files = sorted(glob.glob(features.shard_pattern(str(tmp_path / "out"), split)))
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            example = tf.io.parse_single_example(record, spec)
            seen[int(example["id"].numpy())] = example["latent"].numpy()
    assert sorted(seen) == list(range(1, 31))
    for image_id, vector in seen.items():
        assert vector.dtype == np.float32 and vector.tobytes() == vectors[image_id].tobytes()


def test_a_bad_vector_is_a_dead_letter_and_the_counts_add_up(vector_run):
    tmp_path, manifest, _ = vector_run
    records = [
        json.loads(line)
        for path in glob.glob(str(tmp_path / "out" / "dead_letter" / "*.jsonl"))
        for line in pathlib.Path(path).read_text().splitlines()
    ]
    assert {int(r["id"]): (r["reason"], r["detail"]) for r in records} == {
        i: ("bad_vector", detail) for i, (_, detail) in VECTOR_BAD_ROWS.items()
    }
    counts = manifest["counts"]
    assert counts["dead_letter"] == {"bad_vector": 3}
    assert counts["images_seen"] == counts["written_total"] + 3 == 33


def test_tf_transform_z_scores_the_vector_with_the_train_splits_statistics(vector_run):
    tmp_path, manifest, _ = vector_run
    output = str(tmp_path / "out")
    spec = features.raw_feature_spec(3)

    def split_examples(split):
        files = sorted(glob.glob(features.shard_pattern(output, split)))
        dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").map(
            lambda r: tf.io.parse_single_example(r, spec)
        )
        return next(iter(dataset.batch(100)))

    train, test = split_examples("train"), split_examples("test")
    train_vectors = train["latent"].numpy().astype(np.float64)
    assert 10 < len(train_vectors) < 30  # the statistics must be the train split's, not all 30
    mean, std = train_vectors.mean(axis=0), train_vectors.std(axis=0)
    transform = tft.TFTransformOutput(os.path.join(output, features.TRANSFORM_DIR))
    layer = transform.transform_features_layer()
    raw = {key: test[key] for key in features.transform_input_keys(features.vector_length(manifest))}
    out = layer(raw)
    np.testing.assert_allclose(
        out[features.NORMALIZED_VECTOR_KEY].numpy(), (test["latent"].numpy() - mean) / std, rtol=1e-4, atol=1e-5
    )
    # A reader that passes only image and label (the trainer before vectors) still gets its images.
    images_only = layer({key: test[key] for key in (features.IMAGE_KEY, features.LABEL_KEY)})
    np.testing.assert_array_equal(
        images_only[features.NORMALIZED_IMAGE_KEY].numpy(), out[features.NORMALIZED_IMAGE_KEY].numpy()
    )


def _jsonl(folder: pathlib.Path, pattern: str) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob(pattern)) for line in path.read_text().splitlines()]


def test_quality_audit_finds_duplicates_and_leakage_and_keep_one_dead_letters_the_copies(tmp_path):
    images = write_glasses_like(tmp_path, [0, 1] * 15)
    rows = []
    for offset, source in enumerate(range(1, 6)):  # 3 byte-for-byte copies, 2 brightened ones
        copy = 101 + offset
        original = images / f"face-{source}.png"
        if offset < 3:
            shutil.copy(original, images / f"face-{copy}.png")
        else:
            brighter = cv2.convertScaleAbs(cv2.imread(str(original)), alpha=1.06, beta=3)
            cv2.imwrite(str(images / f"face-{copy}.png"), brighter)
        rows.append(f"{copy},{(source - 1) % 2}\n")
    cv2.imwrite(str(images / "face-99.png"), np.zeros((60, 48, 3), np.uint8))
    rows.append("99,0\n")
    with open(tmp_path / "labels.csv", "a") as f:
        f.writelines(rows)

    manifest = _preprocess(
        tmp_path, "out", "--balance", "none", "--splits", "train=0.5,test=0.5", "--dedupe", "keep_one"
    )

    quality = manifest["quality"]
    assert (quality["duplicate_groups"], quality["exact_groups"], quality["near_groups"]) == (5, 3, 2)
    assert quality["duplicate_images"] == 10 and quality["dedupe"] == "keep_one"
    assert quality["outliers"]["constant"] >= 1
    counts = manifest["counts"]
    assert counts["dead_letter"] == {"near_duplicate": 5}
    assert counts["images_seen"] == 36 == counts["written_total"] + counts["dead_letter_total"]
    out = tmp_path / "out"
    lines = _jsonl(out / "quality", "images-*.jsonl")
    assert len(lines) == 36 and {"constant"} <= set(next(line for line in lines if line["id"] == "99")["flags"])
    groups = _jsonl(out / "quality", "duplicates-*.jsonl")
    assert sorted(g["members"] for g in groups) == [[str(i), str(100 + i)] for i in range(1, 6)]
    leaking = [g for g in groups if len(set(g["member_splits"])) > 1]
    assert quality["leakage"]["count"] == len(leaking) > 0
    assert quality["leakage"]["first_groups"][0]["members"] == min(
        (g["members"] for g in leaking), key=lambda m: (len(m[0]), m[0])
    )
    dropped = _jsonl(out / "dead_letter", "*.jsonl")
    assert sorted(r["id"] for r in dropped) == [str(i) for i in range(101, 106)]
    assert all(r["reason"] == "near_duplicate" and r["stage"] == "dedupe" for r in dropped)
    written_ids = {
        example["id"].numpy().decode()
        for split in features.SPLITS
        for example in tf.data.TFRecordDataset(sorted(glob.glob(features.shard_pattern(str(out), split))), "GZIP").map(
            lambda record: tf.io.parse_single_example(record, features.raw_feature_spec())
        )
    }
    assert written_ids == {str(i) for i in [*range(1, 31), 99]}
    assert "LEAKAGE" in summary_table(manifest) and not list(out.glob("quality/beam-temp-*"))


def test_unlabelled_images_are_audited_never_written_and_a_labelled_copy_is_kept(tmp_path):
    images = write_glasses_like(tmp_path, [0, 1] * 10)
    shutil.copy(images / "face-2.png", images / "face-1.png")  # 1 and 2: one labelled pair
    shutil.copy(images / "face-3.png", images / "face-0.png")  # 0: no label row, copies 3
    (images / "face-40.png").write_bytes(b"not a png")  # no label row, undecodable

    manifest = _preprocess(tmp_path, "out", "--balance", "none", "--dedupe", "keep_one")

    out = tmp_path / "out"
    groups = {tuple(g["members"]): g for g in _jsonl(out / "quality", "duplicates-*.jsonl")}
    assert set(groups) == {("0", "3"), ("1", "2")}
    unlabelled_copy = groups[("0", "3")]
    assert unlabelled_copy["member_splits"][0] == "unlabelled" and unlabelled_copy["leakage"]
    assert unlabelled_copy["kept"] == "3"  # the labelled one, though 0 is the lower id
    lines = {line["id"]: line for line in _jsonl(out / "quality", "images-*.jsonl")}
    assert len(lines) == 21 and (lines["0"]["split"], lines["0"]["label"]) == ("unlabelled", None)
    reasons = sorted((r["id"], r["reason"]) for r in _jsonl(out / "dead_letter", "*.jsonl"))
    assert reasons == [("0", "no_label_row"), ("2", "near_duplicate"), ("40", "no_label_row")]
    counts = manifest["counts"]
    assert counts["images_seen"] == 22 == counts["written_total"] + counts["dead_letter_total"]
    assert manifest["quality"]["leakage"]["count"] >= 1


def test_a_labels_csv_that_is_a_folder_is_one_line_and_writes_nothing(tmp_path, capsys):
    write_glasses_like(tmp_path, [0, 1])
    (tmp_path / "labels.csv").unlink()
    (tmp_path / "labels.csv").mkdir()
    with pytest.raises(UsageError):
        _preprocess(tmp_path, "out")
    assert (
        capsys.readouterr().err.strip().splitlines()[-1] == f"error: {tmp_path}/labels.csv is a folder, not a CSV file"
    )
    assert not (tmp_path / "out").exists()


def test_an_image_size_above_the_maximum_is_refused_up_front(tmp_path, capsys):
    write_glasses_like(tmp_path, [0, 1])
    with pytest.raises(UsageError, match=f"above the maximum {features.MAX_IMAGE_SIDE}"):
        _preprocess(tmp_path, "out", "--image_size", "100000")
    assert not (tmp_path / "out").exists()


def test_an_output_that_cannot_be_made_is_one_line_and_leaves_nothing(tmp_path):
    write_glasses_like(tmp_path, [0, 1])
    (tmp_path / "file").write_text("a file, not a folder")
    argv = ["--images", str(tmp_path / "images"), "--labels_csv", str(tmp_path / "labels.csv")]
    argv += ["--file_pattern", "face-{id}", "--output", str(tmp_path / "file" / "out")]
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[2]))
    process = subprocess.run(
        [sys.executable, "-m", "pipelines.preprocess", *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 1
    assert process.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'file' / 'out'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "images", "labels.csv"]
