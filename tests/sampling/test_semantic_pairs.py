"""SPPS semantic sampler: against a per-anchor loop, purity on separable classes, footprints, frozen embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geocl.errors import GeoclError
from geocl.sampling.semantic_pairs import (
    SemanticPairs,
    SemanticPairSampler,
    SPPSConfig,
    footprint_conflicts,
    mine_pairs,
)


def _two_classes(per_class: int = 40, dim: int = 16, noise: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    centres = torch.zeros(2, dim)
    centres[0, :8], centres[1, 8:] = 1.0, 1.0  # orthogonal class directions
    labels = torch.arange(2).repeat_interleave(per_class)
    embeddings = centres[labels] + noise * torch.randn(2 * per_class, dim, generator=generator)
    return embeddings, labels


def _grid_bounds(side: int, size: float = 10.0) -> torch.Tensor:
    """Footprints of side x side touching tiles of ``size`` map units."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    x, y = cols.flatten().double() * size, rows.flatten().double() * size
    return torch.stack([x, y, x + size, y + size], dim=1)


def naive_pairs(
    embeddings: torch.Tensor, k: int, s_min: float, bounds: torch.Tensor | None, buffer: float, mutual: bool
) -> set[tuple[int, int]]:
    """The selection rule anchor by anchor, in plain Python."""
    z = F.normalize(embeddings.double(), dim=1).tolist()
    n = len(z)
    chosen = set()
    for a in range(n):
        candidates = []
        for b in range(n):
            if b == a:
                continue
            if bounds is not None:
                ax0, ay0, ax1, ay1 = bounds[a].tolist()
                bx0, by0, bx1, by1 = bounds[b].tolist()
                gap_x, gap_y = max(bx0 - ax1, ax0 - bx1), max(by0 - ay1, ay0 - by1)
                overlapping = gap_x < 0 and gap_y < 0
                distance = (max(gap_x, 0) ** 2 + max(gap_y, 0) ** 2) ** 0.5
                if overlapping or distance < buffer:
                    continue
            candidates.append((sum(p * q for p, q in zip(z[a], z[b], strict=True)), b))
        candidates.sort(reverse=True)
        chosen |= {(a, b) for similarity, b in candidates[:k] if similarity >= s_min}
    if mutual:
        chosen = {(a, b) for a, b in chosen if (b, a) in chosen}
    return chosen | {(b, a) for a, b in chosen}


@pytest.mark.parametrize("mutual", [False, True])
def test_mined_pairs_equal_a_per_anchor_loop(mutual: bool) -> None:
    embeddings, _ = _two_classes()
    mined = mine_pairs(embeddings, k=3, min_similarity=0.6, mutual=mutual, block_size=7)  # 7: several ragged blocks
    assert set(map(tuple, mined.pairs.tolist())) == naive_pairs(embeddings, 3, 0.6, None, 0.0, mutual)
    assert len(mined) > 0


def test_pairs_are_pure_symmetric_thresholded_and_bounded_by_k() -> None:
    embeddings, labels = _two_classes()
    k, s_min = 2, 0.5
    mined = mine_pairs(embeddings, k=k, min_similarity=s_min)
    pairs = mined.pairs
    anchors = pairs[:, 0].unique()
    same = [(labels[mined.partners(a)] == labels[a]).all().item() for a in anchors.tolist()]
    assert len(anchors) >= 0.9 * len(embeddings)
    assert sum(same) >= 0.9 * len(anchors)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    ordered = set(map(tuple, pairs.tolist()))
    assert ordered == {(b, a) for a, b in ordered}
    assert (mined.similarity >= s_min).all()
    z = F.normalize(embeddings, dim=1)
    torch.testing.assert_close(mined.similarity, (z[pairs[:, 0]] * z[pairs[:, 1]]).sum(1))
    # each anchor chose at most k partners: every pair is among the top k of one of its ends
    ranks = (z @ z.T).fill_diagonal_(-2).argsort(dim=1, descending=True)[:, :k]
    for a, b in ordered:
        assert b in ranks[a] or a in ranks[b]
    mutual = mine_pairs(embeddings, k=k, min_similarity=s_min, mutual=True)
    assert torch.bincount(mutual.pairs[:, 0], minlength=len(embeddings)).max() <= k


def test_no_pair_passes_a_threshold_above_every_similarity() -> None:
    embeddings, _ = _two_classes()
    assert len(mine_pairs(embeddings, k=3, min_similarity=0.9999)) == 0


def test_footprint_conflicts_by_hand() -> None:
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    others = torch.tensor(
        [
            [5.0, 5.0, 15.0, 15.0],  # overlaps
            [10.0, 0.0, 20.0, 10.0],  # shares an edge: distance 0, no overlap
            [13.0, 14.0, 20.0, 20.0],  # diagonal gap (3, 4): distance 5
            [30.0, 0.0, 40.0, 10.0],  # 20 away
        ]
    )
    assert footprint_conflicts(anchor, others, 0.0).tolist() == [[True, False, False, False]]
    assert footprint_conflicts(anchor, others, 1.0).tolist() == [[True, True, False, False]]
    assert footprint_conflicts(anchor, others, 5.0).tolist() == [[True, True, False, False]]
    assert footprint_conflicts(anchor, others, 5.01).tolist() == [[True, True, True, False]]


def test_footprint_rule_removes_neighbours_that_would_otherwise_pair() -> None:
    side = 6
    bounds = _grid_bounds(side)
    centres = (bounds[:, :2] + bounds[:, 2:]) / 2
    # embedding varies smoothly in space: without the rule, the best partner is a neighbour
    angle = centres[:, 0].float() / 60 + centres[:, 1].float() / 25
    embeddings = torch.stack([torch.cos(angle), torch.sin(angle), torch.full_like(angle, 0.2)], dim=1)
    free = mine_pairs(embeddings, k=2, min_similarity=0.0)
    conflicts = footprint_conflicts(bounds, bounds, 10.5)
    assert any(conflicts[a, b] for a, b in free.pairs.tolist())
    kept = mine_pairs(embeddings, k=2, min_similarity=0.0, bounds=bounds, buffer=10.5, block_size=5)
    assert len(kept) > 0 and not any(conflicts[a, b] for a, b in kept.pairs.tolist())
    assert set(map(tuple, kept.pairs.tolist())) == naive_pairs(embeddings, 2, 0.0, bounds, 10.5, False)


class _Images(torch.utils.data.Dataset):
    def __init__(self, n: int, with_bounds: bool) -> None:
        self.images = torch.randn(n, 3, 20, 20, generator=torch.Generator().manual_seed(2))
        self.bounds = _grid_bounds(4)[:n] if with_bounds else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> dict:
        sample = {"image": self.images[item]}
        if self.bounds is not None:
            sample["bounds"] = self.bounds[item]
        return sample


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_embedding_is_frozen_eval_mode_and_deterministic() -> None:
    encoder = _encoder().train()
    running = encoder[1].running_mean.clone()
    dataset = _Images(10, with_bounds=True)
    sampler = SemanticPairSampler(SPPSConfig(enabled=True, batch_size=4), size=16)
    embeddings, bounds = sampler.embed(encoder, dataset)
    again, _ = SemanticPairSampler(SPPSConfig(enabled=True, batch_size=3), size=16).embed(encoder, dataset)
    assert embeddings.shape == (10, 8) and not embeddings.requires_grad
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(10))
    torch.testing.assert_close(embeddings, again)  # batch composition does not matter: eval-mode BN
    torch.testing.assert_close(encoder[1].running_mean, running)
    assert encoder.training and all(p.grad is None for p in encoder.parameters())
    torch.testing.assert_close(bounds, dataset.bounds)
    # un-augmented: the same as embedding each resized image alone
    encoder.eval()
    alone = F.interpolate(dataset.images[3:4], size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(embeddings[3], F.normalize(encoder(alone), dim=1)[0])


def test_images_without_footprints_skip_the_rule() -> None:
    _, bounds = SemanticPairSampler(SPPSConfig(enabled=True, batch_size=2)).embed(
        _encoder(), _Images(5, with_bounds=False)
    )
    assert bounds is None


def test_pairs_round_trip_through_csv(tmp_path: Path) -> None:
    mined = mine_pairs(_two_classes()[0], k=2, min_similarity=0.5)
    path = tmp_path / "spps" / "pairs_epoch001.csv"
    mined.save_csv(path, names=[f"tile{i}.tif" for i in range(80)])
    back = SemanticPairs.load_csv(path)
    assert torch.equal(back.pairs, mined.pairs) and torch.equal(back.similarity, mined.similarity)
    first = path.read_text().splitlines()[1].split(",")
    assert first[3] == f"tile{first[0]}.tif" and first[4] == f"tile{first[1]}.tif"


def test_mining_epochs_follow_warmup_checkpoint_and_refresh() -> None:
    once = SPPSConfig(enabled=True, warmup_epochs=2)
    assert [once.mining_epoch(e) for e in range(5)] == [None, None, 2, 2, 2]
    refreshed = SPPSConfig(enabled=True, warmup_epochs=1, refresh_epochs=2)
    assert [refreshed.mining_epoch(e) for e in range(6)] == [None, 1, 1, 3, 3, 5]
    assert SPPSConfig(enabled=True, warmup_epochs=3, checkpoint="x.ckpt").mining_epoch(0) == 0
    assert SPPSConfig(enabled=False).mining_epoch(7) is None


@pytest.mark.parametrize(
    ("spps", "key", "rule"),
    [
        ({"k": 0}, "method.spps.k", "must be at least 1"),
        ({"min_similarity": 1.5}, "method.spps.min_similarity", r"must be in \[-1, 1\]"),
        ({"buffer": -1.0}, "method.spps.buffer", "must be at least 0"),
    ],
)
def test_bad_spps_values_name_their_key(spps: dict, key: str, rule: str) -> None:
    from geocl.methods import SimCLR

    with pytest.raises(GeoclError, match=rule) as caught:
        SimCLR("resnet18", 4, spps=spps)
    assert caught.value.key == key
