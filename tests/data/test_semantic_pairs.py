"""The SPPS pair dataset: ordinary items hold one image, semantic items two; views follow the sources."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import default_collate

from geocl.data.semantic_pairs import SemanticPairDataset, fixed_length_epoch, pair_views
from geocl.transforms import TwoViews


class _Base(torch.utils.data.Dataset):
    def __init__(self, n: int = 5) -> None:
        self.images = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 2, 4, 4).clone()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> dict:
        return {"image": self.images[item], "index": item, "bounds": torch.tensor([item, 0.0, item + 1, 1.0])}


PAIRS = torch.tensor([[0, 3], [3, 0], [1, 4], [4, 1]])


def test_ordinary_item_returns_one_image_and_semantic_item_two() -> None:
    base = _Base()
    dataset = SemanticPairDataset(base, PAIRS)
    assert len(dataset) == 5 + 4 and dataset.semantic_count == 4
    ordinary = dataset[2]
    assert ordinary["image_pair"] is ordinary["image"] and ordinary["pair_index"] == 2 and not ordinary["semantic"]
    semantic = dataset[5 + 2]  # pair (1, 4)
    assert semantic["semantic"] and semantic["index"] == 1 and semantic["pair_index"] == 4
    assert not torch.equal(semantic["image"], semantic["image_pair"])
    assert torch.equal(semantic["image"], base[1]["image"]) and torch.equal(semantic["image_pair"], base[4]["image"])
    assert torch.equal(semantic["bounds"], base[1]["bounds"])  # the first source's footprint
    with pytest.raises(IndexError):
        dataset[9]


def test_pairs_outside_the_dataset_are_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        SemanticPairDataset(_Base(3), PAIRS)


def test_views_come_from_image_and_image_pair_and_reduce_to_two_views_for_ordinary_items() -> None:
    dataset = SemanticPairDataset(_Base(), PAIRS)
    flip = TwoViews(lambda images: images + 0.5 * torch.rand(len(images), 1, 1, 1))
    ordinary = default_collate([dataset[i] for i in range(5)])
    torch.manual_seed(1)
    plain_a, plain_b = flip(ordinary["image"])
    torch.manual_seed(1)
    pair_a, pair_b = pair_views(flip, ordinary)
    assert torch.equal(plain_a, pair_a) and torch.equal(plain_b, pair_b)
    torch.manual_seed(1)
    bare_a, bare_b = pair_views(flip, {"image": ordinary["image"]})
    assert torch.equal(bare_a, plain_a) and torch.equal(bare_b, plain_b)

    semantic = default_collate([dataset[i] for i in range(5, 9)])
    view_a, view_b = pair_views(flip, semantic)
    # row i of view 1 comes from the first source, of view 2 from the partner (pixel value = image number)
    assert view_a[:, 0, 0, 0].floor().tolist() == [0.0, 3.0, 1.0, 4.0]
    assert view_b[:, 0, 0, 0].floor().tolist() == [3.0, 0.0, 4.0, 1.0]


def test_fixed_length_epoch_draws_distinct_items_as_a_function_of_the_seed() -> None:
    dataset = SemanticPairDataset(_Base(), PAIRS)
    base = len(dataset) - dataset.semantic_count
    epoch = fixed_length_epoch(dataset, 5, seed=7, semantic_fraction=0.4)
    assert len(epoch) == 5 and len(set(epoch.indices)) == 5 and max(epoch.indices) < len(dataset)
    assert sum(i >= base for i in epoch.indices) == 2  # 40 % of 5 items are semantic pairs
    assert epoch.indices == fixed_length_epoch(dataset, 5, seed=7, semantic_fraction=0.4).indices
    draws = {tuple(fixed_length_epoch(dataset, 5, seed=s, semantic_fraction=0.4).indices) for s in range(20)}
    assert len(draws) > 1
    # no semantic share: the plain epoch; more pairs asked for than mined: all of them
    assert fixed_length_epoch(dataset, base, seed=0, semantic_fraction=0.0).indices == list(range(base))
    every_pair = fixed_length_epoch(dataset, base, seed=0, semantic_fraction=1.0).indices
    assert [i for i in every_pair if i >= base] == list(range(base, len(dataset)))
    assert len(every_pair) == base
