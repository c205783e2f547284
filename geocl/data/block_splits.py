"""The split of each spatial block of a tile grid: train, val or test, spread over the scene.

:func:`draw_block_splits` gives every split block (``split_block`` px square, see
:class:`~geocl.data.tiler.TilingOptions`) one split, so train, val and test tiles come from
different places; :func:`~geocl.data.tiler.split_cells` maps the grid cells onto the blocks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: A grid cell or a split block: ``(row, col)``, row 0 at the top.
Cell = tuple[int, int]


#: A class is promised a place in the test split when its pixels lie in at least this
#: many split blocks: one each for train, val and test.
SPREAD_CLASS_BLOCKS = 3


def draw_block_splits(
    block_classes: dict[Cell, dict[int, int]],
    fractions: tuple[float, float, float],
    seed: int,
    *,
    stratify: bool = True,
) -> dict[Cell, str]:
    """Give every split block (``(block_row, block_col)``) a split, spread over the scene.

    The rule, so that a test split can carry a claim about the whole scene:

    1. **Spread.** The blocks are walked in serpentine order (left to right on even
       block rows, right to left on odd ones), so consecutive blocks are neighbours,
       and cut into ``n_val + n_test`` runs of near-equal length; each run gives one
       held-out block. Held-out runs alternate between test and val by an even
       (largest-remainder) sequence with a seeded phase, so both splits reach every
       part of the scene instead of one corner.
    2. **Stratify** (with class counts). Each run's block is then chosen among the run's
       blocks by coordinate ascent over the runs: the split's classes present first, then
       the L1 distance of its class shares to the scene's, the other runs' choices held
       fixed, sweeping until nothing changes. Without counts (no mask) the block of a run
       is a seeded draw.
    3. **Cover.** A class whose pixels lie in at least :data:`SPREAD_CLASS_BLOCKS`
       blocks but in no test block gets its largest train block moved to test, in
       exchange for the test block whose loss costs the test split no class (train
       keeps a block of the class, val is not touched).

    Every split with a fraction > 0 gets a block when there are 3 blocks or more.
    Deterministic for a seed.

    Args:
        block_classes: class -> pixel count of every block (empty dicts: no mask).
        fractions: shares of blocks for train, val and test.
        seed: seed of the phase and the within-run draws.
        stratify: use the class counts (steps 2 and 3).

    Returns:
        block -> ``"train"``, ``"val"`` or ``"test"``.
    """
    blocks = sorted(block_classes, key=lambda block: (block[0], block[1] if block[0] % 2 == 0 else -block[1]))
    n = len(blocks)
    _, val_fraction, test_fraction = fractions
    n_val, n_test = round(val_fraction * n), round(test_fraction * n)
    if n >= 3:  # every split gets a block when there are enough of them
        n_val = max(n_val, 1) if val_fraction > 0 else 0
        n_test = max(n_test, 1) if test_fraction > 0 else 0
    n_held = min(n_val + n_test, n)
    n_test = min(n_test, n_held)
    split = dict.fromkeys(blocks, "train")
    if n_held == 0:
        return split
    rng = np.random.default_rng(seed)
    phase = rng.random()
    run_splits = [
        "test" if math.floor((k + 1 + phase) * n_test / n_held) > math.floor((k + phase) * n_test / n_held) else "val"
        for k in range(n_held)
    ]
    classes = sorted({value for counts in block_classes.values() for value in counts})
    stratify = stratify and bool(classes)
    scene = np.array([sum(block_classes[b].get(c, 0) for b in blocks) for c in classes], dtype=float)
    scene_share = scene / scene.sum() if stratify else scene

    def vector(block: Cell) -> np.ndarray:
        return np.array([block_classes[block].get(c, 0) for c in classes], dtype=float)

    runs = [[blocks[i] for i in rng.permutation(run)] for run in np.array_split(np.arange(n), n_held)]
    chosen = [candidates[0] for candidates in runs]  # the seeded draw; stratified below
    if stratify:

        def score(counts: np.ndarray) -> tuple[int, float]:
            total = counts.sum()
            distance = float(np.abs(counts / total - scene_share).sum()) if total else 2.0
            return int(np.sum(counts > 0)), -distance

        # coordinate ascent: each run in turn takes the candidate that gives its split the
        # most classes, then shares closest to the scene's, the other runs' choices fixed;
        # a sweep that changes nothing ends it (a few sweeps in practice)
        for _ in range(10):
            changed = False
            for k, (candidates, name) in enumerate(zip(runs, run_splits, strict=True)):
                others = sum(
                    (vector(chosen[j]) for j, other in enumerate(run_splits) if other == name and j != k),
                    np.zeros(len(classes)),
                )
                best = max(candidates, key=lambda block: score(others + vector(block)))
                if score(others + vector(best)) > score(others + vector(chosen[k])):
                    chosen[k], changed = best, True
            if not changed:
                break
    for block, name in zip(chosen, run_splits, strict=True):
        split[block] = name
    if stratify:
        _cover_test_classes(split, blocks, classes, vector)
    return split


def _cover_test_classes(split: dict[Cell, str], blocks: list[Cell], classes: list[int], vector: Any) -> None:
    """Move a train block of each spread class missing from test into test (rule 3 above)."""
    holders = {c: [b for b in blocks if vector(b)[i] > 0] for i, c in enumerate(classes)}
    for i, value in enumerate(classes):
        if len(holders[value]) < SPREAD_CLASS_BLOCKS or any(split[b] == "test" for b in holders[value]):
            continue
        train_holders = [b for b in holders[value] if split[b] == "train"]
        if len(train_holders) < 2:  # train keeps at least one block of the class
            continue
        incoming = max(train_holders, key=lambda b: vector(b)[i])
        test_blocks = [b for b in blocks if split[b] == "test"]

        def classes_only_there(block: Cell) -> int:
            others = sum((vector(b) for b in test_blocks if b != block), np.zeros(len(classes)))  # noqa: B023 - called only within this iteration
            return int(np.sum((vector(block) > 0) & (others == 0)))

        outgoing = min(test_blocks, key=classes_only_there) if test_blocks else None
        if outgoing is not None and classes_only_there(outgoing) > 0:
            continue  # every test block holds a class no other one has: no free swap
        split[incoming] = "test"
        if outgoing is not None:
            split[outgoing] = "train"
