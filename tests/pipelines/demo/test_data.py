"""Tests of the synthetic demo-dataset generator (pipelines/demo/data.py)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.demo import data as demo_data
from pipelines.demo import faces, plan

COUNT, SIZE = 40, 128
N_TRAIN = 36  # 90% of COUNT
LATENT_HEADER = [f"v{i}" for i in range(1, 513)]


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def labels(path: Path, column: str = "glasses") -> dict[int, int]:
    header, rows = read_csv(path)
    return {int(row[0]): int(row[header.index(column)]) for row in rows}


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def glasses(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("glasses")
    return out, demo_data.generate("glasses", str(out), count=COUNT, size=SIZE, seed=1)


@pytest.fixture(scope="module")
def comics(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("comics")
    return out, demo_data.generate("comics", str(out), count=12, size=SIZE, seed=1)


def test_glasses_layout_and_headers(glasses: tuple[Path, dict]) -> None:
    out, summary = glasses
    assert {p.name for p in out.iterdir()} == {
        "faces-spring-2020",
        "train.csv",
        "test.csv",
        "overrides.csv",
        "exclusions.csv",
        "truth.csv",
    }
    names = {p.name for p in (out / "faces-spring-2020").iterdir()}
    assert names == {f"face-{i}.png" for i in range(1, COUNT + 1)}

    train_header, train_rows = read_csv(out / "train.csv")
    test_header, test_rows = read_csv(out / "test.csv")
    assert train_header == ["id", *LATENT_HEADER, "glasses"]
    assert test_header == ["id", *LATENT_HEADER]
    assert [int(r[0]) for r in train_rows] == list(range(1, N_TRAIN + 1))
    assert [int(r[0]) for r in test_rows] == list(range(N_TRAIN + 1, COUNT + 1))
    assert all(len(r) == 514 and r[-1] in ("0", "1") for r in train_rows)
    assert all(len(r) == 513 for r in test_rows)
    np.asarray([r[1:513] for r in train_rows], dtype=float)  # the latent vectors are numbers

    assert read_csv(out / "overrides.csv")[0] == ["id", "glasses"]
    assert read_csv(out / "exclusions.csv")[0] == ["id"]
    assert read_csv(out / "truth.csv")[0] == ["id", "glasses", "distorted", "duplicate_of", "duplicate_kind"]
    assert summary["count"] == summary["images"] == COUNT
    assert (summary["train"], summary["test"]) == (N_TRAIN, COUNT - N_TRAIN)
    assert Path(summary["paths"]["images"]) == out / "faces-spring-2020"
    assert all(Path(p).exists() for p in summary["paths"].values())


def test_glasses_injected_label_noise_and_distortions(glasses: tuple[Path, dict]) -> None:
    out, summary = glasses
    truth = labels(out / "truth.csv")
    distorted = {i for i, d in labels(out / "truth.csv", "distorted").items() if d}
    train = labels(out / "train.csv")
    overrides = labels(out / "overrides.csv")

    wrong = {i for i, label in train.items() if label != truth[i]}
    assert wrong == {i for i in overrides if i <= N_TRAIN}
    assert len(wrong) == summary["wrong_labels"] == round(N_TRAIN * 0.1)
    assert all(overrides[i] == truth[i] for i in overrides)

    excluded = {int(row[0]) for row in read_csv(out / "exclusions.csv")[1]}
    assert excluded == distorted
    assert len(excluded) == summary["distorted"] >= 1


def test_distorted_images_are_corrupted_versions_of_the_face(glasses: tuple[Path, dict]) -> None:
    out, _ = glasses
    distorted = labels(out / "truth.csv", "distorted")
    truth = labels(out / "truth.csv")
    first_distorted = next(i for i, d in distorted.items() if d)
    copies = set(duplicates(out))
    first_intact = next(i for i, d in distorted.items() if not d and i not in copies)
    for image_id in (first_distorted, first_intact):
        _, traits = plan.face_latent(1, image_id, bool(truth[image_id]))
        rng = plan.image_rng(1, image_id, plan.GLASSES_STREAM)
        clean = faces.glasses_photo(rng, SIZE, traits, distorted=False)
        written = cv2.imread(str(out / "faces-spring-2020" / f"face-{image_id}.png"))[..., ::-1]  # BGR -> RGB
        difference = np.abs(written.astype(int) - clean).mean()
        assert difference > 5 if distorted[image_id] else difference == 0


def duplicates(out: Path) -> dict[int, tuple[int, str]]:
    """truth.csv's copies: {copy id: (source id, kind)}."""
    header, rows = read_csv(out / "truth.csv")
    of, kind = header.index("duplicate_of"), header.index("duplicate_kind")
    return {int(row[0]): (int(row[of]), row[kind]) for row in rows if row[of]}


def test_duplicates_are_copies_of_train_faces_also_across_the_test_boundary(glasses: tuple[Path, dict]) -> None:
    from pipelines.config import PreprocessConfig
    from pipelines.quality.duplicates import hamming, similarity
    from pipelines.quality.measures import image_quality
    from pipelines.transforms import decode_and_resize

    out, summary = glasses
    copies = duplicates(out)
    truth = labels(out / "truth.csv")
    assert len(copies) == summary["duplicates"] == 4
    assert {kind for _, kind in copies.values()} == set(plan.DUPLICATE_KINDS)
    assert summary["leaking_duplicates"] == sum(copy > N_TRAIN for copy in copies) == 2
    assert all(source <= N_TRAIN and truth[source] == truth[copy] for copy, (source, _) in copies.items())
    train = labels(out / "train.csv")
    assert all(train[copy] == truth[copy] for copy in copies if copy <= N_TRAIN)

    def read(image_id: int) -> bytes:
        return (out / "faces-spring-2020" / f"face-{image_id}.png").read_bytes()

    def audit(image_id: int):
        pixels = decode_and_resize(read(image_id), size=(50, 50), color_mode="rgb", max_pixels=10**9)
        return image_quality(pixels, (SIZE, SIZE))

    k, min_similarity = PreprocessConfig.duplicate_distance, PreprocessConfig.duplicate_similarity
    for copy, (source, kind) in copies.items():
        assert (read(copy) == read(source)) == (kind == "exact")
        a, b = audit(copy), audit(source)
        assert hamming(a.phash, b.phash) <= k and similarity(a.thumbnail, b.thumbnail) >= min_similarity, kind
    others = [i for i in range(1, COUNT + 1) if i not in copies and i not in {s for s, _ in copies.values()}][:12]
    audited = {i: audit(i) for i in others}
    assert min(hamming(audited[a].phash, audited[b].phash) for a in others for b in others if a < b) > k
    assert (
        max(similarity(audited[a].thumbnail, audited[b].thumbnail) for a in others for b in others if a < b)
        < min_similarity
    )


def test_overrides_cover_every_test_id(glasses: tuple[Path, dict]) -> None:
    out, _ = glasses
    truth = labels(out / "truth.csv")
    overrides = labels(out / "overrides.csv")
    test_ids = [int(row[0]) for row in read_csv(out / "test.csv")[1]]
    assert test_ids and all(overrides[i] == truth[i] for i in test_ids)


def test_class_balance_and_noise_rates_on_a_larger_set(tmp_path: Path) -> None:
    summary = demo_data.generate("glasses", str(tmp_path), count=400, size=64, seed=7)
    truth = labels(tmp_path / "truth.csv")
    train = labels(tmp_path / "train.csv")
    assert len(truth) == 400
    assert 0.52 <= sum(truth.values()) / len(truth) <= 0.60
    wrong = sum(train[i] != truth[i] for i in train)
    assert 0.08 <= wrong / len(train) <= 0.12
    assert 2 <= summary["distorted"] <= 8


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        demo_data.generate("glasses", str(tmp_path / name), count=20, size=64, seed=seed)
        demo_data.generate("comics", str(tmp_path / name), count=3, size=64, seed=seed)
    a, b, c = (tree(tmp_path / name) for name in "abc")
    assert len(a) == 20 + 5 + 6
    assert a == b
    assert a.keys() == c.keys()
    assert a["train.csv"] != c["train.csv"]
    changed = [path for path in a if a[path] != c[path]]
    assert sum(path.endswith((".png", ".jpg")) for path in changed) == 26


def test_images_decode_with_opencv_and_tensorflow(glasses: tuple[Path, dict], comics: tuple[Path, dict]) -> None:
    tf = pytest.importorskip("tensorflow")
    out, _ = glasses
    comics_out, _ = comics
    pngs = sorted((out / "faces-spring-2020").glob("*.png"))
    jpgs = sorted((comics_out / "face2comics_v2.0.0_by_Sxela").rglob("*.jpg"))
    assert len(pngs) == COUNT and len(jpgs) == 24
    for path in pngs + jpgs:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        decode = tf.io.decode_png if path.suffix == ".png" else tf.io.decode_jpeg
        assert tuple(decode(tf.io.read_file(str(path))).shape) == (SIZE, SIZE, 3)


def test_comics_layout_and_pairs_match_by_number(comics: tuple[Path, dict]) -> None:
    out, summary = comics
    root = out / "face2comics_v2.0.0_by_Sxela"
    assert {p.name for p in out.iterdir()} == {root.name}
    assert {p.name for p in root.iterdir()} == {"faces", "comics"}
    expected = {f"{n}.jpg" for n in range(12)}
    assert {p.name for p in (root / "faces").iterdir()} == expected
    assert {p.name for p in (root / "comics").iterdir()} == expected
    assert (summary["pairs"], summary["images"]) == (12, 24)

    def thumbnail(path: Path) -> np.ndarray:
        """A standardised 32x32 colour thumbnail, flattened."""
        img = cv2.resize(cv2.imread(str(path)), (32, 32), interpolation=cv2.INTER_AREA)
        img = img.astype(np.float32).ravel()
        return (img - img.mean()) / (img.std() + 1e-6)

    faces = np.stack([thumbnail(root / "faces" / f"{n}.jpg") for n in range(12)])
    comic = np.stack([thumbnail(root / "comics" / f"{n}.jpg") for n in range(12)])
    similarity = comic @ faces.T  # correlation of every comic with every face
    assert list(similarity.argmax(axis=1)) == list(range(12))
    assert not np.array_equal(faces, comic)  # the comics are a different rendering


def test_cli_writes_the_dataset_and_prints_a_json_summary(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.demo.data",
            "--dataset",
            "comics",
            "--out",
            str(tmp_path),
            "--count",
            "2",
            "--size",
            "32",
            "--seed",
            "5",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    summary = json.loads(result.stdout)
    assert summary == demo_data.generate("comics", str(tmp_path), count=2, size=32, seed=5)
    assert (tmp_path / "face2comics_v2.0.0_by_Sxela" / "comics" / "1.jpg").is_file()
    assert "comics" in result.stderr  # the progress bar goes to stderr


def test_invalid_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        demo_data.generate("cats", str(tmp_path), count=5)
    with pytest.raises(SystemExit):
        demo_data.main(["--dataset", "glasses", "--out", str(tmp_path), "--count", "0"])
    assert not any(tmp_path.iterdir())


def _vectors(path: Path) -> dict[int, np.ndarray]:
    header, rows = read_csv(path)
    columns = [header.index(name) for name in LATENT_HEADER]
    return {int(row[0]): np.array([float(row[c]) for c in columns]) for row in rows}


def test_the_latent_vector_predicts_the_true_glasses_of_unseen_faces(tmp_path: Path) -> None:
    # The default count: a linear model fitted to train.csv's (10% wrong) labels classifies the
    # test.csv faces, which it never saw, by their vectors alone.
    demo_data.generate("glasses", str(tmp_path), count=1500, size=16, seed=2)
    truth = labels(tmp_path / "truth.csv")
    train, given = _vectors(tmp_path / "train.csv"), labels(tmp_path / "train.csv")
    test = _vectors(tmp_path / "test.csv")
    x = np.stack([np.append(train[i], 1.0) for i in sorted(train)])
    y = np.array([2.0 * given[i] - 1 for i in sorted(train)])
    ridge = 1000.0 * np.eye(x.shape[1])  # least squares, shrunk: 512 weights from 1350 rows
    weights = np.linalg.solve(x.T @ x + ridge, x.T @ y)
    predicted = {i: int(np.append(v, 1.0) @ weights > 0) for i, v in test.items()}
    accuracy = np.mean([predicted[i] == truth[i] for i in test])
    assert len(test) == 150 and accuracy >= 0.97
    # The CSV labels are the truth with flips: the vector, not the given label, is what agrees.
    assert np.mean([int(np.append(train[i], 1.0) @ weights > 0) == truth[i] for i in train]) > 0.97
