"""The manifest: the end-of-run summary, and what changes the data fingerprint and what does not."""

from __future__ import annotations

import hashlib
import json

import pytest

from pipelines import cache, features
from pipelines.manifest import PipelineError, build_manifest, rejected_rows_by_csv, summary_table
from pipelines.options import parse_args

# Run statistics of a finished run whose counts add up (2 listed, 2 written).
STATS = {
    "images_listed": 2,
    "written/train/0": 1,
    "written/train/1": 1,
    "fingerprint/file_hashes": "a" * 64,
    "fingerprint/content_hashes": "b" * 64,
}


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "labels.csv").write_text("id,label\n1,0\n2,1\n")
    (tmp_path / "overrides.csv").write_text("id,label\n1,1\n")
    (tmp_path / "exclusions.csv").write_text("id\n7\n")
    return tmp_path


def _fingerprint(tmp_path, *extra: str, stats: dict | None = None) -> dict:
    config, _ = parse_args(
        [
            "--images",
            str(tmp_path / "images"),
            "--labels_csv",
            str(tmp_path / "labels.csv"),
            "--overrides_csv",
            str(tmp_path / "overrides.csv"),
            "--exclude",
            str(tmp_path / "exclusions.csv"),
            "--output",
            str(tmp_path / "out"),
            *extra,
        ]
    )
    return build_manifest(config, stats or STATS, runner="FnApiRunner", elapsed_seconds=1.0)["fingerprint"]


def test_the_fingerprint_records_each_csvs_sha256_and_the_listing_and_content_fingerprints(inputs):
    fingerprint = _fingerprint(inputs)
    assert fingerprint["csvs"] == {
        str(inputs / name): hashlib.sha256((inputs / name).read_bytes()).hexdigest()
        for name in ("labels.csv", "overrides.csv", "exclusions.csv")
    }
    assert fingerprint["images"] == "a" * 64
    assert fingerprint["content"] == "b" * 64
    assert len(fingerprint["data"]) == 64
    assert fingerprint == _fingerprint(inputs)  # Deterministic.


@pytest.mark.parametrize("name", ["labels.csv", "overrides.csv", "exclusions.csv"])
def test_changing_a_csvs_content_changes_the_data_fingerprint(inputs, name):
    before = _fingerprint(inputs)
    with open(inputs / name, "a") as f:
        f.write("2,0\n" if name != "exclusions.csv" else "8\n")
    after = _fingerprint(inputs)
    assert after["data"] != before["data"]
    assert after["csvs"][str(inputs / name)] != before["csvs"][str(inputs / name)]
    assert after["options"] == before["options"]


def test_changing_the_images_changes_the_data_fingerprint(inputs):
    other = _fingerprint(inputs, stats={**STATS, "fingerprint/content_hashes": "c" * 64})
    assert other["data"] != _fingerprint(inputs)["data"]


def test_another_decoder_version_changes_the_data_fingerprint(inputs, monkeypatch):
    before = _fingerprint(inputs)
    monkeypatch.setattr(cache, "decoder_version", lambda: "opencv=99.0;simplejpeg=1.0;facepipe_cache=1")
    after = _fingerprint(inputs)
    assert after["decoder"] != before["decoder"] and after["data"] != before["data"]
    assert after["content"] == before["content"]  # The same files, other pixels.


def test_the_same_data_elsewhere_keeps_its_data_fingerprint(inputs, tmp_path_factory):
    # Copied to another folder (or bucket): other paths, so another listing, but the same data.
    moved = tmp_path_factory.mktemp("moved")
    for name in ("labels.csv", "overrides.csv", "exclusions.csv"):
        (moved / name).write_bytes((inputs / name).read_bytes())
    there = _fingerprint(moved, stats={**STATS, "fingerprint/file_hashes": "c" * 64})
    here = _fingerprint(inputs)
    assert there["images"] != here["images"] and there["csvs"] != here["csvs"]
    assert there["data"] == here["data"]


@pytest.mark.parametrize(
    "flag",
    [
        ["--image_size", "64"],
        ["--color_mode", "grayscale"],
        ["--splits", "train=0.5,validation=0.25,test=0.25"],
        ["--seed", "3"],
        ["--balance", "none"],
        ["--group_by", "subject"],
        ["--classes", "no,yes"],
        ["--file_pattern", "face-{id}.png"],
        ["--max_pixels", "1000"],
        ["--exclude", "12,57"],
    ],
    ids=lambda flag: flag[0],
)
def test_options_that_change_the_data_change_the_data_fingerprint(inputs, flag):
    base = _fingerprint(inputs)
    other = _fingerprint(inputs, *flag)
    assert other["options"] != base["options"]
    assert other["data"] != base["data"]


@pytest.mark.parametrize(
    "flag",
    [["--output", "elsewhere"], ["--overwrite"], ["--num_shards", "7"], ["--max_bad_fraction", "0.1"], ["--strict"]],
    ids=lambda flag: flag[0],
)
def test_options_that_do_not_change_the_data_leave_the_data_fingerprint(inputs, flag):
    if flag[0] == "--output":
        flag = ["--output", str(inputs / flag[1])]  # The last --output wins.
    assert _fingerprint(inputs, *flag) == _fingerprint(inputs)


def _manifest(output_dir, rejected_rows: dict[str, int]) -> dict:
    return {
        "output_dir": str(output_dir),
        "classes": ["no", "yes"],
        "runner": "FnApiRunner",
        "elapsed_seconds": 2.0,
        "counts": {
            "images_seen": 4,
            "written_total": 4,
            "written": {split: {"0": 1, "1": 1} if split == "train" else {"0": 0, "1": 0} for split in features.SPLITS},
            "dead_letter": {},
            "dead_letter_total": 0,
            "rejected_rows": rejected_rows,
        },
    }


def test_the_summary_names_unknown_override_and_exclusion_ids(tmp_path):
    dead = tmp_path / features.DEAD_LETTER_DIR
    dead.mkdir()
    records = [("x9", "unknown_override_id"), ("404", "label_without_image")]
    records += [(f"o{i}", "unknown_override_id") for i in range(8, 0, -1)] + [("e1", "unknown_exclusion_id")]
    for n, chunk in enumerate((records[:4], records[4:])):
        (dead / f"dead_letter-0000{n}-of-00002.jsonl").write_text(
            "".join(json.dumps({"id": i, "reason": r, "is_image": False}) + "\n" for i, r in chunk)
        )
    manifest = _manifest(tmp_path, {"unknown_override_id": 9, "unknown_exclusion_id": 1, "label_without_image": 1})
    lines = summary_table(manifest).splitlines()
    assert "9 overrides name no listed image (a typo?): o1, o2, o3, o4, o5, ..." in lines
    assert "1 exclusions name no listed image (a typo?): e1" in lines


def test_the_summary_has_no_unknown_ids_line_when_there_are_none(tmp_path):
    assert "no listed image" not in summary_table(_manifest(tmp_path, {}))


def _write_dead_letters(output_dir, records) -> None:
    dead = output_dir / features.DEAD_LETTER_DIR
    dead.mkdir(parents=True)
    (dead / "dead_letter-00000-of-00001.jsonl").write_text(
        "".join(json.dumps({"path": "", **record}) + "\n" for record in records)
    )


REJECTED_ROWS = [
    {"id": "3", "stage": "overrides", "reason": "malformed_csv_row", "detail": "3,inf: inf", "is_image": False},
    {"id": "3", "stage": "overrides", "reason": "malformed_csv_row", "detail": "3,glases", "is_image": False},
    {"id": "", "stage": "overrides", "reason": "malformed_csv_row", "detail": "b'\\xff7,1'", "is_image": False},
    {"id": "x9", "stage": "overrides", "reason": "unknown_override_id", "detail": "", "is_image": False},
    {"id": "e1", "stage": "exclusions", "reason": "unknown_exclusion_id", "detail": "", "is_image": False},
    # Not rows of those CSVs: an excluded image, a labels-CSV row.
    {"id": "7", "stage": "exclusions", "reason": "excluded", "detail": "", "is_image": True},
    {"id": "8", "stage": "labels", "reason": "malformed_csv_row", "detail": "8,,", "is_image": False},
]


def test_rejected_overrides_and_exclusions_rows_are_counted_with_their_first_ids(tmp_path):
    _write_dead_letters(tmp_path, REJECTED_ROWS)
    rejected = rejected_rows_by_csv(str(tmp_path))
    assert rejected == {
        "overrides": {"count": 4, "first_ids": ["3", "b'\\xff7,1'", "x9"]},
        "exclusions": {"count": 1, "first_ids": ["e1"]},
    }
    manifest = _manifest(tmp_path, {})
    manifest["counts"]["rejected_csv_rows"] = rejected
    lines = [line for line in summary_table(manifest).splitlines() if line.startswith("NOT APPLIED")]
    assert len(lines) == 1
    assert "4 --overrides_csv rows rejected (3, b'\\xff7,1', x9, ...)" in lines[0]  # 4 rows, 3 ids.
    assert "1 --exclude rows rejected (e1)" in lines[0] and "--strict" in lines[0]


def test_strict_makes_rejected_rows_an_error_and_the_default_records_them(inputs):
    rejected = {"overrides": {"count": 2, "first_ids": ["3"]}, "exclusions": {"count": 0, "first_ids": []}}
    given = ["--images", str(inputs), "--labels_csv", str(inputs / "labels.csv"), "--output", str(inputs / "out")]
    config, _ = parse_args(given)
    manifest = build_manifest(config, STATS, runner="FnApiRunner", elapsed_seconds=1.0, rejected_csv_rows=rejected)
    assert manifest["counts"]["rejected_csv_rows"] == rejected
    strict, _ = parse_args([*given, "--strict"])
    with pytest.raises(PipelineError, match=r"^--strict: 2 --overrides_csv rows rejected \(3, \.\.\.\)"):
        build_manifest(strict, STATS, runner="FnApiRunner", elapsed_seconds=1.0, rejected_csv_rows=rejected)
