"""Dead letters: the record of every input the pipeline could not use, and why.

A dead letter is a plain dict, written one JSON object per line to ``dead_letter/``:
``{"id", "path", "stage", "reason", "detail", "is_image"}``. ``is_image`` tells records
about input images (they count in the manifest's accounting) from records about CSV rows.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam

DEAD_LETTER = "dead_letter"
# A copy of another image, dropped by --dedupe keep_one: intended, neither bad nor unusable.
NEAR_DUPLICATE = "near_duplicate"

# Reasons that mean "this input is broken"; --max_bad_fraction applies to these only.
# (Excluded, unlabelled and balanced-out images are intended, not bad.)
BAD_INPUT_REASONS = frozenset(
    {
        "zero_bytes",
        "not_an_image",
        "undecodable",
        "too_large",
        "read_error",
        "truncated",
        "corrupt_jpeg",
        "file_name_mismatch",
        "not_a_regular_file",  # A FIFO, socket or device named like an image (pipelines/paths.py).
        "dangling_link",  # A symbolic link to nothing.
    }
)
# Readable images the job cannot label or use; --max_unusable_fraction applies to these.
# (A Kaggle test.csv without labels makes some "unlabelled" images by design.)
UNUSABLE_REASONS = frozenset(
    {
        "no_label_row",
        "unlabelled",
        "bad_label",
        "bad_vector",
        "conflicting_labels",
        "conflicting_overrides",
        "unknown_class_folder",
        "duplicate_id",
        "too_small",
    }
)


def dead_letter(
    *, stage: str, reason: str, path: str = "", image_id: str = "", detail: str = "", is_image: bool = True
) -> beam.pvalue.TaggedOutput:
    """A dead-letter record, tagged for the ``dead_letter`` output of a DoFn."""
    record: dict[str, Any] = {
        "id": image_id,
        "path": path,
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "is_image": is_image,
    }
    return beam.pvalue.TaggedOutput(DEAD_LETTER, record)
