"""croissant.json: every layout's output validates with mlcroissant, offline, and its records are the shards'."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import socket

import cv2
import pytest
import tensorflow as tf

from pipelines import croissant, features
from pipelines.datasets import COMICS_DIR, COMICS_ROOT, FACES_DIR, GLASSES_IMAGE_DIR
from pipelines.preprocess import run
from tests.image_files import labelled_image

SIZE = ["--image_size", "12,10"]


def _kaggle_glasses(root):
    folder = root / GLASSES_IMAGE_DIR
    folder.mkdir(parents=True)
    train, test = ["id,glasses"], ["id"]
    for i in range(1, 31):
        cv2.imwrite(str(folder / f"face-{i}.png"), labelled_image(i % 2, i))
        (train if i <= 24 else test).append(f"{i},{i % 2}" if i <= 24 else str(i))
    (folder / "face-40.png").write_bytes(b"broken")
    train.append("40,1")
    (root / "train.csv").write_text("\n".join(train) + "\n")
    (root / "test.csv").write_text("\n".join(test) + "\n")
    return ["--dataset", "glasses", "--images", str(root), "--balance", "none", *SIZE]


def _kaggle_comics(root):
    for label, folder in enumerate((COMICS_DIR, FACES_DIR)):
        (root / COMICS_ROOT / folder).mkdir(parents=True)
        for i in range(1, 13):
            cv2.imwrite(str(root / COMICS_ROOT / folder / f"{i}.jpg"), labelled_image(label, i))
    return ["--dataset", "comics", "--images", str(root), *SIZE]


def _orl_csv(root):
    (root / "images").mkdir()
    rows = ["id,subject,shot,glasses"]
    for i in range(1, 31):
        subject, glasses = (i - 1) // 5 + 1, int((i - 1) // 5 % 2 == 0)
        cv2.imwrite(str(root / "images" / f"face-{i}.png"), labelled_image(glasses, i, channels=1)[..., 0])
        rows.append(f"{i},{subject},{(i - 1) % 5 + 1},{glasses}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return [
        "--images", str(root / "images"), "--labels_csv", str(root / "labels.csv"), "--label_column", "glasses",
        "--file_pattern", "face-{id}.png", "--group_by", "subject", "--color_mode", "grayscale", "--balance", "none",
        "--dataset_name", "orl-glasses", "--dataset_license", "research use", "--dataset_citation", "AT&T ORL faces",
        *SIZE,
    ]  # fmt: skip


def _class_folders(root):
    for label, name in enumerate(("cats", "dogs")):
        (root / "pets" / name).mkdir(parents=True)
        for i in range(12):
            cv2.imwrite(str(root / "pets" / name / f"{name}{i}.png"), labelled_image(label, i))
    return ["--images", str(root / "pets"), "--class_folders", "cats=0,dogs=1", *SIZE]


LAYOUTS = {"kaggle_glasses": _kaggle_glasses, "kaggle_comics": _kaggle_comics, "orl_csv": _orl_csv}
LAYOUTS["class_folders"] = _class_folders


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def output(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    out = root / "out"
    manifest = run([*LAYOUTS[request.param](root), "--output", str(out)])
    return request.param, out, manifest


@pytest.fixture
def offline(monkeypatch):
    """Any connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _shard_examples(out) -> set[tuple[str, int, str]]:
    spec = features.raw_feature_spec()
    found = set()
    for split in features.SPLITS:
        for path in glob.glob(features.shard_pattern(str(out), split)):
            for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                example = tf.io.parse_single_example(record, spec)
                found.add((example["id"].numpy().decode(), int(example["label"]), split))
    return found


@pytest.mark.slow
def test_mlcroissant_validates_offline_and_its_examples_are_the_shards(output, offline):
    import mlcroissant as mlc

    _, out, manifest = output
    dataset = mlc.Dataset(str(out / features.CROISSANT_FILE))
    assert not dataset.metadata.issues.errors
    records = {
        (r["examples/id"].decode(), int(r["examples/label"]), r["examples/split"].decode())
        for r in dataset.records("examples")
    }
    assert records == _shard_examples(out)
    assert len(records) == manifest["counts"]["written_total"]
    flagged = list(dataset.records("quality_flags"))
    assert {r["quality_flags/id"].decode() for r in flagged} >= {r[0] for r in records}


@pytest.mark.slow
def test_every_file_is_listed_with_its_sha256_and_the_fingerprint_is_the_identifier(output):
    _, out, manifest = output
    card = json.loads((out / features.CROISSANT_FILE).read_text())
    objects = {d["contentUrl"]: d for d in card["distribution"] if d["@type"] == "cr:FileObject"}
    on_disk = {
        os.path.relpath(path, out)
        for pattern in [features.MANIFEST_FILE, *(pattern for _, pattern, _, _ in croissant.FILE_SETS)]
        for path in glob.glob(str(out / pattern))
    }
    assert set(objects) == on_disk
    for relative, entry in objects.items():
        assert entry["sha256"] == hashlib.sha256((out / relative).read_bytes()).hexdigest()
    assert manifest["fingerprint"]["data"] in card["identifier"]
    assert {s for split in features.SPLITS for s in manifest["shards"][split]} <= set(objects)


@pytest.mark.slow
def test_name_license_and_citation_come_from_the_flags_or_the_kaggle_source_and_dead_letters_are_records(
    output, offline
):
    import mlcroissant as mlc

    layout, out, manifest = output
    card = json.loads((out / features.CROISSANT_FILE).read_text())
    if layout.startswith("kaggle"):
        assert card["url"].startswith("https://www.kaggle.com/datasets/")
        assert card["url"] in card["citeAs"] and card["url"] in card["license"]
    elif layout == "orl_csv":
        assert (card["name"], card["license"], card["citeAs"]) == ("orl-glasses", "research use", "AT&T ORL faces")
    else:
        assert (card["name"], card["license"]) == ("out", croissant.UNSPECIFIED_LICENSE)
    dataset = mlc.Dataset(str(out / features.CROISSANT_FILE))
    counts = manifest["counts"]
    expected = {reason for reason, n in {**counts["dead_letter"], **counts["rejected_rows"]}.items() if n}
    if expected:
        assert {r["dead_letters/reason"].decode() for r in dataset.records("dead_letters")} == expected
    else:  # No dead letter: no record set to read.
        assert "dead_letters" not in {record_set.id for record_set in dataset.metadata.record_sets}
    if layout == "kaggle_glasses":
        assert {"not_an_image", "unlabelled"} <= expected


def test_the_manifest_names_the_dataset_layout_that_the_trainer_takes_its_defaults_from(output):
    layout, _, manifest = output
    assert manifest["dataset"] == {"kaggle_glasses": "glasses", "kaggle_comics": "comics"}.get(layout)
