"""Labels, overrides, exclusions and dead letters of the source stage."""

from __future__ import annotations

import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines import sources, staging
from pipelines.options import parse_args
from pipelines.records import NO_LABEL
from pipelines.sources import LabelledImages, resolve_vector_columns
from tests.image_files import offline_test_pipeline, write_glasses_like


def _write_images(tmp_path):
    return write_glasses_like(tmp_path, [0, 1, 0, 1, 0, 1])  # ids 1..6, labels.csv: id i -> (i + 1) % 2


def _config(tmp_path, *extra_args: str):
    images = tmp_path / "images"
    config, _ = parse_args(
        [
            "--images",
            str(images),
            "--output",
            str(tmp_path / "out"),
            "--labels_csv",
            str(tmp_path / "labels.csv"),
            "--file_pattern",
            "face-{id}.png",
            *extra_args,
        ]
    )
    return config


def _run(config):
    """Runs LabelledImages; returns PCollections of (id, label, overridden) and (id, reason)."""
    p = offline_test_pipeline()
    sources = p | LabelledImages(config)
    labels = sources["images"] | "Labels" >> beam.Map(lambda im: (im.id, im.label, im.overridden))
    reasons = sources["dead_letter"] | "Reasons" >> beam.Map(lambda r: (r["id"], r["reason"], r["is_image"]))
    return p, labels, reasons


def test_labels_from_csv(tmp_path):
    _write_images(tmp_path)
    p, labels, reasons = _run(_config(tmp_path))
    assert_that(labels, equal_to([(str(i), (i + 1) % 2, False) for i in range(1, 7)]), label="Labels")
    assert_that(reasons, equal_to([]), label="NoDeadLetters")
    p.run().wait_until_finish()


def test_override_wins_also_for_unlabelled_ids_and_exclusions_never_reach_output(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "overrides.csv").write_text("id,label\n1,1\n7,0\n404,1\n")
    (tmp_path / "exclusions.csv").write_text("id\n2\n")
    config = _config(
        tmp_path,
        "--overrides_csv",
        str(tmp_path / "overrides.csv"),
        "--exclude",
        str(tmp_path / "exclusions.csv"),
        "--exclude",
        "3",
    )
    # id 7 has an image but no labels-CSV row: only the override labels it.
    write_glasses_like(tmp_path / "extra", [1], start_id=7)
    (tmp_path / "extra" / "images" / "face-7.png").rename(tmp_path / "images" / "face-7.png")
    p, labels, reasons = _run(config)
    assert_that(
        labels,
        equal_to([("1", 1, True), ("4", 1, False), ("5", 0, False), ("6", 1, False), ("7", 0, True)]),
        label="Labels",
    )
    assert_that(
        reasons,
        equal_to([("2", "excluded", True), ("3", "excluded", True), ("404", "unknown_override_id", False)]),
        label="DeadLetters",
    )
    p.run().wait_until_finish()


def test_bad_rows_unlabelled_conflicts_and_duplicates_are_dead_letters(tmp_path):
    _write_images(tmp_path)
    csv = tmp_path / "labels.csv"
    csv.write_text(csv.read_text() + "1,1\n2,,\n,1\n5,cat\n9,1\n")  # conflict, malformed, no id, bad label, no image
    (tmp_path / "more.csv").write_text("id,label\n3,\n")  # 3: no label here, label 0 in labels.csv -> fine
    (tmp_path / "images" / "face-6.PNG").write_bytes((tmp_path / "images" / "face-6.png").read_bytes())
    config = _config(tmp_path, "--labels_csv", str(tmp_path / "more.csv"))
    p, labels, reasons = _run(config)
    assert_that(labels, equal_to([("2", 1, False), ("3", 0, False), ("4", 1, False), ("6", 1, False)]), label="Labels")
    assert_that(
        reasons,
        equal_to(
            [
                ("1", "conflicting_labels", True),
                ("", "malformed_csv_row", False),
                ("", "malformed_csv_row", False),
                ("5", "bad_label", True),
                ("9", "label_without_image", False),
                ("6", "duplicate_id", True),
            ]
        ),
        label="DeadLetters",
    )
    p.run().wait_until_finish()


def test_an_undecodable_row_is_a_dead_letter_and_the_rest_of_the_file_is_used(tmp_path):
    _write_images(tmp_path)
    rows = [f"{i},{(i + 1) % 2},ok\n".encode() for i in range(1, 7)]
    rows[2] = b"3,0,caf\xe9\n"  # A latin-1 byte in the middle of an otherwise UTF-8 file.
    (tmp_path / "labels.csv").write_bytes(b"id,label,note\n" + b"".join(rows))
    p, labels, reasons = _run(_config(tmp_path))
    # 3 has no row left: it comes out unlabelled (NO_LABEL, for the audit alone) beside its dead letter.
    expected = [(str(i), (i + 1) % 2, False) for i in (1, 2, 4, 5, 6)] + [("3", NO_LABEL, False)]
    assert_that(labels, equal_to(expected), label="Labels")
    assert_that(reasons, equal_to([("", "malformed_csv_row", False), ("3", "no_label_row", True)]), label="DeadLetters")
    p.run().wait_until_finish()


def test_csv_encoding_latin1_reads_the_same_file(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "labels.csv").write_bytes(
        b"id,label,note\n" + b"".join(f"{i},{(i + 1) % 2},caf\xe9\n".encode("latin-1") for i in range(1, 7))
    )
    p, labels, reasons = _run(_config(tmp_path, "--csv_encoding", "latin-1"))
    assert_that(labels, equal_to([(str(i), (i + 1) % 2, False) for i in range(1, 7)]), label="Labels")
    assert_that(reasons, equal_to([]), label="NoDeadLetters")
    p.run().wait_until_finish()


@pytest.mark.parametrize(
    "flag, content, expected",
    [
        ("--labels_csv", "id,label\n1,0\n".encode("utf-16"), "is not utf-8 text (it starts with a UTF-16/32 byte"),
        ("--overrides_csv", b"foo,bar\n1,0\n", "header ['foo', 'bar'] has no column 'id' and 'label'"),
        ("--exclude", b"image\n1\n", "header ['image'] has no column 'id'"),
    ],
)
def test_an_unusable_csv_ends_the_job_with_one_line_naming_it(tmp_path, flag, content, expected):
    _write_images(tmp_path)
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(SystemExit) as error:
        _run(_config(tmp_path, flag, str(path)))
    assert str(error.value).startswith(f"error: {path}") and expected in str(error.value)
    assert "\n" not in str(error.value)


def test_class_folders_label_by_folder_and_group_by_stem(tmp_path):
    for folder in ("comics", "faces"):
        write_glasses_like(tmp_path / folder, [0, 0])
        for path in (tmp_path / folder / "images").iterdir():
            path.rename(tmp_path / folder / path.name.replace("face-", ""))
    config, _ = parse_args(["--dataset", "comics", "--images", str(tmp_path), "--output", str(tmp_path / "out")])
    p = offline_test_pipeline()
    images = p | LabelledImages(config)
    rows = images["images"] | beam.Map(lambda im: (im.id, im.label, im.group))
    assert_that(rows, equal_to([("comics/1", 0, "1"), ("comics/2", 0, "2"), ("faces/1", 1, "1"), ("faces/2", 1, "2")]))
    p.run().wait_until_finish()


# --- --numeric_columns resolved against the labels CSVs' headers -------------------------------


def _resolved(argv: list[str]):
    """The config of a command line with its --numeric_columns resolved, as the job's driver does."""
    config, _ = parse_args(argv)
    return resolve_vector_columns(config)


def _kaggle(tmp_path, train_header: str, test_header: str | None = None):
    (tmp_path / "train.csv").write_text(train_header + "\n")
    if test_header is not None:
        (tmp_path / "test.csv").write_text(test_header + "\n")
    return ["--dataset", "glasses", "--images", str(tmp_path), "--output", str(tmp_path / "out")]


LATENT = ",".join(f"v{i}" for i in range(1, 513))


def test_the_glasses_preset_carries_the_kaggle_latents_when_every_labels_csv_has_them(tmp_path):
    config = _resolved(_kaggle(tmp_path, f"id,{LATENT},glasses", f"id,{LATENT}"))
    assert config.vector_columns == tuple(f"v{i}" for i in range(1, 513)) and config.vector_length == 512
    config = _resolved([*_kaggle(tmp_path, f"id,{LATENT},glasses"), "--numeric_columns", "none"])
    assert config.vector_columns == ()


def test_the_glasses_preset_has_no_vector_when_a_labels_csv_lacks_the_columns(tmp_path):
    config = _resolved(_kaggle(tmp_path, f"id,{LATENT},glasses", "id"))
    assert config.vector_columns == ()
    config = _resolved(_kaggle(tmp_path, "id,glasses"))
    assert config.vector_columns == ()


def test_numeric_columns_are_resolved_against_the_header_in_the_driver(tmp_path):
    (tmp_path / "labels.csv").write_text("id,b,label,a,note\n")
    config = _resolved(
        ["--images", "i", "--output", "o", "--labels_csv", str(tmp_path / "labels.csv"), "--numeric_columns", "a,b"]
    )
    assert config.vector_columns == ("b", "a")


@pytest.mark.parametrize(
    ("headers", "spec", "message"),
    [
        (["id,v1,label"], "v1..v3", "2 columns not in the header: v2, v3"),
        (["id,v1,label"], "label", "id/label column 'label'"),
        (["id,v1,v2,label", "id,v2,v1"], "v*", "names other columns in each labels CSV"),
        (["id,v1,label", "id,label"], "v1", "labels1.csv: --numeric_columns 'v1': 1 columns not in the header"),
    ],
)
def test_numeric_columns_that_a_labels_csv_lacks_are_a_usage_error(tmp_path, capsys, headers, spec, message):
    args = ["--images", "i", "--output", "o", "--numeric_columns", spec]
    for i, header in enumerate(headers):
        (tmp_path / f"labels{i}.csv").write_text(header + "\n")
        args += ["--labels_csv", str(tmp_path / f"labels{i}.csv")]
    with pytest.raises(SystemExit) as raised:
        _resolved(args)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_what_beams_match_skips_is_listed_at_any_depth_the_glob_reaches(tmp_path):
    images = tmp_path / "images"
    (images / "sub" / "deeper").mkdir(parents=True)
    (images / "face-1.png").write_bytes(b"x")  # A file: Beam's match lists it.
    os.symlink(tmp_path / "gone.png", images / "face-2.png")
    os.symlink(tmp_path / "gone.png", images / "sub" / "face-3.png")
    os.symlink(images / "sub" / "deeper" / "face-4.png", images / "sub" / "deeper" / "face-4.png")  # A loop.
    (images / "sub" / "face-5.png").mkdir()
    os.symlink(images / "sub", images / "sub" / "deeper" / "face-6.jpg")  # A link to a folder.
    (images / "sub" / "folder").mkdir()  # Not named like an image: a folder of the tree.
    os.symlink(tmp_path / "gone.txt", images / "notes.txt")  # Counted as a file that is no image.
    listed = sources.skipped_by_match(str(images / "**"))
    assert [os.path.relpath(p, images) for p in listed] == [
        "face-2.png",
        "notes.txt",
        "sub/deeper/face-4.png",
        "sub/deeper/face-6.jpg",
        "sub/face-3.png",
        "sub/face-5.png",
    ]
    # A glob that does not cross folders reaches only its own.
    assert sources.skipped_by_match(str(images / "*.png")) == [str(images / "face-2.png")]
    assert sources.skipped_by_match(str(images / "face-1.png")) == []  # No glob: the file itself.
    assert sources.skipped_by_match("gs://bucket/images/**") == []


@pytest.mark.parametrize("bundles", [1, 8])
def test_the_join_by_id_gives_each_id_its_file_rows_staged_vector_and_override_in_bundles_of_any_size(
    tmp_path, bundles
):
    _write_images(tmp_path)  # ids 1..6
    (tmp_path / "labels.csv").write_text(
        "id,label,f1,f2\n" + "".join(f"{i},{(i + 1) % 2},{i}.5,-{i}\n" for i in range(1, 6))
    )
    (tmp_path / "more.csv").write_text("id,label,f1,f2\n6,1,6.5,-6\n")  # 6's row in a second labels CSV
    (tmp_path / "overrides.csv").write_text("id,label\n1,0\n")
    config = _config(
        tmp_path,
        *("--labels_csv", str(tmp_path / "more.csv"), "--numeric_columns", "f1,f2"),
        *("--overrides_csv", str(tmp_path / "overrides.csv"), "--exclude", "2"),
    )
    staging_dir = tmp_path / "staging"
    staging_dir.mkdir()
    p = offline_test_pipeline(bundles=bundles)
    images = p | LabelledImages(resolve_vector_columns(config), staging_dir=str(staging_dir))
    carried = images["images"] | beam.Map(
        lambda im: (
            im.id,
            im.label,
            im.overridden,
            im.path.endswith(f"face-{im.id}.png"),
            im.vector,
            im.vector_location.length,
        )
    )
    digest = lambda i: staging.vector_digest(np.array([i + 0.5, -i], np.float32).tobytes())  # noqa: E731
    expected = [("1", 0, True, True, digest(1), 24)] + [
        (str(i), (i + 1) % 2, False, True, digest(i), 24) for i in (3, 4, 5, 6)
    ]
    assert_that(carried, equal_to(expected), label="Joined")
    reasons = images["dead_letter"] | "Reasons" >> beam.Map(lambda r: (r["id"], r["reason"]))
    assert_that(reasons, equal_to([("2", "excluded")]), label="DeadLetters")
    p.run().wait_until_finish()
