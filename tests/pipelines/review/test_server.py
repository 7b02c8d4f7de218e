"""The review's HTTP server: nothing outside the index is reachable; localhost only; the page.

Each test starts the server in-process on 127.0.0.1, port 0, over a copy of the glasses demo
data (tests/pipelines/review/conftest.py).
"""

from __future__ import annotations

import os
import shutil

from pipelines.review.cli import create_app, parse_args
from pipelines.review.server import running_server
from tests.pipelines.review.client import Client, review_argv, serving


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
