"""What the review can filter by besides labels: likely wrong labels and the quality audit.

    --label_issues   label_issues.csv of ``python -m trainer.task find_label_issues``
                     (id,path,given_label,suggested_label,score,rank; matched by id)
    --quality_dir    OUT/quality of ``python -m pipelines.preprocess``: images-*.jsonl (a line
                     per image: id, split, label, stats, z, flags) and duplicates-*.jsonl (a
                     line per group: members, member_splits, splits, kind, kept, leakage)

Both are streamed a line at a time; of the quality audit only flagged images and duplicate
groups are kept, never every image's statistics. Rows of ids the review did not list are
counted and logged. A file that is missing, unreadable or not of that kind ends the program
with one line ``error: …`` naming the file and its flag (exit 2).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Mapping
from typing import IO, Any, NamedTuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines import csv_rows, features
from pipelines.cli import usage_error
from pipelines.review.listing import natural_key

log = logging.getLogger(__name__)

LABEL_ISSUES_COLUMNS = ("id", "given_label", "suggested_label", "score", "rank")
IMAGE_KEYS = ("id", "flags")
GROUP_KEYS = ("members", "member_splits", "kind", "kept", "leakage")


class Suspect(NamedTuple):
    """One likely wrong label: the label the model saw, the one it suggests, its score and rank."""

    id: str
    given: int
    suggested: int
    score: float  # P(given) - max P(other): the lower, the surer the label is wrong.
    rank: int


class Group(NamedTuple):
    """A duplicate group, reduced to the members the review lists (in the audit's member order)."""

    members: tuple[str, ...]
    splits: tuple[str, ...]  # each member's split
    kind: str  # exact | near
    kept: str  # the id --dedupe keep_one keeps
    leakage: bool  # members in more than one split


class Findings(NamedTuple):
    """Everything the new filters show, each in review order."""

    suspects: dict[str, Suspect]  # rank order
    flags: dict[str, tuple[str, ...]]  # flagged images only: most reasons first
    groups: list[Group]  # leakage groups first
    read: frozenset[str] = frozenset()  # which were given: "label_issues", "quality" (their filters are shown)

    @classmethod
    def empty(cls) -> Findings:
        return cls({}, {}, [])


def read_findings(
    label_issues: str | None, quality_dir: str | None, classes: tuple[str, ...], ids: Mapping[str, Any]
) -> Findings:
    """The findings of the files given (either may be None) for the review's ``ids``."""
    suspects = read_label_issues(label_issues, classes, ids) if label_issues else {}
    flags, groups = read_quality(quality_dir, ids) if quality_dir else ({}, [])
    read = frozenset(name for name, path in (("label_issues", label_issues), ("quality", quality_dir)) if path)
    return Findings(suspects, flags, groups, read)


def _open_text(path: str, flag: str, what: str) -> IO[str]:
    try:
        raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except OSError as e:
        usage_error(f"{flag} {path}: cannot read it ({e}); give {what}")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def read_label_issues(path: str, classes: tuple[str, ...], ids: Mapping[str, Any]) -> dict[str, Suspect]:
    """label_issues.csv -> {id: Suspect} in rank order, for the ids the review lists."""
    flag, what = "--label_issues", "the label_issues.csv that python -m trainer.task find_label_issues writes"
    suspects, unmatched = [], []
    with _open_text(path, flag, what) as f:
        try:
            reader = csv.DictReader(f)
            missing = [c for c in LABEL_ISSUES_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                usage_error(f"{flag} {path}: no column {','.join(missing)} (got {reader.fieldnames}); give {what}")
            for row in reader:
                try:
                    suspect = Suspect(
                        row["id"].strip(),
                        _label(row, "given_label", classes),
                        _label(row, "suggested_label", classes),
                        float(row["score"]),
                        int(row["rank"]),
                    )
                except (TypeError, ValueError) as e:  # TypeError: float(None) of a short row.
                    usage_error(f"{flag} {path}: line {reader.line_num}: {e}; is it of this data set?")
                if suspect.id in ids:
                    suspects.append(suspect)
                else:  # Named by its file (the data's examples index) where find_label_issues knew it.
                    unmatched.append(row.get("path") or suspect.id)
        except (UnicodeDecodeError, csv.Error) as e:
            usage_error(f"{flag} {path}: not a CSV ({e}); give {what}")
    if unmatched:
        log.warning(
            "%s: %d label issues of ids the review does not list (another folder?), e.g. %s",
            path,
            len(unmatched),
            ", ".join(unmatched[:3]),
        )
    suspects.sort(key=lambda s: (s.rank, natural_key(s.id)))
    return {s.id: s for s in suspects}


def _label(row: Mapping[str, str | None], column: str, classes: tuple[str, ...]) -> int:
    if row[column] is None:
        raise ValueError(f"no {column} (a short row)")
    try:
        return csv_rows.parse_label(row[column], classes)
    except ValueError:
        raise ValueError(f"{column} {row[column]!r} is not one of {list(classes)}") from None


def _jsonl_files(quality_dir: str, prefix: str) -> list[str]:
    pattern = FileSystems.join(quality_dir, f"{prefix}-*.jsonl")
    try:
        files = sorted(m.path for result in FileSystems.match([pattern]) for m in result.metadata_list)
    except OSError as e:
        usage_error(f"--quality_dir {quality_dir}: cannot list it ({e})")
    if not files:
        usage_error(
            f"--quality_dir {quality_dir}: no {prefix}-*.jsonl in it; give the {features.QUALITY_DIR}/ folder "
            "of a python -m pipelines.preprocess output"
        )
    return files


def _jsonl(path: str, keys: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """The records of one JSONL file, a line at a time; each must have ``keys``."""
    flag = "--quality_dir"
    with _open_text(path, flag, "a preprocess output's quality/ folder") as f:
        number = 0
        try:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    usage_error(f"{flag} {path}: line {number} is not JSON ({e})")
                if not _has(record, keys):
                    usage_error(f"{flag} {path}: line {number} has no {'/'.join(keys)}; not the audit's file?")
                yield record
        except UnicodeDecodeError as e:
            usage_error(f"{flag} {path}: line {number + 1} is not UTF-8 text ({e})")


def _has(record: Any, keys: tuple[str, ...]) -> bool:
    """Whether a JSONL record has the keys, lists where lists are expected (a group's members as many as their splits)."""
    if not isinstance(record, dict) or not all(k in record for k in keys):
        return False
    if "members" in keys:
        members, splits = record["members"], record["member_splits"]
        return isinstance(members, list) and isinstance(splits, list) and len(members) == len(splits)
    return isinstance(record["flags"], list)


def read_quality(quality_dir: str, ids: Mapping[str, Any]) -> tuple[dict[str, tuple[str, ...]], list[Group]]:
    """The audit's flagged images ({id: reasons}, most reasons first) and duplicate groups
    (members the review lists; leakage groups first, then by their first member)."""
    flagged, unmatched = [], 0
    for path in _jsonl_files(quality_dir, "images"):
        for record in _jsonl(path, IMAGE_KEYS):
            if record["flags"]:
                image_id = str(record["id"])
                if image_id in ids:
                    flagged.append((image_id, tuple(map(str, record["flags"]))))
                else:
                    unmatched += 1
    flagged.sort(key=lambda f: (-len(f[1]), natural_key(f[0])))
    groups = []
    for path in _jsonl_files(quality_dir, "duplicates"):
        for record in _jsonl(path, GROUP_KEYS):
            pairs = zip(map(str, record["members"]), map(str, record["member_splits"]), strict=True)
            listed = [(member, split) for member, split in pairs if member in ids]
            unmatched += len(record["members"]) - len(listed)
            if listed:
                members, splits = zip(*listed, strict=True)
                groups.append(Group(members, splits, str(record["kind"]), str(record["kept"]), bool(record["leakage"])))
    groups.sort(key=lambda g: (not g.leakage, natural_key(g.members[0])))
    if unmatched:
        log.warning(
            "%s: %d flagged or duplicate images the review does not list (another folder?)", quality_dir, unmatched
        )
    return dict(flagged), groups
