"""The label review server: decisions in the pipeline's CSV formats, resume, safety, thumbnails.

Each test starts the server in-process on 127.0.0.1, port 0, over a copy of the glasses demo
data (40 faces of 256x256: ids 1..36 labelled in train.csv, 37..40 unlabelled in test.csv).
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines import demo_data, options, review
from pipelines.labels import parse_label
from pipelines.sources import LabelledImages
from tests.image_files import offline_test_pipeline

CLASSES = ("no_glasses", "glasses")
ROOT = pathlib.Path(__file__).resolve().parents[1]


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """Raw HTTP to the review server: paths are sent exactly as given (no normalization)."""

    def __init__(self, server: review.ReviewServer):
        self.port = server.server_address[1]

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        sent = {"Content-Type": "application/json", **(headers or {})}
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            return Response(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def get(self, path: str, **kwargs) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs) -> Response:
        return self.request("POST", path, body if body is not None else {}, **kwargs)

    def decide(self, image_id: str, action: str) -> dict:
        response = self.post("/api/decide", {"id": image_id, "action": action})
        assert response.status == 200, response.body
        return response.json()

    def ids(self, filter_name: str) -> list[str]:
        response = self.get(f"/api/ids?filter={filter_name}")
        assert response.status == 200, response.body
        return response.json()["ids"]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("glasses_demo")
    demo_data.generate("glasses", str(root), count=40, size=256)
    return root


@pytest.fixture
def images(demo_root, tmp_path) -> pathlib.Path:
    """A private copy of the demo data (tests add, break and delete images)."""
    copy = tmp_path / "data"
    shutil.copytree(demo_root, copy)
    return copy


def train_labels(images: pathlib.Path) -> dict[str, int]:
    with open(images / "train.csv", newline="") as f:
        return {row["id"]: int(row["glasses"]) for row in csv.DictReader(f)}


def review_argv(images: pathlib.Path, out: pathlib.Path, *extra: str) -> list[str]:
    return [
        "--images",
        str(images),
        "--dataset",
        "glasses",
        "--overrides_csv",
        str(out / "overrides.csv"),
        "--exclude_csv",
        str(out / "exclusions.csv"),
        "--port",
        "0",
        *extra,
    ]


@contextlib.contextmanager
def serving(argv: list[str]) -> Iterator[tuple[Client, review.ReviewApp]]:
    app = review.create_app(*review.parse_args(argv))
    with review.running_server(app) as server:
        yield Client(server), app


def read_rows(path: pathlib.Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_decisions_are_saved_at_once_in_the_formats_the_pipeline_reads(images, tmp_path):
    truth = train_labels(images)
    with serving(review_argv(images, tmp_path)) as (client, _):
        client.decide("1", "flip")
        client.decide("2", "flip")
        client.decide("2", "flip")  # Back to the original label: no override left.
        client.decide("3", "exclude")
        client.decide("4", "exclude")
        client.decide("4", "exclude")  # Re-included: no exclusion row left.
        client.decide("37", "flip")  # Unlabelled (test.csv) -> class 0.
        # Written before the answer came back, while the server still runs.
        overrides, exclusions = read_rows(tmp_path / "overrides.csv"), read_rows(tmp_path / "exclusions.csv")
    assert overrides == [["id", "glasses"], ["1", str(1 - truth["1"])], ["37", "0"]]
    assert parse_label(overrides[1][1], CLASSES) == 1 - truth["1"]
    assert exclusions == [["id"], ["3"]]
    journal = read_rows(tmp_path / "overrides.journal.csv")
    assert journal[0] == review.JOURNAL_HEADER
    assert [(row[1], row[2], row[3]) for row in journal[1:]] == [
        ("set", "1", "label"),
        ("set", "2", "label"),
        ("set", "2", "label"),
        ("set", "3", "excluded"),
        ("set", "4", "excluded"),
        ("set", "4", "excluded"),
        ("set", "37", "label"),
    ]

    # The pipeline's own source stage reads the final state: flipped, excluded, untouched.
    config, _ = options.parse_args(
        [
            "--images",
            str(images),
            "--dataset",
            "glasses",
            "--output",
            str(tmp_path / "out"),
            "--overrides_csv",
            str(tmp_path / "overrides.csv"),
            "--exclude",
            str(tmp_path / "exclusions.csv"),
        ]
    )
    p = offline_test_pipeline()
    resolved = p | LabelledImages(config)
    labels = (
        resolved["images"]
        | beam.Filter(lambda im: im.id in {"1", "2", "4", "37"})
        | beam.Map(lambda im: (im.id, im.label, im.overridden))
    )
    reasons = resolved["dead_letter"] | beam.Map(lambda r: (r["id"], r["reason"]))
    expected_reasons = [("3", "excluded"), ("38", "unlabelled"), ("39", "unlabelled"), ("40", "unlabelled")]
    assert_that(
        labels,
        equal_to([("1", 1 - truth["1"], True), ("2", truth["2"], False), ("4", truth["4"], False), ("37", 0, True)]),
    )
    assert_that(reasons, equal_to(expected_reasons), label="DeadLetters")
    p.run().wait_until_finish()


def test_a_restart_resumes_the_state_and_the_undo_history(images, tmp_path):
    truth = train_labels(images)
    # A hand-edited overrides file with two rows for id 9: the last one wins, as documented.
    (tmp_path / "overrides.csv").write_text(f"id,glasses\n9,{truth['9']}\n9,{1 - truth['9']}\n")
    with serving(review_argv(images, tmp_path)) as (client, _):
        client.decide("5", "flip")
        client.decide("10", "flip")
        assert client.post("/api/undo").json()["decision"]["id"] == "10"
        client.decide("6", "exclude")
        assert client.post("/api/reviewed", {"ids": ["7", "8", "no-such-id"]}).status == 200
    with serving(review_argv(images, tmp_path)) as (client, app):
        items = {t["id"]: t for t in client.get("/api/items?id=5&id=6&id=7&id=9").json()["items"]}
        assert items["5"]["label"] == 1 - truth["5"] and items["5"]["overridden"]
        assert items["6"]["excluded"] and items["7"]["reviewed"]
        assert items["9"]["label"] == 1 - truth["9"]
        assert app.store.progress() == {"reviewed": 6, "total": 40, "overridden": 2, "excluded": 1}
        # The rewritten file has one row per id, so the pipeline sees no conflicting overrides.
        assert read_rows(tmp_path / "overrides.csv")[1:] == [["5", str(1 - truth["5"])], ["9", str(1 - truth["9"])]]
        # Undo reaches decisions of the previous session, newest first.
        assert client.post("/api/undo").json()["decision"] == {
            "id": "6",
            "field": "excluded",
            "before": True,
            "after": False,
        }
        assert read_rows(tmp_path / "exclusions.csv") == [["id"]]
        assert client.post("/api/undo").json()["item"] == {**items["5"], "label": truth["5"], "overridden": False}
        assert client.post("/api/undo").json()["decision"] is None  # 9 came from the file, not a decision.
    assert read_rows(tmp_path / "overrides.csv")[1:] == [["9", str(1 - truth["9"])]]
    actions = [row[1] for row in read_rows(tmp_path / "overrides.journal.csv")[1:]]
    assert actions == ["set", "set", "undo", "set", "reviewed", "reviewed", "undo", "undo"]


def test_more_than_two_classes_cycle(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in (1, 2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((20, 20, 3), 100 * i, np.uint8))
    (tmp_path / "labels.csv").write_text("id,kind\n1,b\n2,0\n")
    argv = [
        "--images",
        str(folder),
        "--labels_csv",
        str(tmp_path / "labels.csv"),
        "--label_column",
        "kind",
        "--classes",
        "a,b,c",
        "--overrides_csv",
        str(tmp_path / "o.csv"),
        "--exclude_csv",
        str(tmp_path / "e.csv"),
    ]
    with serving(argv) as (client, _):
        assert [client.decide("1", "flip")["item"]["label"] for _ in range(3)] == [2, 0, 1]
        assert read_rows(tmp_path / "o.csv") == [["id", "kind"]]  # Back at "b": no override.
        client.decide("2", "flip")
    assert read_rows(tmp_path / "o.csv") == [["id", "kind"], ["2", "1"]]


def test_requests_cannot_reach_anything_outside_the_index(images, tmp_path):
    outside = tmp_path / "secret.png"
    shutil.copy(images / "faces-spring-2020" / "face-1.png", outside)
    os.symlink(outside, images / "faces-spring-2020" / "face-900.png")  # Escapes --images: not listed.
    with serving(review_argv(images, tmp_path)) as (client, app):
        assert client.get("/thumb/1").status == 200
        for path in (
            "/thumb/..%2F..%2Fetc%2Fpasswd",
            "/thumb/../../etc/passwd",
            "/thumb/%2Fetc%2Fpasswd",
            "/thumb/900",
            "/thumb/999",
            "/thumb/" + str(outside),
            "/static/..%2Freview.py",
            "/static/../review.py",
            "/review.py",
        ):
            assert client.get(path).status == 404, path
        assert "900" not in app.store.items
        assert client.post("/api/decide", {"id": "../train.csv", "action": "flip"}).status == 404
        assert client.post("/api/decide", {"id": "1", "action": "delete"}).status == 400
        assert client.get("/", headers={"Host": "evil.example:80"}).status == 403  # DNS rebinding.
        assert (
            client.post("/api/decide", {"id": "1", "action": "flip"}, headers={"Origin": "http://evil.example"}).status
            == 403
        )
        plain = client.post("/api/decide", b'{"id": "1", "action": "flip"}', headers={"Content-Type": "text/plain"})
        assert plain.status == 415  # A cross-site form post cannot send application/json.
        # An indexed image swapped for a symlink to outside after the start is not served either.
        face2 = images / "faces-spring-2020" / "face-2.png"
        face2.unlink()
        os.symlink(outside, face2)
        swapped = client.get("/thumb/2")
        assert swapped.headers["X-Thumb-Error"].startswith("outside_images")
        assert client.get("/api/items?id=1").status == 200
        assert app.store.overrides == {}  # None of the refused requests changed anything.


def test_the_server_listens_on_localhost_only_and_serves_the_page(images, tmp_path):
    app = review.create_app(*review.parse_args(review_argv(images, tmp_path)))
    with review.running_server(app) as server:
        assert server.server_address[0] == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.server_address[1]}/"
        client = Client(server)
        page = client.get("/")
        assert page.status == 200 and b"/static/review.js" in page.body
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert client.get("/static/review.js").headers["Content-Type"].startswith("text/javascript")


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
    with serving(review_argv(images, tmp_path)) as (client, _):
        (faces / "face-5.png").unlink()  # Gone after the start.
        expected = {"41": "zero_bytes", "42": "truncated", "43": "not_an_image", "5": "read_error"}
        for image_id, reason in expected.items():
            response = client.get(f"/thumb/{image_id}")
            assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg", image_id
            assert response.headers["X-Thumb-Error"].startswith(reason), (image_id, response.headers)
            picture = cv2.imdecode(np.frombuffer(response.body, np.uint8), cv2.IMREAD_COLOR)
            assert picture is not None and max(picture.shape[:2]) <= 160
        items = client.get("/api/items?id=41&id=5").json()["items"]
        assert [t["note"] for t in items] == ["no_label_row", ""]  # No CSV row for 41; 5 keeps its label.


def test_predictions_put_the_likely_mistakes_first(images, tmp_path):
    truth = train_labels(images)
    faces = images / "faces-spring-2020"
    # P(glasses) per id: 3 is the most wrong, then 1, then 2; 4 agrees with its label.
    wrongness = {"3": 0.95, "1": 0.8, "2": 0.6, "4": 0.05}
    probability = {i: (1 - w if truth[i] else w) for i, w in wrongness.items()}
    rows = [(str(faces / f"face-{i}.png"), p) for i, p in probability.items() if i != "1"]
    rows.append(("some/other/place/face-1.png", probability["1"]))  # Matched by the file name.
    rows.append(("/elsewhere/face-777.png", 0.5))  # No such image: ignored.
    with open(tmp_path / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "probability", "label"])
        writer.writerows((path, f"{p:.6f}", CLASSES[p >= 0.5]) for path, p in rows)

    with serving(review_argv(images, tmp_path)) as (client, _):
        assert client.get("/api/ids?filter=disagree").status == 400  # Only with --predictions.
    with serving(review_argv(images, tmp_path, "--predictions", str(tmp_path / "predictions.csv"))) as (client, _):
        assert "disagree" in client.get("/api/state").json()["filters"]
        ordered = client.ids("disagree")
        assert ordered[:4] == ["3", "1", "2", "4"]
        assert sorted(ordered) == sorted(client.ids("all"))  # Ids without a prediction follow.
        assert client.get("/api/items?id=3").json()["items"][0]["probability"] == pytest.approx(
            probability["3"], abs=1e-5
        )
        client.decide("3", "flip")  # Fixed: now it agrees with the model.
        assert client.ids("disagree")[:4] == ["1", "2", "3", "4"]


def test_filters_follow_the_current_labels(images, tmp_path):
    with serving(review_argv(images, tmp_path)) as (client, _):
        assert client.ids("unlabelled") == ["37", "38", "39", "40"]
        assert client.ids("all")[:11] == [str(i) for i in range(1, 12)]  # Natural order: 2 before 10.
        client.decide("37", "flip")
        client.decide("12", "flip")
        client.decide("20", "exclude")
        assert client.ids("unlabelled") == ["38", "39", "40"]
        assert client.ids("overridden") == ["12", "20", "37"]
        first = client.get("/api/ids?filter=all").json()["first_unreviewed"]
        assert first == 0
        client.post("/api/reviewed", {"ids": [str(i) for i in range(1, 10)]})
        assert client.get("/api/ids?filter=all").json()["first_unreviewed"] == 9
        assert client.get("/api/ids?filter=nope").status == 400


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
