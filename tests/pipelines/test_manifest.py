"""The end-of-run summary."""

from __future__ import annotations

import json

from pipelines import features
from pipelines.manifest import summary_table


def _manifest(output_dir, rejected_rows: dict[str, int]) -> dict:
    return {
        "output_dir": str(output_dir),
        "classes": ["no", "yes"],
        "runner": "FnApiRunner",
        "elapsed_seconds": 2.0,
        "counts": {
            "images_seen": 4,
            "written_total": 4,
            "written": {split: {"0": 1, "1": 1} if split == "train" else {"0": 0, "1": 0} for split in features.SPLITS},
            "dead_letter": {},
            "dead_letter_total": 0,
            "rejected_rows": rejected_rows,
        },
    }


def test_the_summary_names_unknown_override_and_exclusion_ids(tmp_path):
    dead = tmp_path / features.DEAD_LETTER_DIR
    dead.mkdir()
    records = [("x9", "unknown_override_id"), ("404", "label_without_image")]
    records += [(f"o{i}", "unknown_override_id") for i in range(8, 0, -1)] + [("e1", "unknown_exclusion_id")]
    for n, chunk in enumerate((records[:4], records[4:])):
        (dead / f"dead_letter-0000{n}-of-00002.jsonl").write_text(
            "".join(json.dumps({"id": i, "reason": r, "is_image": False}) + "\n" for i, r in chunk)
        )
    manifest = _manifest(tmp_path, {"unknown_override_id": 9, "unknown_exclusion_id": 1, "label_without_image": 1})
    lines = summary_table(manifest).splitlines()
    assert "9 overrides name no listed image (a typo?): o1, o2, o3, o4, o5, ..." in lines
    assert "1 exclusions name no listed image (a typo?): e1" in lines


def test_the_summary_has_no_unknown_ids_line_when_there_are_none(tmp_path):
    assert "no listed image" not in summary_table(_manifest(tmp_path, {}))
