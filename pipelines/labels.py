"""The label rules, in plain Python: an image's id from its file name, and each id's one label.

The Beam sources (pipelines/sources.py) and the label review (pipelines/review/) both call
these, so the review shows exactly the labels and the reasons the pipeline would. An image
that cannot be used comes back as a :class:`~pipelines.records.Rejection`, the fields of its
dead letter. The CSV rows they decide from are pipelines/csv_rows.py's; the records
themselves pipelines/records.py's.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from pipelines.records import NO_LABEL, ImageFile, LabelledImage, LabelRow, Rejection

if TYPE_CHECKING:
    from pipelines.config import PreprocessConfig

# The outcomes of resolve_label that are counted, by the name of their counter.
COUNTED_OUTCOMES = ("overrides_applied", "excluded", "unlabelled", "labelled")


class Resolution(NamedTuple):
    """What one id comes to: its image (None when it has none) and its rejections, in order."""

    image: LabelledImage | None
    rejections: list[Rejection]
    outcome: str  # One of COUNTED_OUTCOMES, or "" when nothing is counted.
    audit_only: LabelledImage | None = None  # An unlabelled image (label NO_LABEL), for the audit.


# --- Ids from file names --------------------------------------------------------------------


def file_name_regex(file_pattern: str) -> re.Pattern[str]:
    """``face-{id}.png`` -> a regex whose group ``id`` captures the id from a file name.

    A pattern that ends at ``{id}`` (the default ``{id}``, or ``face-{id}``) accepts any
    extension: the id is the rest of the name without it.
    """
    before, found, after = file_pattern.partition("{id}")
    if not found:
        raise ValueError(f"--file_pattern {file_pattern!r} must contain '{{id}}'")
    ending = re.escape(after) if after else r"\.[^.]+"
    return re.compile("^" + re.escape(before) + "(?P<id>.+?)" + ending + "$", re.IGNORECASE)


class IdRule(NamedTuple):
    """How an image's id (and folder label and group) follow from its path."""

    regex: re.Pattern[str]
    class_folders: dict[str, int] | None
    group_by_stem: bool


def id_rule(config: PreprocessConfig) -> IdRule:
    """The id rule of a job's --file_pattern, --class_folders and --group_by."""
    return IdRule(file_name_regex(config.file_pattern), config.class_folders, config.group_by == "stem")


def key_image(path: str, size: int, rule: IdRule) -> tuple[str, ImageFile] | Rejection:
    """A listed file -> (id, (path, size, folder_label, group)), or why it has no id."""
    name = posixpath.basename(path.replace("\\", "/"))
    match = rule.regex.match(name)
    # Stripped as a CSV's id cells are: "a .png" is the image the row "a ,yes" labels.
    if not match or not match.group("id").strip():
        return Rejection(path=path, stage="list", reason="file_name_mismatch", detail=name)
    image_id, group = match.group("id").strip(), ""
    folder_label = None
    if rule.class_folders is not None:
        folder = posixpath.basename(posixpath.dirname(path.replace("\\", "/")))
        if folder not in rule.class_folders:
            return Rejection(path=path, image_id=image_id, stage="list", reason="unknown_class_folder", detail=folder)
        folder_label = rule.class_folders[folder]
        group = image_id if rule.group_by_stem else ""
        image_id = f"{folder}/{image_id}"
    return image_id, (path, size, folder_label, group)


# --- One id's label -------------------------------------------------------------------------


def resolve_label(
    image_id: str,
    images: Iterable[ImageFile],
    labels: Iterable[LabelRow],
    *,
    overrides: Iterable[int] = (),
    excluded: bool = False,
    with_vector: bool = False,
) -> Resolution:
    """Decides an id's fate: a label (override > folder > CSV) or rejections with a reason.

    ``images`` are the id's listed files (the first by path is used, the others are
    duplicates), ``labels`` its labels-CSV rows and ``overrides`` its override labels.
    ``with_vector`` (--numeric_columns): an image is written only with its rows' one vector,
    else it is a ``bad_vector``, whatever its label.
    """
    images = sorted(images)
    labels = list(labels)
    overrides = set(overrides)
    if not images:
        # Not an input image: a CSV row with no file. Report the overrides and exclusions
        # that name unknown ids, since they usually point at a typo in the reviewed CSV.
        rejections = []
        if overrides:
            rejections.append(
                Rejection(image_id=image_id, stage="overrides", reason="unknown_override_id", is_image=False)
            )
        if excluded:
            rejections.append(
                Rejection(image_id=image_id, stage="exclusions", reason="unknown_exclusion_id", is_image=False)
            )
        if labels:
            rejections.append(
                Rejection(image_id=image_id, stage="labels", reason="label_without_image", is_image=False)
            )
        return Resolution(None, rejections, "")
    (path, size, folder_label, group), duplicates = images[0], images[1:]
    rejections = [
        Rejection(path=dup_path, image_id=image_id, stage="labels", reason="duplicate_id", detail=path)
        for dup_path, *_ in duplicates
    ]
    source_split = next((row.source_split for row in labels if row.source_split), "")
    group = next((row.group for row in labels if row.group), group) or image_id

    def rejected(stage: str, reason: str, detail: str = "", outcome: str = "") -> Resolution:
        rejection = Rejection(path=path, image_id=image_id, stage=stage, reason=reason, detail=detail)
        return Resolution(None, [*rejections, rejection], outcome)

    vectors = {row.vector for row in labels if row.vector}
    vector = next(iter(vectors), b"")
    location = next((row.vector_location for row in labels if vector and row.vector == vector), None)

    def labelled(label: int, overridden: bool) -> Resolution:
        image = LabelledImage(image_id, path, size, label, group, source_split, overridden, vector, location)
        return Resolution(image, rejections, "overrides_applied" if overridden else "labelled")

    if excluded:
        return rejected("exclusions", "excluded", outcome="excluded")
    # An image with no labels-CSV row at all stays a no_label_row, unless a folder or an override labels it.
    if with_vector and (labels or overrides or folder_label is not None):
        vector_errors = sorted(row.vector_error for row in labels if row.vector_error)
        if vector_errors or len(vectors) != 1:
            detail = vector_errors[0] if vector_errors else "its rows disagree" if vectors else "no labels-CSV row"
            return rejected("labels", "bad_vector", detail)
    if len(overrides) > 1:
        return rejected("overrides", "conflicting_overrides", str(sorted(overrides)))
    if overrides:
        return labelled(overrides.pop(), True)
    if folder_label is not None:
        return labelled(folder_label, False)
    errors = [row.error for row in labels if row.error]
    values = {row.label for row in labels if row.label is not None}
    if errors:
        return rejected("labels", "bad_label", errors[0])
    if len(values) > 1:
        return rejected("labels", "conflicting_labels", str(sorted(values)))
    if not values:
        unlabelled = rejected("labels", "unlabelled" if labels else "no_label_row", outcome="unlabelled")
        image = LabelledImage(image_id, path, size, NO_LABEL, group, source_split, False)
        return unlabelled._replace(audit_only=image)
    return labelled(values.pop(), False)
