"""What the block painters share: the block, the boxes taken in it, and the parts placed in
any block (trees, clutter, a parking row, a building complex in sections).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from geocl.data.synthetic.classes import IMPERVIOUS
from geocl.data.synthetic.urban_plan import HALF_PI, MARKINGS, Plan, building, car, clutter_item, tree
from geocl.data.synthetic.urban_spectra import MARKING


@dataclass(frozen=True)
class Block:
    """A city block between streets, in frame metres: [u0, u1] x [v0, v1]."""

    u0: float
    u1: float
    v0: float
    v1: float

    @property
    def area(self) -> tuple[float, float, float, float]:
        return self.u0, self.u1, self.v0, self.v1

    def side(self, k: int) -> tuple[Callable[[float, float], tuple[float, float]], float, float]:
        """Side *k* (0 v0, 1 v1, 2 u0, 3 u1): map (s along it, d inwards) -> frame point, its length and frame angle."""
        u0, u1, v0, v1 = self.area
        if k == 0:
            return (lambda s, d: (u0 + s, v0 + d)), u1 - u0, 0.0
        if k == 1:
            return (lambda s, d: (u0 + s, v1 - d)), u1 - u0, 0.0
        if k == 2:
            return (lambda s, d: (u0 + d, v0 + s)), v1 - v0, HALF_PI
        return (lambda s, d: (u1 - d, v0 + s)), v1 - v0, HALF_PI


class Occupied:
    """Frame-aligned boxes already taken in a block (buildings, parking), for rejection sampling."""

    def __init__(self) -> None:
        self.boxes: list[tuple[float, float, float, float]] = []

    def take(self, u: float, v: float, half_u: float, half_v: float) -> None:
        self.boxes.append((u - half_u, u + half_u, v - half_v, v + half_v))

    def free(self, u: float, v: float, half_u: float, half_v: float) -> bool:
        return not any(
            u + half_u > a0 and u - half_u < a1 and v + half_v > b0 and v - half_v < b1 for a0, a1, b0, b1 in self.boxes
        )


def span(p: tuple[float, float], q: tuple[float, float]) -> tuple[float, float, float, float]:
    """``(u0, u1, v0, v1)`` of the frame-aligned box with opposite corners ``p`` and ``q``."""
    return min(p[0], q[0]), max(p[0], q[0]), min(p[1], q[1]), max(p[1], q[1])


def half_extent(length: float, width: float, angle: float) -> tuple[float, float]:
    """Half-extents along u and v of a rectangle at a frame-aligned *angle* (0 or pi/2)."""
    return (length / 2, width / 2) if abs(math.sin(angle)) < 0.5 else (width / 2, length / 2)


def scatter_trees(
    plan: Plan,
    occ: Occupied,
    area: tuple[float, float, float, float],
    count: int,
    radius: tuple[float, float],
    height: tuple[float, float],
) -> None:
    """Up to *count* trees in *area*, their trunks clear of occupied boxes."""
    rng = plan.rng
    u0, u1, v0, v1 = area
    placed = 0
    for _ in range(4 * count):
        if placed >= count:
            break
        r = float(rng.uniform(*radius))
        if u1 - u0 < r or v1 - v0 < r:
            continue
        u, v = float(rng.uniform(u0 + 0.5 * r, u1 - 0.5 * r)), float(rng.uniform(v0 + 0.5 * r, v1 - 0.5 * r))
        if occ.free(u, v, 0.6 * r, 0.6 * r):
            tree(plan, u, v, r, float(rng.uniform(*height)))
            occ.take(u, v, 0.4 * r, 0.4 * r)
            placed += 1


def scatter_clutter(plan: Plan, occ: Occupied, area: tuple[float, float, float, float], count: int) -> None:
    """Up to *count* small clutter objects (0.5-3 m) in *area*, clear of occupied boxes."""
    rng = plan.rng
    u0, u1, v0, v1 = area
    for _ in range(count):
        size = float(rng.uniform(0.6, 3.0))
        u, v = float(rng.uniform(u0 + 1, max(u0 + 1, u1 - 1))), float(rng.uniform(v0 + 1, max(v0 + 1, v1 - 1)))
        if occ.free(u, v, size / 2, size / 2):
            clutter_item(
                plan,
                u,
                v,
                size,
                size * float(rng.uniform(0.3, 1.0)),
                float(rng.uniform(0, math.pi)),
                float(rng.uniform(0.3, 2.0)),
            )
            occ.take(u, v, size / 2, size / 2)


def parking_row(
    plan: Plan,
    occ: Occupied,
    at: Callable[[float, float], tuple[float, float]],
    angle: float,
    s0: float,
    s1: float,
    d: float,
    occupancy: float,
    lines: bool,
) -> None:
    """A row of perpendicular stalls (2.5 x 5 m) from *s0* to *s1* along a side, *d* m in from it."""
    rng = plan.rng
    t = s0
    while t + 2.5 <= s1:
        u, v = at(t + 1.25, d + 2.5)
        if occupancy > 0 and rng.uniform() < occupancy:
            car(plan, u, v, angle + HALF_PI + float(rng.normal(0, 0.04)))
        if lines:
            lu, lv = at(t, d + 2.5)
            plan.rect(lu, lv, 5.0, 0.2, angle + HALF_PI, layer=MARKINGS, cls=IMPERVIOUS, spectrum=MARKING)
        t += 2.5
    u, v = at((s0 + s1) / 2, d + 2.5)
    occ.take(u, v, *half_extent(s1 - s0, 5.0, angle))


def sections(
    plan: Plan,
    at: Callable[[float, float], tuple[float, float]],
    angle: float,
    s0: float,
    s1: float,
    d: float,
    depth: float,
    height: tuple[float, float],
) -> None:
    """A large flat-roofed building from *s0* to *s1* along a side, centred *d* m in: sections of 15-35 m.

    Each section has its own roof material and a height drawn from *height* (m), as the
    parts of a building complex; one roof over 100 m would weigh too much in the
    class statistics of a small scene.
    """
    rng = plan.rng
    s = s0
    while s1 - s > 1:
        length = float(rng.uniform(15, 35))
        if s1 - (s + length) < 10:
            length = s1 - s
        u, v = at(s + length / 2, d)
        building(plan, u, v, length, depth, angle, float(rng.uniform(*height)), pitched=False)
        s += length
