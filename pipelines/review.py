"""Label review: a local web page to relabel and exclude images nine at a time, by keyboard.

    python -m pipelines.review --images DIR --dataset glasses \\
        --overrides_csv overrides.csv --exclude_csv exclusions.csv [--predictions preds.csv] [--port 8765]

Open the printed address (the server binds 127.0.0.1 only). Keys: 1-9 flip the label of a
tile (cycle with more than two classes), Shift+1-9 or x then 1-9 exclude / re-include it,
n/p or the arrows page (leaving a page forward marks it reviewed), u undoes the last
decision, a/l/o/d pick a filter (all, unlabelled, overridden, most disagreeing first).

The review writes what ``python -m pipelines.preprocess --overrides_csv ... --exclude ...`` reads:

    --overrides_csv   id,<label column>   one row per image whose label the reviewer changed
    --exclude_csv     id                  one row per excluded (distorted) image
    --journal         time,action,id,field,before,after: every decision, undo and reviewed
                      page, appended and fsynced (default: <overrides_csv stem>.journal.csv)

Both CSVs are rewritten atomically (temp file, fsync, os.replace) after every decision, so they
always hold the final state: the pipeline reads two override rows of an id as a conflict and
any exclusion row as final, so an append-only file would not do; the journal is the
append-only record (reviewed ids and the undo history survive a restart). Images are listed
and labelled with the pipeline's own code (options.parse_args, the sources' CSV parsers,
ResolveLabel) and thumbnails decoded with its decoder (transforms), so the page shows the
labels and the unreadable images the pipeline would see.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import cv2
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from pipelines import options, sources, transforms
from pipelines.options import IMAGE_EXTENSIONS, PreprocessConfig
from pipelines.paths import is_remote

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATIC_DIR = Path(__file__).with_name("review_static")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
FILTERS = ("all", "unlabelled", "overridden", "disagree")
JOURNAL_HEADER = ["time", "action", "id", "field", "before", "after"]
MAX_BODY_BYTES = 256 * 1024
THUMB_JPEG_QUALITY = 85
# No inline script or style: the page is /static/review.{js,css}; thumbnails become blob: URLs.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; frame-ancestors 'none'",
}


class Item(NamedTuple):
    """One reviewable image, labelled as the pipeline labels it before any override."""

    id: str
    path: str
    label: int | None  # None: the pipeline has no label for it (see note).
    note: str  # The pipeline's reason when label is None ("unlabelled", "bad_label: ..."), else "".


class Decision(NamedTuple):
    """One change of one field: ``label`` (the override; None = none) or ``excluded`` (bool)."""

    id: str
    field: str
    before: int | bool | None
    after: int | bool | None


# --- Listing and labelling, with the pipeline's own parsers ---------------------------------


def natural_key(text: str) -> tuple:
    """'face-10' sorts after 'face-9'."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def list_image_files(globs: Iterable[str]) -> list[tuple[str, int]]:
    """(path, size) of the image files the pipeline's ListImages would read, deduplicated."""
    files = {}
    for result in FileSystems.match(list(globs)):
        for metadata in result.metadata_list:
            if metadata.path.lower().endswith(IMAGE_EXTENSIONS):
                files[metadata.path] = metadata.size_in_bytes
    return sorted(files.items())


def csv_lines(path: str) -> Iterator[str]:
    """A CSV's lines after the header, as ``ReadFromText(skip_header_lines=1)`` gives them."""
    with FileSystems.open(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
        next(text, None)
        for line in text:
            yield line.rstrip("\r\n")


def run_row_parser(path: str, dofn: Any) -> tuple[list[tuple[str, Any]], list[dict]]:
    """Runs one of the sources' CSV-row DoFns over a file: (rows, dead-letter records)."""
    rows, dead = [], []
    for line in csv_lines(path):
        for out in dofn.process(line):
            if isinstance(out, TaggedOutput):
                dead.append(out.value)
            else:
                rows.append(out)
    return rows, dead


def header_of(path: str) -> list[str]:
    return [h.strip() for h in sources.read_csv_header(path)]


def images_root(images: str) -> str:
    """The folder every served file must be under: --images, or a glob's fixed prefix."""
    parts = images.rstrip("/").split("/")
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return "/".join(fixed) or "/"


def is_under(path: str, root: str) -> bool:
    """Whether ``path`` (symlinks resolved, for local files) lies under ``root``."""
    if is_remote(path) or is_remote(root):
        return path.startswith(root.rstrip("/") + "/")
    real, base = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, base]) == base


def build_index(config: PreprocessConfig, root: str) -> dict[str, Item]:
    """Every listed image by id, in natural id order, with the pipeline's label for it."""
    images: dict[str, list] = collections.defaultdict(list)
    key_by_id = sources.KeyImageById(config)
    for file in list_image_files(config.image_globs):
        if not is_under(file[0], root):
            log.warning("skipping %s: it resolves to outside %s", file[0], root)
            continue
        for out in key_by_id.process(file):
            if isinstance(out, TaggedOutput):
                log.warning("skipping %s: %s", out.value["path"], out.value["reason"])
            else:
                images[out[0]].append(out[1])  # (id, (path, size, folder_label, group))
    labels = collections.defaultdict(list)
    for path in config.labels_csv:
        rows, dead = run_row_parser(path, sources.ParseLabelRows(path, header_of(path), config))
        for image_id, row in rows:
            labels[image_id].append(row)
        if dead:
            log.warning("%s: %d malformed rows skipped", path, len(dead))
    resolve = sources.ResolveLabel()
    items = {}
    for image_id in sorted(images, key=natural_key):
        joined = {"images": images[image_id], "labels": labels.get(image_id, []), "overrides": [], "exclusions": []}
        for out in resolve.process((image_id, joined)):
            if isinstance(out, sources.LabelledImage):
                items[image_id] = Item(image_id, out.path, out.label, "")
            elif out.value["reason"] == "duplicate_id":
                log.warning("id %s: duplicate file %s ignored", image_id, out.value["path"])
            else:
                note = ": ".join(p for p in (out.value["reason"], out.value["detail"]) if p)
                items[image_id] = Item(image_id, out.value["path"], None, note)
    return items


def read_predictions(path: str, config: PreprocessConfig, items: dict[str, Item]) -> dict[str, float]:
    """The trainer's predict CSV (path,probability,label) -> {id: P(class 1)} for indexed ids.

    A row's path is matched to an image by its full path, else by its file name, the way the
    pipeline derives ids.
    """
    by_path = {_normalized(item.path): item.id for item in items.values()}
    key_by_id = sources.KeyImageById(config)
    probabilities, unmatched = {}, 0
    with FileSystems.open(path) as f:
        reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8-sig", newline=""))
        if not {"path", "probability"} <= set(reader.fieldnames or ()):
            raise SystemExit(f"error: {path}: expected the columns path,probability,label; got {reader.fieldnames}")
        for row in reader:
            image_id = by_path.get(_normalized(row["path"]))
            if image_id is None:
                image_id = next((out[0] for out in key_by_id.process((row["path"], 0)) if isinstance(out, tuple)), None)
            try:
                probability = float(row["probability"])
            except (TypeError, ValueError):
                probability = float("nan")
            if image_id in items and 0.0 <= probability <= 1.0:
                probabilities[image_id] = probability
            else:
                unmatched += 1
    if unmatched:
        log.warning("%s: %d rows match no image (or have no probability in [0, 1])", path, unmatched)
    return probabilities


def _normalized(path: str) -> str:
    return path if is_remote(path) else os.path.normpath(os.path.abspath(path))


# --- The review's files ---------------------------------------------------------------------


def read_id_csv(path: str, config: PreprocessConfig, *, with_label: bool) -> dict[str, int | None]:
    """An overrides (id,label) or exclusions (id) CSV as the pipeline parses it; the last row of an id wins."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return {}
    header = header_of(path)
    rows, dead = run_row_parser(path, sources.ParseIdLabel(path, header, config, with_label=with_label))
    if dead:
        details = "; ".join(d["detail"] for d in dead[:3])
        raise SystemExit(f"error: {path}: {len(dead)} rows the pipeline cannot read ({details}); fix or remove them")
    return dict(rows)


def write_csv_atomic(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Writes a whole CSV to a temp file in the same folder, fsyncs it and renames it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    """Makes a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_rows(path: str, rows: Iterable[Sequence[Any]]) -> None:
    """Appends CSV rows with one write and fsyncs them."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())


def _encode(value: int | bool | None) -> str:
    if value is None:
        return ""
    return str(int(value))


def _decode(field: str, text: str) -> int | bool | None:
    if field == "excluded":
        return text == "1"
    return int(text) if text else None


def read_journal(path: str) -> tuple[set[str], list[Decision]]:
    """Replays the journal: (reviewed ids, undo stack)."""
    reviewed: set[str] = set()
    stack: list[Decision] = []
    if not os.path.exists(path):
        return reviewed, stack
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            try:
                action, image_id, field = row["action"], row["id"], row["field"]
                if action == "set":
                    stack.append(Decision(image_id, field, _decode(field, row["before"]), _decode(field, row["after"])))
                elif action == "undo" and stack:
                    stack.pop()
            except (KeyError, TypeError, ValueError):
                log.warning("%s: unreadable journal row %s skipped", path, row)
                continue
            reviewed.add(image_id)
    return reviewed, stack


class ReviewStore:
    """The review's state (overrides, exclusions, reviewed ids, undo history) and its files.

    Every change rewrites the CSV it touches atomically and then appends to the journal; a
    failed write leaves memory as it was and raises.
    """

    def __init__(
        self,
        items: dict[str, Item],
        config: PreprocessConfig,
        *,
        overrides_csv: str,
        exclude_csv: str,
        journal: str,
        probabilities: dict[str, float] | None = None,
    ):
        self.items = items
        self.classes = config.classes
        self.probabilities = probabilities or {}
        self._overrides_csv, self._exclude_csv, self._journal = overrides_csv, exclude_csv, journal
        self._id_column, self._label_column = config.id_column, config.label_column
        self._lock = threading.Lock()
        # Rows of ids not in the index are kept: they may be another folder's decisions.
        self.overrides: dict[str, int] = read_id_csv(overrides_csv, config, with_label=True)  # type: ignore[assignment]
        self.excluded: dict[str, None] = dict.fromkeys(read_id_csv(exclude_csv, config, with_label=False))
        self.reviewed, self._undo = read_journal(journal)
        self.reviewed |= set(self.overrides) | set(self.excluded)
        self._save("label")
        self._save("excluded")
        if not os.path.exists(journal) or os.path.getsize(journal) == 0:
            append_rows(journal, [JOURNAL_HEADER])

    # Reading.

    def label(self, image_id: str) -> int | None:
        return self.overrides.get(image_id, self.items[image_id].label)

    def tile(self, image_id: str) -> dict[str, Any]:
        """What the page shows of one image."""
        item = self.items[image_id]
        with self._lock:
            label = self.label(image_id)
            return {
                "id": image_id,
                "label": label,
                "original": item.label,
                "overridden": image_id in self.overrides,
                "excluded": image_id in self.excluded,
                "reviewed": image_id in self.reviewed,
                "probability": self.probabilities.get(image_id),
                "note": item.note if label is None else "",
            }

    def progress(self) -> dict[str, int]:
        with self._lock:
            return {
                "reviewed": len(self.reviewed.intersection(self.items)),
                "total": len(self.items),
                "overridden": len(self.items.keys() & self.overrides.keys()),
                "excluded": len(self.items.keys() & self.excluded.keys()),
            }

    def ids(self, name: str) -> list[str]:
        """The ids a filter shows, in review order."""
        with self._lock:
            if name == "unlabelled":
                return [i for i in self.items if self.label(i) is None]
            if name == "overridden":
                return [i for i in self.items if i in self.overrides or i in self.excluded]
            if name == "disagree":
                return sorted(self.items, key=self._disagreement_key)
            return list(self.items)

    def first_unreviewed(self, ids: Sequence[str]) -> int:
        """The position of the first id not reviewed yet (0 when all are)."""
        with self._lock:
            return next((n for n, i in enumerate(ids) if i not in self.reviewed), 0)

    def _disagreement_key(self, image_id: str) -> tuple[int, float]:
        """|P(class 1) - current label| descending; ids without a prediction or label last."""
        probability, label = self.probabilities.get(image_id), self.label(image_id)
        if probability is None or label is None:
            return (1, 0.0)
        return (0, -abs(probability - label))

    # Deciding.

    def flip(self, image_id: str) -> Decision:
        """Next class (unlabelled -> class 0); back at the original label the override goes."""
        with self._lock:
            current = self.label(image_id)
            new = 0 if current is None else (current + 1) % len(self.classes)
            after = None if new == self.items[image_id].label else new
            return self._apply(Decision(image_id, "label", self.overrides.get(image_id), after), "set")

    def toggle_exclude(self, image_id: str) -> Decision:
        with self._lock:
            before = image_id in self.excluded
            return self._apply(Decision(image_id, "excluded", before, not before), "set")

    def undo(self) -> Decision | None:
        """Reverts the last decision still in effect (also one made before a restart)."""
        with self._lock:
            if not self._undo:
                return None
            last = self._undo[-1]
            return self._apply(Decision(last.id, last.field, last.after, last.before), "undo")

    def mark_reviewed(self, ids: Iterable[str]) -> None:
        with self._lock:
            new = [i for i in dict.fromkeys(ids) if i in self.items and i not in self.reviewed]
            if new:
                append_rows(self._journal, [[_now(), "reviewed", i, "", "", ""] for i in new])
                self.reviewed.update(new)

    def _apply(self, decision: Decision, action: str) -> Decision:
        self._set(decision.id, decision.field, decision.after)
        try:
            self._save(decision.field)
        except BaseException:
            self._set(decision.id, decision.field, decision.before)
            raise
        row = [_now(), action, decision.id, decision.field, _encode(decision.before), _encode(decision.after)]
        append_rows(self._journal, [row])
        if action == "undo":
            self._undo.pop()
        else:
            self._undo.append(decision)
        self.reviewed.add(decision.id)
        return decision

    def _set(self, image_id: str, field: str, value: int | bool | None) -> None:
        if field == "label":
            if value is None:
                self.overrides.pop(image_id, None)
            else:
                self.overrides[image_id] = int(value)
        elif value:
            self.excluded[image_id] = None
        else:
            self.excluded.pop(image_id, None)

    def _save(self, field: str) -> None:
        if field == "label":
            rows = [(i, self.overrides[i]) for i in sorted(self.overrides, key=natural_key)]
            write_csv_atomic(self._overrides_csv, [self._id_column, self._label_column], rows)
        else:
            write_csv_atomic(
                self._exclude_csv, [self._id_column], [(i,) for i in sorted(self.excluded, key=natural_key)]
            )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --- Thumbnails -----------------------------------------------------------------------------


def make_thumbnail(data: bytes, *, side: int, max_pixels: int) -> bytes:
    """Encoded image -> JPEG whose longer side is at most ``side`` (never enlarged).

    Decoded by the pipeline's decoder (same checks, same failure reasons, INTER_AREA);
    raises transforms.UndecodableImage.
    """
    transforms.check_container(data)
    width, height = transforms.image_dimensions(data)
    scale = min(1.0, side / max(width, height, 1))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = transforms.decode_and_resize(data, size=size, color_mode="rgb", max_pixels=max_pixels)
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, THUMB_JPEG_QUALITY]
    )
    if not ok:
        raise transforms.UndecodableImage("undecodable", "JPEG encoding failed")
    return encoded.tobytes()


def placeholder(reason: str, *, side: int) -> bytes:
    """A grey JPEG with a cross and the reason written on it, for images that cannot be shown."""
    canvas = np.full((side, side, 3), 48, np.uint8)
    cv2.line(canvas, (0, 0), (side - 1, side - 1), (70, 70, 150), 2)
    cv2.line(canvas, (0, side - 1), (side - 1, 0), (70, 70, 150), 2)
    width = max(8, side // 8)
    lines = [reason[i : i + width] for i in range(0, min(len(reason), width * 5), width)]
    for n, line in enumerate(lines):
        y = side // 2 - 8 * len(lines) + 16 * n + 8
        cv2.putText(canvas, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (240, 240, 240), 1, cv2.LINE_AA)
    return cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, THUMB_JPEG_QUALITY])[1].tobytes()


class Thumbnails:
    """Thumbnails made on demand from the originals, in a bounded in-memory LRU cache."""

    def __init__(self, *, root: str, side: int = 160, capacity: int = 2000, max_pixels: int = 64_000_000):
        self.root, self.side, self.capacity, self.max_pixels = root, side, capacity, max_pixels
        self._cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, item: Item) -> tuple[bytes, str]:
        """(JPEG, error): a thumbnail and "", or a placeholder and why the image cannot be shown."""
        with self._lock:
            if item.id in self._cache:
                self._cache.move_to_end(item.id)
                return self._cache[item.id], ""
        try:
            jpeg = make_thumbnail(self._read(item.path), side=self.side, max_pixels=self.max_pixels)
        except transforms.UndecodableImage as e:
            error = ": ".join(p for p in (e.reason, e.detail) if p)
            return placeholder(error, side=self.side), error
        except OSError as e:  # Missing or unreadable (Beam's BeamIOError is an OSError too).
            error = f"read_error: {type(e).__name__}"
            return placeholder(error, side=self.side), error
        except (cv2.error, ValueError, MemoryError) as e:  # The decoder's own failures.
            error = f"undecodable: {type(e).__name__}"
            return placeholder(error, side=self.side), error
        with self._lock:  # Errors are not cached: a file fixed on disk shows on the next visit.
            self._cache[item.id] = jpeg
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return jpeg, ""

    def _read(self, path: str) -> bytes:
        if not is_under(path, self.root):  # The index was checked; a symlink may have changed since.
            raise transforms.UndecodableImage("outside_images", "the file resolves to outside --images")
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read()


# --- HTTP -----------------------------------------------------------------------------------


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
            self._send_json({"filter": name, "ids": ids, "first_unreviewed": app.store.first_unreviewed(ids)})
        elif path == "/api/items":
            ids = parse_qs(url.query).get("id", [])
            self._send_json({"items": [app.store.tile(self._item(i).id) for i in ids[:100]]})
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, "not found")

    def _post(self, url) -> None:
        store = self.server.app.store
        body = self._json_body()
        if url.path == "/api/decide":
            item = self._item(body.get("id"))
            action = body.get("action")
            if action not in ("flip", "exclude"):
                raise HttpError(HTTPStatus.BAD_REQUEST, "action must be 'flip' or 'exclude'")
            decision = store.flip(item.id) if action == "flip" else store.toggle_exclude(item.id)
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
        store = self.server.app.store
        binary_predictions = bool(store.probabilities) and len(store.classes) == 2
        return [f for f in FILTERS if f != "disagree" or binary_predictions]

    def _item(self, image_id: Any) -> Item:
        """The indexed image of an id from a request; 404 for anything else (paths included)."""
        if not isinstance(image_id, str) or image_id not in self.server.app.store.items:
            raise HttpError(HTTPStatus.NOT_FOUND, "unknown image id")
        return self.server.app.store.items[image_id]

    def _json_body(self) -> dict[str, Any]:
        # A JSON content type cannot be sent cross-site without a CORS preflight, which fails here.
        if self.headers.get_content_type() != "application/json":
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError as e:
            raise HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from e
        if not 0 <= length <= MAX_BODY_BYTES:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request too large")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as e:
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
    """A threading HTTP server on 127.0.0.1 only, holding the ReviewApp."""

    daemon_threads = True

    def __init__(self, app: ReviewApp, port: int = 0):
        super().__init__((HOST, port), ReviewHandler)
        self.app = app

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


@contextlib.contextmanager
def running_server(app: ReviewApp, port: int = 0) -> Iterator[ReviewServer]:
    """Serves ``app`` from a background thread (tests, notebooks) until the block ends."""
    server = ReviewServer(app, port)
    thread = threading.Thread(target=server.serve_forever, name="review-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- Command line ---------------------------------------------------------------------------


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.review",
        description="Review labels nine images at a time in a local web page; writes the overrides "
        "and exclusions CSVs that python -m pipelines.preprocess reads.",
        epilog="Images and labels are found as by python -m pipelines.preprocess, which also takes "
        "--labels_csv, --id_column, --label_column, --file_pattern, --class_folders and --classes.",
    )
    add = parser.add_argument
    add("--images", required=True, help="Directory (or glob) of the images, as for the pipeline.")
    add("--dataset", choices=sorted(options.DATASET_PRESETS), help="Preset for a known layout: --images is its root.")
    add("--overrides_csv", required=True, help="Overrides CSV (id,<label column>) to read and keep up to date.")
    add("--exclude_csv", required=True, help="Exclusions CSV (id) to read and keep up to date.")
    add("--journal", help="Decision log (default: <overrides_csv stem>.journal.csv).")
    add("--predictions", help="The trainer's predict CSV (path,probability,label): adds 'most disagreeing first'.")
    add("--port", type=int, default=8765, help="Port on 127.0.0.1 (0: any free port).")
    add("--thumb_size", type=int, default=160, help="Longer side of the thumbnails in pixels.")
    add("--cache_size", type=int, default=2000, help="Thumbnails kept in memory.")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, PreprocessConfig]:
    """The review's own flags, and the pipeline's config from the rest (the pipeline's parser)."""
    parser = build_arg_parser()
    args, rest = parser.parse_known_args(argv)
    forwarded = ["--images", args.images, "--output", os.devnull, *rest]
    if args.dataset:
        forwarded += ["--dataset", args.dataset]
    config, unknown = options.parse_args(forwarded)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.journal is None:
        args.journal = os.path.splitext(args.overrides_csv)[0] + ".journal.csv"
    files = [os.path.abspath(p) for p in (args.overrides_csv, args.exclude_csv, args.journal)]
    if len(set(files)) != 3:
        parser.error("--overrides_csv, --exclude_csv and --journal must be three different files")
    return args, config


def create_app(args: argparse.Namespace, config: PreprocessConfig) -> ReviewApp:
    """Lists and labels the images, reads the review files and loads the page."""
    root = images_root(args.images)
    items = build_index(config, root)
    if not items:
        raise SystemExit(f"error: no images found in {list(config.image_globs)}")
    probabilities = read_predictions(args.predictions, config, items) if args.predictions else {}
    store = ReviewStore(
        items,
        config,
        overrides_csv=args.overrides_csv,
        exclude_csv=args.exclude_csv,
        journal=args.journal,
        probabilities=probabilities,
    )
    thumbnails = Thumbnails(root=root, side=args.thumb_size, capacity=args.cache_size, max_pixels=config.max_pixels)
    return ReviewApp(store, thumbnails, load_static(), title=args.images)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args, config = parse_args(argv)
    app = create_app(args, config)
    try:
        server = ReviewServer(app, args.port)
    except OSError as e:
        raise SystemExit(f"error: cannot listen on {HOST}:{args.port}: {e}") from e
    progress = app.store.progress()
    print(
        f"Reviewing {progress['total']} images ({progress['reviewed']} reviewed); writing {args.overrides_csv} and {args.exclude_csv}"
    )
    print(f"Open {server.url}  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
