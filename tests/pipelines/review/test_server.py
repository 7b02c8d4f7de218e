"""The review's HTTP server: nothing outside the index is reachable; localhost only; the page.

Each test starts the server in-process on 127.0.0.1, port 0, over a copy of the glasses demo
data (tests/pipelines/review/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

from pipelines.review.cli import create_app, parse_args
from pipelines.review.server import running_server
from tests.pipelines.review.client import Client, read_rows, review_argv, serving, train_labels


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
    app = create_app(*parse_args(review_argv(images, tmp_path)))
    with running_server(app) as server:
        assert server.server_address[0] == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.server_address[1]}/"
        client = Client(server)
        page = client.get("/")
        assert page.status == 200 and b"/static/review.js" in page.body
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert client.get("/static/review.js").headers["Content-Type"].startswith("text/javascript")


def test_a_hundred_and_twenty_simultaneous_decisions_all_succeed_and_are_all_saved(images, tmp_path):
    truth = train_labels(images)
    ids = [str(i) for i in range(1, 41)] * 3  # Three flips each: every id ends one flip away from its start.
    start = threading.Barrier(len(ids))
    statuses: list[int | str] = []

    with serving(review_argv(images, tmp_path)) as (client, _):

        def decide(image_id: str) -> None:
            start.wait()
            try:
                statuses.append(client.post("/api/decide", {"id": image_id, "action": "flip"}).status)
            except OSError as e:  # A reset or refused connection: what a too short backlog gives.
                statuses.append(type(e).__name__)

        threads = [threading.Thread(target=decide, args=(i,)) for i in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        overrides = dict(read_rows(tmp_path / "overrides.csv")[1:])
    assert statuses == [200] * len(ids)
    expected = {i: str(1 - truth[i]) for i in map(str, range(1, 37))} | {i: "0" for i in ("37", "38", "39", "40")}
    assert overrides == expected
    journal = read_rows(tmp_path / "overrides.journal.csv")[1:]
    assert sorted(row[2] for row in journal if row[1] == "set") == sorted(ids)


def _raw_request(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Sends ``data`` on a raw socket and reads until the server closes it (or ``timeout`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_a_client_that_stops_sending_is_cut_off_after_the_timeout(images, tmp_path):
    app = create_app(*parse_args(review_argv(images, tmp_path)))
    with running_server(app, timeout=0.5) as server:
        port = server.server_address[1]
        head = f"POST /api/decide HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        began = time.monotonic()
        half_body = _raw_request(port, (head + "Content-Length: 100\r\n\r\n" + '{"id": "1", ').encode())
        assert half_body.startswith(b"HTTP/1.1 408 ") and b"incomplete" in half_body
        assert _raw_request(port, head.encode()) == b""  # Headers never finished: closed without an answer.
        assert time.monotonic() - began < 4
        assert Client(server).decide("1", "flip")["decision"]["id"] == "1"  # The server still answers.
    assert app.store.overrides.keys() == {"1"}


def test_connections_past_the_thread_cap_wait_for_a_free_thread(images, tmp_path):
    app = create_app(*parse_args(review_argv(images, tmp_path)))
    with running_server(app, timeout=1, max_threads=2) as server:
        port = server.server_address[1]
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        try:
            for sock in stalled:  # Each holds a handler thread until the timeout cuts it off.
                sock.sendall(f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
            began = time.monotonic()
            assert Client(server).get("/api/state").status == 200
            assert time.monotonic() - began > 0.5  # Served only once a stalled connection was cut off.
        finally:
            for sock in stalled:
                sock.close()


def test_malformed_bodies_are_refused_with_a_short_message(images, tmp_path):
    with serving(review_argv(images, tmp_path)) as (client, app):
        for body, status in (
            (b"[" * 100_000, 400),  # Deeper than the JSON parser's recursion limit.
            (b'{"id": ' * 30_000, 400),
            (b"[1, 2]", 400),
            (b'"1"', 400),
            (b"\xff\xfe", 400),
            (b'{"id": 1, "action": "flip"}', 400),
            (b'{"id": ["1"], "action": "flip"}', 400),
            (b'{"id": "1", "action": 3}', 400),
            (b'{"id": "1"}', 400),
        ):
            response = client.post("/api/decide", body)
            assert response.status == status, (body[:20], response.body)
            assert len(response.json()["error"]) < 80 and "Error" not in response.json()["error"]
        assert client.post("/api/reviewed", {"ids": "1"}).status == 400
        assert client.post("/api/reviewed", {"ids": [1]}).status == 400
        too_large = client.post("/api/decide", b"{}", headers={"Content-Length": str(10**9)})
        assert too_large.status == 413
        assert client.post("/api/decide", b"{}", headers={"Content-Length": "-1"}).status == 400
        assert client.post("/api/decide", b"{}", headers={"Content-Length": "two"}).status == 400
        assert client.get("/api/state").status == 200
    assert app.store.overrides == {} and app.store.excluded == {}
