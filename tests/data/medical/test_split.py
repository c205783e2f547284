"""Case splits: train/val/test and labelled/unlabelled by whole cases; a splits.json decides where given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geocl.data.medical.files import Case, VolumeHeader
from geocl.data.medical.split import labelled_subset, split_cases
from geocl.errors import GeoclError

HEADER = VolumeHeader((4, 4, 4), np.eye(4), (1.0, 1.0, 1.0))


def _cases(labelled: int, unlabelled: int = 0) -> list[Case]:
    return [
        Case(
            f"c{k:02d}",
            Path(f"images/c{k:02d}.nii.gz"),
            Path(f"labels/c{k:02d}.nii.gz") if k < labelled else None,
            HEADER,
        )
        for k in range(labelled + unlabelled)
    ]


def test_splits_are_disjoint_cover_every_case_and_test_only_labelled() -> None:
    cases = _cases(20, 5)
    splits = split_cases(cases, val_fraction=0.1, test_fraction=0.2)
    ids = [{case.id for case in part} for part in (splits.train, splits.val, splits.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set.union(*ids) == {case.id for case in cases}
    assert (len(ids[1]), len(ids[2])) == (2, 4)  # of the 20 labelled cases
    assert all(case.labelled for case in splits.val + splits.test)
    assert {f"c{k:02d}" for k in range(20, 25)} <= ids[0]  # unlabelled cases always train
    assert split_cases(cases, val_fraction=0.1) == splits  # a fixed draw: every run tests on the same cases


def test_few_cases_keep_one_for_training() -> None:
    splits = split_cases(_cases(3), val_fraction=0.5, test_fraction=0.5)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1, 1, 1)
    assert split_cases(_cases(2)).test == []


def test_splits_file_decides(tmp_path: Path) -> None:
    cases = _cases(4, 1)
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["c00", "c04"], "val": ["c01"], "test": ["c03", "c02"]}))
    splits = split_cases(cases, tmp_path)
    assert [c.id for c in splits.train] == ["c00", "c04"]
    assert [c.id for c in splits.test] == ["c02", "c03"]
    for bad, message in (
        ({"train": ["c00"], "test": ["c00"]}, "in train and in test"),
        ({"train": ["zz"]}, "does not hold"),
        ({"test": ["c04"]}, "unlabelled case 'c04' in test"),
        (["c00"], "JSON object"),
    ):
        (tmp_path / "splits.json").write_text(json.dumps(bad))
        with pytest.raises(GeoclError, match=message) as error:
            split_cases(cases, tmp_path)
        assert "splits.json" in str(error.value)


def test_labelled_subset_is_by_case_and_follows_the_tile_rule() -> None:
    train = _cases(10, 3)
    labelled, unlabelled = labelled_subset(train, 0.2, seed=0)
    assert len(labelled) == 2  # ceil(0.2 * 10 labelled cases)
    assert {c.id for c in labelled} | {c.id for c in unlabelled} == {c.id for c in train}
    assert not {c.id for c in labelled} & {c.id for c in unlabelled}
    assert all(case.labelled for case in labelled)
    assert labelled_subset(train, 0.2, seed=0) == (labelled, unlabelled)
    draws = {tuple(c.id for c in labelled_subset(train, 0.2, seed=s)[0]) for s in range(6)}
    assert len(draws) > 1  # the seed draws other cases
    assert len(labelled_subset(train, 0.01, seed=0)[0]) == 1  # at least one
    with pytest.raises(GeoclError, match=r"\(0, 1\]"):
        labelled_subset(train, 0.0, seed=0)
    with pytest.raises(GeoclError, match="no labelled train case"):
        labelled_subset(_cases(0, 2), 0.5, seed=0)
