"""The review's thumbnails: small JPEGs of the originals, a bounded cache, placeholders with reasons.

Each test starts the server in-process on 127.0.0.1, port 0, over a copy of the glasses demo
data (tests/pipelines/review/conftest.py).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from tests.pipelines.review.client import review_argv, serving


def test_thumbnails_are_small_jpegs_of_the_originals_in_a_bounded_cache(images, tmp_path):
    wide = np.zeros((100, 400, 3), np.uint8)
    wide[:, :200] = (0, 0, 255)  # Left half red (BGR), right half black.
    cv2.imwrite(str(images / "faces-spring-2020" / "face-50.png"), wide)
    with serving(review_argv(images, tmp_path, "--cache_size", "3")) as (client, app):
        original = cv2.imread(str(images / "faces-spring-2020" / "face-1.png"))
        response = client.get("/thumb/1")
        assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg"
        thumb = cv2.imdecode(np.frombuffer(response.body, np.uint8), cv2.IMREAD_COLOR)
        assert thumb.shape == (160, 160, 3)
        assert len(response.body) < os.path.getsize(images / "faces-spring-2020" / "face-1.png") / 5
        expected = cv2.resize(original, (160, 160), interpolation=cv2.INTER_AREA)
        assert np.abs(thumb.astype(int) - expected).mean() < 6  # The same picture, JPEG noise aside.

        wide_thumb = cv2.imdecode(np.frombuffer(client.get("/thumb/50").body, np.uint8), cv2.IMREAD_COLOR)
        assert wide_thumb.shape == (40, 160, 3)  # Longer side bounded, aspect kept.
        assert wide_thumb[20, 40, 2] > 200 and wide_thumb[20, 120, 2] < 40

        for image_id in ("2", "3", "4", "5"):
            client.get(f"/thumb/{image_id}")
        assert len(app.thumbnails) == 3


def test_bad_images_show_a_placeholder_with_the_reason(images, tmp_path):
    faces = images / "faces-spring-2020"
    (faces / "face-41.png").write_bytes(b"")
    (faces / "face-42.png").write_bytes((faces / "face-1.png").read_bytes()[:5000])
    (faces / "face-43.png").write_bytes(b"hello, not a picture")
    jpeg = cv2.imencode(".jpg", cv2.imread(str(faces / "face-2.png")))[1].tobytes()
    (faces / "face-44.png").write_bytes(jpeg[: len(jpeg) // 3] + b"\xff\xd9")  # Truncated, end marker glued on.
    with serving(review_argv(images, tmp_path)) as (client, _):
        (faces / "face-5.png").unlink()  # Gone after the start.
        expected = {
            "41": "zero_bytes",
            "42": "truncated",
            "43": "not_an_image",
            "44": "corrupt_jpeg",
            "5": "read_error",
        }
        for image_id, reason in expected.items():
            response = client.get(f"/thumb/{image_id}")
            assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg", image_id
            assert response.headers["X-Thumb-Error"].startswith(reason), (image_id, response.headers)
            picture = cv2.imdecode(np.frombuffer(response.body, np.uint8), cv2.IMREAD_COLOR)
            assert picture is not None and max(picture.shape[:2]) <= 160
        items = client.get("/api/items?id=41&id=5").json()["items"]
        assert [t["note"] for t in items] == ["no_label_row", ""]  # No CSV row for 41; 5 keeps its label.


def test_links_to_nothing_loops_and_folders_named_like_images_are_listed_with_the_reason(images, tmp_path):
    faces = images / "faces-spring-2020"
    os.symlink(faces / "gone.png", faces / "face-41.png")
    os.symlink(faces / "face-42.png", faces / "face-42.png")  # A loop of one link.
    (faces / "face-43.png").mkdir()
    with serving(review_argv(images, tmp_path)) as (client, _):
        expected = {"41": "dangling_link", "42": "dangling_link", "43": "not_a_regular_file"}
        for image_id, reason in expected.items():
            response = client.get(f"/thumb/{image_id}")
            assert response.status == 200 and response.headers["X-Thumb-Error"].startswith(reason), image_id
        items = client.get("/api/items?id=41&id=42&id=43").json()["items"]
        assert [t["id"] for t in items] == ["41", "42", "43"]  # Listed, as the pipeline lists them.
