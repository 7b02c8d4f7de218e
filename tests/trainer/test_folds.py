"""trainer/folds.py's held-out parts: stratified by group, and an ensemble member's rotated validation."""

from __future__ import annotations

import numpy as np
import pytest

from trainer import data, folds
from trainer.errors import DataError


def test_held_out_parts_are_whole_groups_drawn_from_every_stratum_and_cover_each_group_once():
    # 12 people in glasses and 24 without, 3 photos each; one person alone in a third stratum.
    people = [f"g{i}" for i in range(12)] + [f"n{i}" for i in range(24)]
    groups = np.repeat(people, 3).tolist() + ["solo"] * 2
    strata = np.array(["1" if g.startswith("g") else "0" if g.startswith("n") else "0,1" for g in groups])
    groups = np.array(groups)
    parts = [folds.held_out_part(groups, strata, 6, k) for k in range(6)]
    for held_out in parts:
        # Whole groups: no person is both held out and not.
        assert not set(groups[held_out]) & set(groups[~held_out])
        # Both strata in every part: 2 people in glasses and 4 without.
        assert len(set(groups[held_out & (strata == "1")])) == 2
        assert len(set(groups[held_out & (strata == "0")])) == 4
    # Every person of a stratum of two or more is held out exactly once over the parts; the lone one never.
    np.testing.assert_array_equal(np.sum(parts, axis=0), (groups != "solo").astype(int))
    # Parts wrap around, and the same input gives the same parts.
    np.testing.assert_array_equal(folds.held_out_part(groups, strata, 6, 7), parts[1])
    np.testing.assert_array_equal(folds.held_out_part(groups, strata, 6, 1), parts[1])


def test_label_strata_are_the_classes_a_group_holds():
    groups = np.array(["a", "a", "b", "c", "c"])
    labels = np.array([0, 1, 1, 0, 0])
    assert folds.label_strata(groups, labels).tolist() == ["0,1", "0,1", "1", "0", "0"]


def test_rotated_validation_splits_train_and_validation_again_and_never_reads_test(rgb_dir):
    data_dir = data.DataDir.read(rgb_dir)
    pooled = folds.read_examples(data_dir, splits=("train", "validation"))
    test_ids = set(folds.read_examples(data_dir, splits=("test",)).ids)
    validations = []
    for part in range(4):
        train, validation, summary = folds.rotated_validation(data_dir, part)
        # 64 pooled people (no --group_by: each image its own), 16 of them in the validation split: 4 parts.
        assert summary == {"part": part, "parts": 4, "train_examples": 48, "validation_examples": 16}
        assert set(train.ids) | set(validation.ids) == set(pooled.ids)
        assert not set(train.ids) & set(validation.ids) and not set(validation.ids) & test_ids
        assert {i.split("_")[1] for i in validation.ids} == {"no", "yes"}  # Both classes validate.
        validations.append(set(validation.ids))
    assert set.union(*validations) == set(pooled.ids) and sum(map(len, validations)) == len(pooled.ids)

    # The member's datasets read exactly its examples.
    common = dict(manifest=data_dir.manifest, tft_output=data_dir.tft_output, global_batch_size=8)
    ds = data.make_dataset(rgb_dir, "validation", training=False, with_metadata=True, subset=validation, **common)
    read = np.concatenate([batch["id"].numpy().astype(str) for batch in ds])
    assert sorted(read) == sorted(validation.ids)


def test_rotating_without_a_validation_split_is_a_data_error(make_data_dir):
    no_validation = make_data_dir(
        "novalidation", height=8, width=8, channels=1, n_per_class_split={"train": 4, "validation": 0, "test": 2}
    )
    with pytest.raises(DataError, match="no validation split to rotate"):
        folds.rotated_validation(data.DataDir.read(no_validation), 0)
