"""Tests for geocl.data.block_splits: held-out blocks spread over the scene, classes stratified into test."""

from __future__ import annotations

import numpy as np
import pytest

from geocl.data.block_splits import draw_block_splits


def _quadrants(blocks: list[tuple[int, int]], side: int) -> set[tuple[bool, bool]]:
    return {(row < side / 2, col < side / 2) for row, col in blocks}


@pytest.mark.parametrize("seed", range(6))
def test_held_out_blocks_are_spread_over_the_scene(seed: int) -> None:
    """Without a mask, test (and val) blocks reach every quarter of an 8 x 8 block grid."""
    blocks = {(row, col): {} for row in range(8) for col in range(8)}
    split = draw_block_splits(blocks, (0.7, 0.15, 0.15), seed, stratify=False)
    test = [block for block, name in split.items() if name == "test"]
    val = [block for block, name in split.items() if name == "val"]
    assert len(test) == len(val) == round(0.15 * 64)
    assert len(_quadrants(test, 8)) == 4
    assert len(_quadrants(val, 8)) >= 3
    assert split == draw_block_splits(blocks, (0.7, 0.15, 0.15), seed, stratify=False)


@pytest.mark.parametrize("seed", range(6))
def test_stratified_split_puts_every_spread_class_in_test(seed: int) -> None:
    """A rare class held by 3 blocks of one corner still reaches test; train keeps it too."""
    rng = np.random.default_rng(seed)
    blocks = {
        (row, col): {1: int(rng.integers(500, 1000)), 2: int(rng.integers(0, 300))}
        for row in range(6)
        for col in range(6)
    }
    for block in [(0, 0), (0, 1), (1, 0)]:  # class 3: a corner only
        blocks[block][3] = 40
    blocks[(5, 5)][4] = 10  # class 4: one block, too few to promise anywhere
    split = draw_block_splits(blocks, (0.7, 0.15, 0.15), seed)
    holding = {value: {split[b] for b, counts in blocks.items() if counts.get(value)} for value in (1, 2, 3)}
    for value, splits in holding.items():
        assert "test" in splits, f"class {value} missing from test"
        assert "train" in splits, f"class {value} missing from train"
    assert sum(name == "test" for name in split.values()) == round(0.15 * 36)
    assert len(_quadrants([b for b, name in split.items() if name == "test"], 6)) >= 3


def test_stratified_test_shares_are_closer_to_the_scene_than_a_random_draw() -> None:
    """Class shares of the test blocks track the scene's better than uniformly drawn blocks do."""
    rng = np.random.default_rng(0)
    blocks = {
        (row, col): {
            1: int(rng.integers(0, 1000)) * (row < 4),
            2: int(rng.integers(0, 1000)),
            3: int(rng.integers(0, 200)) * (col > 5),
        }
        for row in range(8)
        for col in range(8)
    }
    scene = np.array([sum(counts[c] for counts in blocks.values()) for c in (1, 2, 3)], dtype=float)
    scene /= scene.sum()

    def distance(chosen: list[tuple[int, int]]) -> float:
        counts = np.array([sum(blocks[b][c] for b in chosen) for c in (1, 2, 3)], dtype=float)
        return float(np.abs(counts / counts.sum() - scene).sum())

    stratified = [
        distance([b for b, name in draw_block_splits(blocks, (0.7, 0.15, 0.15), seed).items() if name == "test"])
        for seed in range(10)
    ]
    keys = list(blocks)
    uniform = [distance([keys[i] for i in rng.permutation(64)[:10]]) for _ in range(200)]
    assert np.mean(stratified) < 0.5 * np.mean(uniform)
