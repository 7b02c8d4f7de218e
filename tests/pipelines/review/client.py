"""The review server as the tests drive it: raw HTTP, a server per block, the files it writes."""

from __future__ import annotations

import contextlib
import csv
import http.client
import itertools
import json
import pathlib
from collections.abc import Iterator
from typing import Any, NamedTuple

from pipelines.quality.duplicates import Member, duplicate_groups
from pipelines.review.cli import create_app, parse_args
from pipelines.review.server import ReviewApp, ReviewServer, running_server

CLASSES = ("no_glasses", "glasses")


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """Raw HTTP to the review server: paths are sent exactly as given (no normalization)."""

    def __init__(self, server: ReviewServer):
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
def serving(argv: list[str]) -> Iterator[tuple[Client, ReviewApp]]:
    app = create_app(*parse_args(argv))
    with running_server(app) as server:
        yield Client(server), app


def read_rows(path: pathlib.Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def write_label_issues(path: pathlib.Path, rows: list[tuple], paths: dict[str, str] | None = None) -> pathlib.Path:
    """label_issues.csv as find_label_issues writes it: rows (id, given, suggested, score, rank[, issue]),
    issue 1 unless given; the path from ``paths`` by id, else empty (data preprocessed before the
    examples index)."""
    paths = paths or {}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path", "given_label", "suggested_label", "score", "rank", "issue"])
        for i, given, suggested, score, rank, *issue in rows:
            writer.writerow((i, paths.get(i, ""), given, suggested, f"{score:.6f}", rank, *(issue or [1])))
    return path


def write_quality(folder: pathlib.Path, images: dict[str, list[str]], groups: list[dict[str, Any]]) -> pathlib.Path:
    """OUT/quality as the preprocess job writes it: ``images`` id -> flags (two shards), ``groups``
    (members in id order, member_splits, kind; the audit's own code sets kept and leakage)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        {
            "id": i,
            "split": "train",
            "label": 0,
            "content_hash": "0" * 64,
            "stats": {"sharpness": 1.0, "phash": "0" * 16},
            "z": {"sharpness": -5.0 if "blurry" in flags else 0.1},
            "flags": flags,
        }
        for i, flags in images.items()
    ]
    half = len(lines) // 2
    for n, shard in enumerate((lines[:half], lines[half:])):
        (folder / f"images-0000{n}-of-00002.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shard))
    records = [  # Built by the audit's own code, so that the keys are the writer's.
        duplicate_groups(
            itertools.pairwise(
                Member(m, split, 0 if g["kind"] == "exact" else n, 0)
                for n, (m, split) in enumerate(zip(g["members"], g["member_splits"], strict=True))
            )
        )[0]
        for g in groups
    ]
    (folder / "duplicates-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder
