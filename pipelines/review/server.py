"""The HTTP server: the page, the thumbnails and the JSON API, on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from pipelines.review.listing import Item
from pipelines.review.store import FILTERS, ReviewStore
from pipelines.review.thumbnails import Thumbnails

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATIC_DIR = Path(__file__).with_name("static")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
MAX_BODY_BYTES = 256 * 1024
# /api/decide's actions -> the ReviewStore method that makes the decision.
DECISIONS = {"flip": "flip", "exclude": "toggle_exclude", "accept": "accept"}
# Connections the kernel queues while all handler threads are busy; past it Linux resets them.
LISTEN_BACKLOG = 256
MAX_HANDLER_THREADS = 32
REQUEST_TIMEOUT_S = 10.0  # A client silent this long mid-request (or idle between requests) is cut off.
# No inline script or style: the page is /static/review.{js,css}; thumbnails become blob: URLs.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; frame-ancestors 'none'",
}


class ReviewApp(NamedTuple):
    """What the server needs: the state, the thumbnails and the page's files."""

    store: ReviewStore
    thumbnails: Thumbnails
    static: dict[str, tuple[bytes, str]]  # name -> (content, content type)
    title: str


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def load_static(folder: Path = STATIC_DIR) -> dict[str, tuple[bytes, str]]:
    """The page's files, read once; the server serves these names and nothing else."""
    if not folder.is_dir():
        raise SystemExit(f"error: the review page's files are missing: {folder} (install facepipe with them)")
    return {
        p.name: (p.read_bytes(), CONTENT_TYPES[p.suffix]) for p in sorted(folder.iterdir()) if p.suffix in CONTENT_TYPES
    }


class ReviewHandler(BaseHTTPRequestHandler):
    """Routes: / and /static/<name>, /thumb/<id>, GET /api/{state,ids,items}, POST /api/{decide,undo,reviewed}."""

    server: ReviewServer
    server_version = "facepipe-review/1"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._handle(self._get)

    def do_POST(self) -> None:
        self._handle(self._post)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # Read by StreamRequestHandler.setup.
        super().setup()

    def _handle(self, route) -> None:
        try:
            self._check_origin()
            route(urlsplit(self.path))
        except HttpError as e:
            self.close_connection = True  # A request body may be left unread.
            self._send_json({"error": str(e)}, e.status)
        except OSError as e:  # A CSV could not be written: say so; the state is unchanged.
            log.exception("request failed")
            self.close_connection = True
            self._send_json({"error": f"could not save: {e}"}, HTTPStatus.INTERNAL_SERVER_ERROR)
        except Exception as e:  # A bug answers 500 to this request; the server goes on.
            log.exception("request failed")
            self.close_connection = True
            self._send_json({"error": f"{type(e).__name__}: {e}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _check_origin(self) -> None:
        """Refuses other hosts (DNS rebinding) and cross-site requests."""
        port = self.server.server_address[1]
        allowed = {f"127.0.0.1:{port}", f"localhost:{port}"}
        if self.headers.get("Host") not in allowed:
            raise HttpError(HTTPStatus.FORBIDDEN, "unexpected Host header")
        origin = self.headers.get("Origin")
        if origin is not None and origin.removeprefix("http://") not in allowed:
            raise HttpError(HTTPStatus.FORBIDDEN, "cross-origin request refused")

    def _get(self, url) -> None:
        app = self.server.app
        path = url.path
        if path in ("/", "/index.html"):
            self._send_static("index.html")
        elif path.startswith("/static/"):
            self._send_static(unquote(path.removeprefix("/static/")))
        elif path.startswith("/thumb/"):
            item = self._item(unquote(path.removeprefix("/thumb/")))
            jpeg, error = app.thumbnails.get(item)
            headers = {"Cache-Control": "private, max-age=3600" if not error else "no-store"}
            if error:
                headers["X-Thumb-Error"] = error.encode("ascii", "replace").decode()[:200]
            self._send(jpeg, "image/jpeg", headers=headers)
        elif path == "/api/state":
            self._send_json(self._state())
        elif path == "/api/ids":
            name = parse_qs(url.query).get("filter", ["all"])[0]
            if name not in self._filters():
                raise HttpError(HTTPStatus.BAD_REQUEST, f"unknown filter {name!r}")
            ids = app.store.ids(name)
            answer = {"filter": name, "ids": ids, "first_unreviewed": app.store.first_unreviewed(ids)}
            if name == "duplicates":  # The page lays each group out on rows of its own.
                answer["groups"] = app.store.groups()
            self._send_json(answer)
        elif path == "/api/items":
            ids = parse_qs(url.query).get("id", [])
            self._send_json({"items": [app.store.tile(self._item(i).id) for i in ids[:100]]})
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, "not found")

    def _post(self, url) -> None:
        store = self.server.app.store
        body = self._json_body()
        if url.path == "/api/decide":
            if not isinstance(body.get("id"), str):
                raise HttpError(HTTPStatus.BAD_REQUEST, "id must be a string")
            item = self._item(body["id"])
            action = body.get("action")
            if action not in DECISIONS:
                raise HttpError(HTTPStatus.BAD_REQUEST, "action must be 'flip', 'exclude' or 'accept'")
            if action == "accept" and item.id not in store.findings.suspects:
                raise HttpError(HTTPStatus.BAD_REQUEST, "no suggested label for this image")
            decision = getattr(store, DECISIONS[action])(item.id)
            self._send_json({"decision": decision._asdict(), "item": store.tile(item.id), "progress": store.progress()})
        elif url.path == "/api/undo":
            decision = store.undo()
            item = store.tile(decision.id) if decision and decision.id in store.items else None
            self._send_json(
                {"decision": decision._asdict() if decision else None, "item": item, "progress": store.progress()}
            )
        elif url.path == "/api/reviewed":
            ids = body.get("ids")
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise HttpError(HTTPStatus.BAD_REQUEST, "ids must be a list of strings")
            store.mark_reviewed(ids)
            self._send_json({"progress": store.progress()})
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, "not found")

    def _state(self) -> dict[str, Any]:
        store = self.server.app.store
        return {
            "title": self.server.app.title,
            "classes": list(store.classes),
            "filters": self._filters(),
            "progress": store.progress(),
        }

    def _filters(self) -> list[str]:
        """The filters this review has the files for."""
        store = self.server.app.store
        read = store.findings.read
        available = {
            "disagree": bool(store.probabilities) and len(store.classes) == 2,
            "suspects": "label_issues" in read,
            "quality": "quality" in read,
            "duplicates": "quality" in read,
        }
        return [f for f in FILTERS if available.get(f, True)]

    def _item(self, image_id: Any) -> Item:
        """The indexed image of an id from a request; 404 for anything else (paths included)."""
        if not isinstance(image_id, str) or image_id not in self.server.app.store.items:
            raise HttpError(HTTPStatus.NOT_FOUND, "unknown image id")
        return self.server.app.store.items[image_id]

    def _json_body(self) -> dict[str, Any]:
        # A JSON content type cannot be sent cross-site without a CORS preflight, which fails here.
        if self.headers.get_content_type() != "application/json":
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
        if "Transfer-Encoding" in self.headers:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not a chunked body")
        text = self.headers.get("Content-Length", "0")
        if not text.isdigit():
            raise HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        length = int(text)
        if length > MAX_BODY_BYTES:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request over {MAX_BODY_BYTES} bytes")
        try:
            data = self.rfile.read(length)
        except TimeoutError as e:
            raise HttpError(HTTPStatus.REQUEST_TIMEOUT, "request body incomplete") from e
        if len(data) < length:
            raise HttpError(HTTPStatus.BAD_REQUEST, "request body incomplete")
        try:
            body = json.loads(data or b"{}")
        except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser goes.
            raise HttpError(HTTPStatus.BAD_REQUEST, "body is not JSON") from e
        if not isinstance(body, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        return body

    def _send_static(self, name: str) -> None:
        if name not in self.server.app.static:
            raise HttpError(HTTPStatus.NOT_FOUND, "not found")
        content, content_type = self.server.app.static[name]
        self._send(content, content_type, headers={"Cache-Control": "no-cache"})

    def _send_json(self, payload: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        body = json.dumps(payload).encode("utf-8")
        self._send(body, "application/json", status=status, headers={"Cache-Control": "no-store"})

    def _send(
        self, body: bytes, content_type: str, *, status: HTTPStatus = HTTPStatus.OK, headers: dict | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class ReviewServer(ThreadingHTTPServer):
    """A threading HTTP server on 127.0.0.1 only, holding the ReviewApp.

    A thread per connection, at most ``max_threads`` at once: further connections wait
    in the listen backlog (a burst of decisions is queued, not reset) until a thread is free.
    """

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        app: ReviewApp,
        port: int = 0,
        *,
        timeout: float = REQUEST_TIMEOUT_S,
        max_threads: int = MAX_HANDLER_THREADS,
    ):
        self.app = app
        self.request_timeout = timeout
        self._handler_slots = threading.BoundedSemaphore(max_threads)
        super().__init__((HOST, port), ReviewHandler)

    def process_request(self, request, client_address) -> None:
        # Blocks the accept loop while all slots are taken; the handler thread frees its slot.
        self._handler_slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._handler_slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._handler_slots.release()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


@contextlib.contextmanager
def running_server(app: ReviewApp, port: int = 0, **options: Any) -> Iterator[ReviewServer]:
    """Serves ``app`` from a background thread (tests, notebooks) until the block ends; ``options``: ReviewServer's."""
    server = ReviewServer(app, port, **options)
    thread = threading.Thread(target=server.serve_forever, name="review-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
