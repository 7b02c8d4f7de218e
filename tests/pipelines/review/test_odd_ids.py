"""The review tool with ids that have spaces, letters beyond ASCII, quotes, commas and URL characters:
listed, drawn, decided, written to the CSVs the pipeline reads, and read back at the next start."""

from __future__ import annotations

import csv
import json
import pathlib
import urllib.parse

import cv2
import pytest

from pipelines.preprocess import run
from tests.image_files import labelled_image
from tests.pipelines.review.client import serving

ODD_IDS = {
    "non_ascii": "é日本 {}",
    "quotes": 'o\'neil "{}"',
    "comma": "a,b {}",
    "url_characters": "p%20q #{}?x=1&y+z",
    "spaces": "  two  spaces {} ",
}


def _labelled_images(root: pathlib.Path, pattern: str, count: int) -> list[str]:
    """``count`` 32x32 PNGs named by ``pattern`` and a labels.csv (label no/yes) naming them; their ids
    (stripped: a file's id is its name's, as a CSV cell's, without the spaces around it)."""
    images = root / "images"
    images.mkdir()
    ids = [pattern.format(i) for i in range(count)]
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        for i, image_id in enumerate(ids):
            assert cv2.imwrite(str(images / f"{image_id}.png"), labelled_image(i % 2, i, height=32, width=32))
            writer.writerow([image_id, ("no", "yes")[i % 2]])
    return [image_id.strip() for image_id in ids]


def _ids_in(path: pathlib.Path) -> dict[str, str]:
    with open(path, encoding="utf-8", newline="") as f:
        return {row["id"]: row.get("label", "") for row in csv.DictReader(f)}


@pytest.mark.parametrize("kind", sorted(ODD_IDS))
def test_odd_ids_go_through_the_review_and_into_the_pipeline(tmp_path, kind):
    ids = _labelled_images(tmp_path, ODD_IDS[kind], 8)
    review = tmp_path / "review"
    review.mkdir()
    inputs = ["--images", str(tmp_path / "images"), "--labels_csv", str(tmp_path / "labels.csv"), "--classes", "no,yes"]
    argv = [*inputs, "--overrides_csv", str(review / "o.csv"), "--exclude_csv", str(review / "x.csv"), "--port", "0"]
    with serving(argv) as (client, _):
        assert sorted(client.ids("all")) == sorted(ids)
        for image_id in ids:
            response = client.get("/thumb/" + urllib.parse.quote(image_id, safe=""))
            assert response.status == 200 and "X-Thumb-Error" not in response.headers, image_id
        items = client.get("/api/items?" + urllib.parse.urlencode([("id", i) for i in ids])).json()["items"]
        assert [item["id"] for item in items] == ids
        assert client.decide(ids[0], "flip")["decision"]["after"] == 1
        client.decide(ids[1], "exclude")
        client.decide(ids[2], "exclude")
        client.post("/api/undo")
    assert _ids_in(review / "o.csv") == {ids[0]: "1"}
    assert set(_ids_in(review / "x.csv")) == {ids[1]}
    with serving(argv) as (_, app):  # Read back at the next start.
        assert app.store.progress() == {"reviewed": 3, "total": 8, "overridden": 1, "excluded": 1}

    output = tmp_path / "data"
    review_csvs = ["--overrides_csv", str(review / "o.csv"), "--exclude", str(review / "x.csv")]
    run([*inputs, *review_csvs, "--output", str(output), "--balance", "none", "--image_size", "16,16", "--strict"])
    counts = json.loads((output / "manifest.json").read_text())["counts"]
    assert counts["overrides_applied"] == 1 and counts["excluded"] == 1 and counts["written_total"] == 7
