"""The city blocks between the streets, each planned by the painter of its type."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import shapely

from geocl.data.synthetic.urban_painters.built import commercial_block, houses_block, perimeter_block
from geocl.data.synthetic.urban_painters.grounds import park_block, yard_block
from geocl.data.synthetic.urban_painters.lots import Block
from geocl.data.synthetic.urban_painters.streets import Street
from geocl.data.synthetic.urban_plan import Plan

#: Block types and their probabilities (the five types first go to the five largest blocks).
BLOCK_TYPES: tuple[str, ...] = ("perimeter", "houses", "commercial", "park", "yard")
BLOCK_P = np.array([0.34, 0.30, 0.14, 0.12, 0.10])


_PLANNERS: dict[str, Callable[[Plan, Block], None]] = {
    "perimeter": perimeter_block,
    "houses": houses_block,
    "commercial": commercial_block,
    "park": park_block,
    "yard": yard_block,
}


def lay_out_blocks(plan: Plan, us: np.ndarray, vs: np.ndarray, streets: list[Street], present: np.ndarray) -> list[str]:
    """Fill the blocks between the streets that reach into the scene.

    The five block types go first to the five blocks with the most area inside the
    scene (in a random order), the others are drawn with :data:`BLOCK_P`; blocks
    are then planned in grid order.

    Returns:
        the type of each planned block.
    """
    rng = plan.rng
    half_u = {s.position: s.half for s in streets if s.axis == 0}
    v_halves: dict[tuple[int, int], float] = {}
    for s in streets:
        if s.axis == 1:
            i = int(np.searchsorted(us, s.start))
            v_halves[(i, int(np.searchsorted(vs, s.position)))] = s.half
    blocks: list[Block] = []
    n = plan.frame.n
    scene = shapely.box(0, 0, n, n)
    visible: list[float] = []
    for i in range(len(us) - 1):
        a = float(us[i] + half_u[float(us[i])])
        b = float(us[i + 1] - half_u[float(us[i + 1])])
        cuts = [j for j in range(len(vs)) if present[i, j]]
        edges = (
            [(-plan.frame.reach - 60, 0.0)]
            + [(float(vs[j]), v_halves[(i, j)]) for j in cuts]
            + [(plan.frame.reach + 60, 0.0)]
        )
        for (p, hp), (q, hq) in zip(edges[:-1], edges[1:], strict=True):
            block = Block(a, b, p + hp, q - hq)
            if block.u1 - block.u0 < 8 or block.v1 - block.v0 < 8:
                continue
            corners = plan.frame.to_px(
                np.array([[block.u0, block.v0], [block.u1, block.v0], [block.u1, block.v1], [block.u0, block.v1]])
            )
            seen = shapely.Polygon(corners).intersection(scene).area
            if seen > 0:
                blocks.append(block)
                visible.append(seen)
    kinds = list(rng.choice(len(BLOCK_TYPES), size=len(blocks), p=BLOCK_P))
    deck = rng.permutation(len(BLOCK_TYPES))
    for rank, index in enumerate(np.argsort(-np.array(visible), kind="stable")[: len(BLOCK_TYPES)]):
        kinds[int(index)] = int(deck[rank])
    names = [BLOCK_TYPES[k] for k in kinds]
    for block, name in zip(blocks, names, strict=True):
        _PLANNERS[name](plan, block)
    return names
