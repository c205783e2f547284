"""Splits of NIfTI cases: train/val/test and labelled/unlabelled, always by case.

A case is one patient's volume: its slices or patches are strongly correlated, so every
split here assigns whole cases, and a case's slices never lie on both sides of a split
(train and test, or labelled and unlabelled).

- :func:`split_cases`: train/val/test. A data folder's ``splits.json``
  (``{"train": [ids], "val": [ids], "test": [ids]}``, e.g. the 80/20 list of the
  left-atrium challenge) is taken as given; without one, the *labelled* cases are
  drawn apart with a fixed seed (``val_fraction`` and ``test_fraction`` of them, rounded,
  at least one each and at least one labelled case left to train when there are three or
  more), and unlabelled cases always train.
- :func:`labelled_subset`: the labelled share of the train cases for few-label and
  semi-supervised training (FBA's 20 % = 16 of 80 cases), the rest unlabelled. Same
  rule as the tile finetuning's label subsets: ``ceil(fraction * n)`` cases, at least one,
  drawn with the given seed, so that runs of one subset seed share their cases.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geocl.errors import GeoclError, InvalidInputError

if TYPE_CHECKING:
    from geocl.data.medical.files import Case

__all__ = ["SPLITS_FILE", "CaseSplits", "labelled_subset", "split_cases"]

#: A data folder's optional file of case splits.
SPLITS_FILE = "splits.json"
#: Share of the labelled cases held out for testing when the folder has no splits file.
TEST_FRACTION = 0.2
#: Seed of the default train/val/test draw (fixed: every run sees the same test cases).
SPLIT_SEED = 0


@dataclass(frozen=True)
class CaseSplits:
    """Cases by split, each in name order."""

    train: list[Case]
    val: list[Case]
    test: list[Case]

    def of(self, split: str) -> list[Case]:
        """The cases of ``"train"``, ``"val"`` or ``"test"``."""
        if split not in ("train", "val", "test"):
            raise InvalidInputError(f"unknown split {split!r}; choose from train, val, test", key="data.split")
        return list(getattr(self, split))


def split_cases(
    cases: Sequence[Case],
    root: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> CaseSplits:
    """Train, val and test cases.

    Args:
        cases: the cases of a data folder (:func:`~geocl.data.medical.files.find_cases`).
        root: the data folder; its ``splits.json``, when present, decides.
        val_fraction: share of the labelled cases for validation (no splits file).
        test_fraction: share of the labelled cases for testing (no splits file).
        seed: seed of the draw (no splits file).

    Raises:
        GeoclError: naming ``splits.json``: unreadable, a case named twice or unknown,
            an unlabelled case in val or test.
    """
    if root is not None and (Path(root) / SPLITS_FILE).is_file():
        return _read_splits(Path(root) / SPLITS_FILE, cases)
    labelled = [case for case in cases if case.labelled]
    order = np.random.default_rng(seed).permutation(len(labelled))
    n = len(labelled)
    n_test = min(max(1, round(test_fraction * n)), n - 2) if n >= 3 and test_fraction > 0 else 0
    n_val = min(max(1, round(val_fraction * n)), n - n_test - 1) if n >= 3 and val_fraction > 0 else 0
    test = {labelled[i].id for i in order[:n_test]}
    val = {labelled[i].id for i in order[n_test : n_test + n_val]}
    return CaseSplits(
        train=[case for case in cases if case.id not in test | val],
        val=[case for case in cases if case.id in val],
        test=[case for case in cases if case.id in test],
    )


def _read_splits(path: Path, cases: Sequence[Case]) -> CaseSplits:
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read the case splits: {exc}", path=path) from None
    if not isinstance(listed, dict) or not all(isinstance(listed.get(k, []), list) for k in ("train", "val", "test")):
        raise InvalidInputError('must be a JSON object {"train": [case ids], "val": [...], "test": [...]}', path=path)
    by_id = {case.id: case for case in cases}
    seen: dict[str, str] = {}
    splits: dict[str, list[Case]] = {}
    for split in ("train", "val", "test"):
        chosen = []
        for name in listed.get(split, []):
            name = str(name)
            if name in seen:
                raise InvalidInputError(
                    f"case {name!r} is in {seen[name]} and in {split}; a case belongs to one split", path=path
                )
            if name not in by_id:
                raise InvalidInputError(
                    f"names case {name!r} ({split}), which the data folder does not hold", path=path
                )
            if split != "train" and not by_id[name].labelled:
                raise InvalidInputError(
                    f"puts unlabelled case {name!r} in {split}; val and test need label maps", path=path
                )
            seen[name] = split
            chosen.append(by_id[name])
        splits[split] = sorted(chosen, key=lambda case: case.id)
    return CaseSplits(**splits)


def labelled_subset(train: Sequence[Case], fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """The labelled and the unlabelled train cases for a label fraction, by case.

    Args:
        train: the train cases; only labelled ones can be drawn as labelled.
        fraction: share of the labelled train cases that keep their labels, in (0, 1].
        seed: seed of the draw.

    Returns:
        ``(labelled, unlabelled)``, disjoint, covering ``train``, each in name order.

    Raises:
        GeoclError: a fraction outside (0, 1]; no labelled train case.
    """
    if not 0.0 < fraction <= 1.0:
        raise InvalidInputError(f"must be in (0, 1], got {fraction}", key="label_fraction")
    candidates = [case for case in train if case.labelled]
    if not candidates:
        raise GeoclError("no labelled train case: give the cases label maps", key="data.path")
    keep = max(1, math.ceil(fraction * len(candidates)))
    chosen = {candidates[i].id for i in np.random.default_rng(seed).permutation(len(candidates))[:keep]}
    return [case for case in train if case.id in chosen], [case for case in train if case.id not in chosen]
