"""Persistence: the review's state (overrides, exclusions, reviewed ids, undo) and its files.

Every decision is first appended to the journal and fsynced, then the CSV it changes is
rewritten atomically (temp file + rename, the file's mode kept). The journal is the source of
truth; the recovery rule at every start:

- A torn last journal line (a crash mid-append, no newline) is cut off: it was never answered.
- The journal is replayed onto the CSVs. A crash after the journal line but before the CSV
  rename leaves the CSV one decision behind: when the CSV was last written before the
  journal's last line and holds the value from before the journal's last decision, for that
  decision's (id, field), the journal's value is restored.
  Any other difference is a person's hand edit of the CSV: it is kept and adopted into the
  journal as a decision of its own (one warning line names the ids; undo reverts it), never
  discarded. Ids the journal never names keep the CSV's value. Both CSVs are then rewritten.
- Temp files of interrupted CSV writes (``.<csv name>.facepipe-<16 hex>.tmp`` next to the
  CSV, pipelines/atomic.py) are removed; no other file is.

A CSV write that fails is answered by appending the decision's inverse to the journal, so the
journal, memory and the CSVs agree again (the decision did not happen). If that append fails
too, the decision stays in effect, as the journal says, and reaches the CSV at its next write
or start.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from pipelines import atomic, csv_rows
from pipelines.config import PreprocessConfig
from pipelines.review.findings import Findings
from pipelines.review.listing import Item, header_of, natural_key, read_csv_rows

log = logging.getLogger(__name__)

# The last three need --label_issues (suspects) or --quality_dir (quality outliers, duplicate groups).
FILTERS = ("all", "unlabelled", "overridden", "disagree", "suspects", "quality", "duplicates")
JOURNAL_HEADER = ["time", "action", "id", "field", "before", "after"]


class Decision(NamedTuple):
    """One change of one field: ``label`` (the override; None = none) or ``excluded`` (bool)."""

    id: str
    field: str
    before: int | bool | None
    after: int | bool | None


def read_id_csv(path: str, config: PreprocessConfig, *, with_label: bool) -> dict[str, int | None]:
    """An overrides (id,label) or exclusions (id) CSV as the pipeline parses it; the last row of an id wins."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return {}
    layout = csv_rows.id_csv_layout(path, header_of(path), config, with_label=with_label)
    rows, rejected = read_csv_rows(path, csv_rows.parse_id_row, layout)
    if rejected:
        details = "; ".join(r.detail for r in rejected[:3])
        raise SystemExit(
            f"error: {path}: {len(rejected)} rows the pipeline cannot read ({details}); fix or remove them"
        )
    return dict(rows)


def write_csv_atomic(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Writes a whole CSV through pipelines/atomic.py: a temp file beside it, fsynced, renamed over ``path``.

    The new file keeps the mode of the one it replaces; a new CSV gets the umask's, as with open().
    """
    with atomic.writing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


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


class Journal(NamedTuple):
    """The journal replayed: reviewed ids, the undo stack, and each decided (id, field)'s last value."""

    reviewed: set[str]
    undo: list[Decision]
    latest: dict[tuple[str, str], int | bool | None]
    last: Decision | None = None  # The last decision row (set or undo), as it changed the value.


def drop_torn_line(path: str, chunk: int = 4096) -> None:
    """Cuts off a journal's last line if a crash cut it short (no newline): its decision never took effect."""
    if not os.path.exists(path):
        return
    with open(path, "r+b") as f:
        end = position = f.seek(0, os.SEEK_END)
        while position > 0:  # Back to the last newline; even a cut row that parses may hold a cut value.
            position = max(0, position - chunk)
            f.seek(position)
            data = f.read(min(chunk, end - position))
            if (newline := data.rfind(b"\n")) >= 0:
                position += newline + 1
                break
        if position == end:
            return
        log.warning("%s: its last line was cut short (a crash?) and is dropped: %r", path, data[-80:])
        f.truncate(position)
        f.flush()
        os.fsync(f.fileno())


def read_journal(path: str) -> Journal:
    """Replays the journal's rows in order."""
    journal = Journal(set(), [], {})
    last = None
    if not os.path.exists(path):
        return journal
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            try:
                action, image_id, field = row["action"], row["id"], row["field"]
                if action in ("set", "undo"):
                    if field not in ("label", "excluded"):
                        raise ValueError(field)
                    decision = Decision(image_id, field, _decode(field, row["before"]), _decode(field, row["after"]))
                    journal.latest[(image_id, field)] = decision.after
                    last = decision
                    if action == "set":
                        journal.undo.append(decision)
                    elif journal.undo:
                        journal.undo.pop()
            except (KeyError, TypeError, ValueError):
                log.warning("%s: unreadable journal row %s skipped", path, row)
                continue
            journal.reviewed.add(image_id)
    return journal._replace(last=last)


class ReviewStore:
    """The review's state (overrides, exclusions, reviewed ids, undo history) and its files.

    Every change is appended to the journal, then rewrites the CSV it touches (module docstring);
    a failed write leaves the state as it was and raises OSError.
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
        findings: Findings | None = None,
    ):
        self.items = items
        self.classes = config.classes
        self.probabilities = probabilities or {}
        self.findings = findings or Findings.empty()
        self._group_of = {m: n for n, group in enumerate(self.findings.groups) for m in group.members}
        self._overrides_csv, self._exclude_csv, self._journal = overrides_csv, exclude_csv, journal
        self._id_column, self._label_column = config.id_column, config.label_column
        self._lock = threading.Lock()
        # Rows of ids not in the index are kept: they may be another folder's decisions.
        self.overrides: dict[str, int] = read_id_csv(overrides_csv, config, with_label=True)  # type: ignore[assignment]
        self.excluded: dict[str, None] = dict.fromkeys(read_id_csv(exclude_csv, config, with_label=False))
        drop_torn_line(journal)
        replayed = read_journal(journal)
        self.reviewed, self._undo = replayed.reviewed, replayed.undo
        self._replay(replayed.latest, replayed.last)
        self.reviewed |= set(self.overrides) | set(self.excluded)
        for path in (overrides_csv, exclude_csv):
            if removed := atomic.remove_leftovers(path):
                log.info("%s: removed %d temp files of interrupted writes", path, removed)
        self._save("label")
        self._save("excluded")
        if not os.path.exists(journal) or os.path.getsize(journal) == 0:
            append_rows(journal, [JOURNAL_HEADER])

    def _replay(self, latest: dict[tuple[str, str], int | bool | None], last: Decision | None) -> None:
        """Restores the journal's last decision where a crash kept it from the CSV; adopts hand edits.

        See the module docstring: only the last decision can be missing from its CSV, and only
        as the value it replaced; every other difference is a person's edit, journalled as theirs.
        """
        adopted = []
        for (image_id, field), value in latest.items():
            current = self._get(image_id, field)
            if current == value:
                continue
            crashed = last is not None and (last.id, last.field) == (image_id, field) and current == last.before
            csv_path = self._overrides_csv if field == "label" else self._exclude_csv
            if crashed and os.path.exists(csv_path) and os.path.getmtime(csv_path) <= os.path.getmtime(self._journal):
                log.info(
                    "%s: restoring the last decision (%s of %s) a crash kept from its CSV",
                    self._journal,
                    field,
                    image_id,
                )
                self._set(image_id, field, value)
            else:
                adopted.append(Decision(image_id, field, value, current))
        if adopted:
            append_rows(self._journal, [_journal_row("set", decision) for decision in adopted])
            self._undo.extend(adopted)
            log.warning(
                "%d hand edits of %s or %s kept and adopted into the journal %s (undo reverts them): %s",
                len(adopted),
                self._overrides_csv,
                self._exclude_csv,
                self._journal,
                ", ".join(
                    f"{d.id} ({d.field} {_encode(d.before) or '-'} -> {_encode(d.after) or '-'})" for d in adopted[:10]
                ),
            )

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
                "suspect": self._suspect(image_id),
                "flags": list(self.findings.flags.get(image_id, ())),
                "duplicate": self._duplicate(image_id),
            }

    def _suspect(self, image_id: str) -> dict[str, Any] | None:
        suspect = self.findings.suspects.get(image_id)
        return None if suspect is None else suspect._asdict()

    def _duplicate(self, image_id: str) -> dict[str, Any] | None:
        """The image's duplicate group: its number in the filter, kind, leakage, the kept id and its split."""
        if image_id not in self._group_of:
            return None
        n = self._group_of[image_id]
        group = self.findings.groups[n]
        split = group.splits[group.members.index(image_id)]
        return {"group": n, "kind": group.kind, "leakage": group.leakage, "kept": group.kept, "split": split}

    def groups(self) -> list[dict[str, Any]]:
        """The duplicate groups in the order of the ``duplicates`` filter."""
        return [group._asdict() for group in self.findings.groups]

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
            if name == "suspects":
                return list(self.findings.suspects)
            if name == "quality":
                return list(self.findings.flags)
            if name == "duplicates":
                return [m for group in self.findings.groups for m in group.members]
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
            return self._relabel(image_id, 0 if current is None else (current + 1) % len(self.classes))

    def accept(self, image_id: str) -> Decision:
        """Gives a suspect its suggested label, as a flip would (KeyError: no suggestion for it)."""
        with self._lock:
            return self._relabel(image_id, self.findings.suspects[image_id].suggested)

    def _relabel(self, image_id: str, new: int) -> Decision:
        """The override that gives ``new``: none when it is the original label."""
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
        """Journal first, then the CSV; a failed CSV write is journalled back (module docstring)."""
        append_rows(self._journal, [_journal_row(action, decision)])
        self._set(decision.id, decision.field, decision.after)
        try:
            self._save(decision.field)
        except OSError as e:
            inverse = Decision(decision.id, decision.field, decision.after, decision.before)
            try:
                append_rows(self._journal, [_journal_row("set" if action == "undo" else "undo", inverse)])
            except OSError:
                self._record(decision, action)  # In effect, as the journal says.
                raise OSError(f"{e}; the decision stays (journal) and reaches the CSV at its next write") from e
            self._set(decision.id, decision.field, decision.before)
            raise
        self._record(decision, action)
        return decision

    def _record(self, decision: Decision, action: str) -> None:
        if action == "undo":
            self._undo.pop()
        else:
            self._undo.append(decision)
        self.reviewed.add(decision.id)

    def _get(self, image_id: str, field: str) -> int | bool | None:
        return self.overrides.get(image_id) if field == "label" else image_id in self.excluded

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


def _journal_row(action: str, decision: Decision) -> list[str]:
    return [_now(), action, decision.id, decision.field, _encode(decision.before), _encode(decision.after)]
