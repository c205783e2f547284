"""Labelled-first batches: the released TwoStreamBatchSampler's rule, seeded; collation; the loader."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import Dataset

from geocl.errors import GeoclError
from geocl.sampling.labelled_first import LabelledFirstBatchSampler, collate_labelled_first, labelled_first_loader

LABELLED = list(range(6))
UNLABELLED = list(range(6, 20))


def test_batches_put_labelled_indices_first_and_one_epoch_is_one_labelled_pass() -> None:
    sampler = LabelledFirstBatchSampler(LABELLED, UNLABELLED, batch_size=4, labelled_bs=2, seed=0)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 3
    for batch in batches:
        assert len(batch) == 4 and set(batch[:2]) <= set(LABELLED) and set(batch[2:]) <= set(UNLABELLED)
    assert sorted(i for batch in batches for i in batch[:2]) == LABELLED  # a pass: each labelled index once


def test_unlabelled_indices_run_through_shuffled_passes_across_epochs() -> None:
    sampler = LabelledFirstBatchSampler(LABELLED, UNLABELLED, batch_size=4, labelled_bs=2, seed=0)
    drawn = [i for _ in range(7) for batch in sampler for i in batch[2:]]  # 42 draws = 3 passes of 14
    for start in range(0, 42, 14):
        assert sorted(drawn[start : start + 14]) == UNLABELLED
    assert drawn[:14] != drawn[14:28]  # reshuffled


def test_orders_are_seeded() -> None:
    def epochs(seed: int) -> list[list[int]]:
        sampler = LabelledFirstBatchSampler(LABELLED, UNLABELLED, 4, 2, seed=seed)
        return [batch for _ in range(2) for batch in sampler]

    assert epochs(3) == epochs(3)
    assert epochs(3) != epochs(4)
    first, second = epochs(3)[:3], epochs(3)[3:]
    assert first != second  # epochs differ


def test_num_batches_fixes_the_epoch_and_labelled_passes_continue() -> None:
    sampler = LabelledFirstBatchSampler([0, 1, 2], [3, 4], batch_size=3, labelled_bs=2, num_batches=6, seed=1)
    batches = list(sampler)
    assert len(batches) == 6
    labelled = Counter(i for batch in batches for i in batch[:2])
    assert labelled == Counter({0: 4, 1: 4, 2: 4})  # 12 draws = 4 full passes over 3 indices
    assert all(len(set(batch)) == len(batch) for batch in batches)


def test_all_labelled_batches_need_no_unlabelled_data() -> None:
    batches = list(LabelledFirstBatchSampler(LABELLED, [], batch_size=3, labelled_bs=3, seed=0))
    assert len(batches) == 2 and sorted(i for b in batches for i in b) == LABELLED


def test_impossible_batches_are_clear_errors() -> None:
    with pytest.raises(GeoclError, match="only 1 labelled"):
        LabelledFirstBatchSampler([0], UNLABELLED, 4, 2)
    with pytest.raises(GeoclError, match="only 1 unlabelled"):
        LabelledFirstBatchSampler(LABELLED, [9], 4, 2)
    with pytest.raises(GeoclError, match="between 1 and batch_size"):
        LabelledFirstBatchSampler(LABELLED, UNLABELLED, 4, 0)
    with pytest.raises(GeoclError, match="at least 1"):
        LabelledFirstBatchSampler(LABELLED, UNLABELLED, 4, 2, num_batches=0)


def test_collate_stacks_images_of_all_and_masks_of_the_labelled() -> None:
    samples = [
        {"image": torch.full((1, 2, 2), float(i)), "mask": torch.full((2, 2), i), "crs": "EPSG:1"} for i in range(2)
    ] + [{"image": torch.full((1, 2, 2), 9.0)}]
    batch = collate_labelled_first(samples)
    assert set(batch) == {"image", "mask"}
    assert batch["image"].shape == (3, 1, 2, 2) and batch["mask"].shape == (2, 2, 2)
    assert batch["mask"][:, 0, 0].tolist() == [0, 1] and batch["image"][:, 0, 0, 0].tolist() == [0.0, 1.0, 9.0]
    assert "mask" not in collate_labelled_first(samples[2:])
    with pytest.raises(ValueError, match="first"):
        collate_labelled_first(samples[::-1])


class Tagged(Dataset):
    """Samples whose image value tells the dataset and index; masks on request."""

    def __init__(self, count: int, offset: float, with_mask: bool) -> None:
        self.count, self.offset, self.with_mask = count, offset, with_mask

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = {"image": torch.full((1, 4, 4), self.offset + index)}
        if self.with_mask:
            sample["mask"] = torch.full((4, 4), index, dtype=torch.long)
        return sample


def test_loader_draws_labelled_first_from_two_datasets() -> None:
    labelled, unlabelled = Tagged(4, 0.0, True), Tagged(5, 100.0, True)  # the unlabelled masks must be dropped
    loader = labelled_first_loader(labelled, unlabelled, batch_size=3, labelled_bs=2, num_batches=5, seed=0)
    batches = list(loader)
    assert len(batches) == 5
    for batch in batches:
        values = batch["image"][:, 0, 0, 0]
        assert batch["mask"].shape == (2, 4, 4)
        assert (values[:2] < 100).all() and (values[2:] >= 100).all()
        assert batch["mask"][:, 0, 0].tolist() == values[:2].long().tolist()
    only = list(labelled_first_loader(labelled, None, batch_size=2, labelled_bs=2, seed=0))
    assert len(only) == 2 and all(b["image"].shape[0] == 2 for b in only)
