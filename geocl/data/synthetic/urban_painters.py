"""Painters of the urban scene: the street grid, and the city blocks with what stands in them.

The painters add objects to a :class:`~geocl.data.synthetic.urban_plan.Plan`, in frame
metres (see :mod:`~geocl.data.synthetic.urban_plan`).

The layout follows the two ISPRS 2D labelling cities:

* **streets** (:func:`lay_out_streets`): a grid of carriageways (5-14 m) with sidewalks,
  some with grass verges and street trees, cars parked along the kerbs and driving, a
  dashed centre line and zebra crossings;
* **blocks** between the streets, each of one type (:data:`BLOCK_TYPES`): Potsdam-like
  perimeter blocks of 12-21 m high buildings around a courtyard with lawn, trees,
  garages and parking; Vaihingen-like detached houses with pitched roofs in gardens;
  commercial halls with parking lots; parks with groves, paths, ponds and playgrounds;
  yards with containers, material piles, trucks and sheds.

Each block planner draws from the scene's one generator, so the order of the calls is
part of the scene.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import shapely

from geocl.data.synthetic.classes import BUILDING, CLUTTER, IMPERVIOUS, LOW_VEGETATION
from geocl.data.synthetic.spectra import brightness
from geocl.data.synthetic.urban_plan import (
    BUILDINGS,
    CLUTTER_LAYER,
    GROUND,
    HALF_PI,
    MARKINGS,
    Plan,
    building,
    car,
    clutter_item,
    ground_spectrum,
    rect_ring,
    tree,
)
from geocl.data.synthetic.urban_spectra import CLUTTER_MATERIALS, FLAT_ROOF_P, MARKING, ROOF_MATERIALS, clutter, pick

#: Block types and their probabilities (the five types first go to the five largest blocks).
BLOCK_TYPES: tuple[str, ...] = ("perimeter", "houses", "commercial", "park", "yard")
BLOCK_P = np.array([0.34, 0.30, 0.14, 0.12, 0.10])


# ------------------------------------------------------------------ streets


@dataclass(frozen=True)
class Street:
    """One street of the grid.

    Attributes:
        axis: 0 for a street along v at u = position, 1 for one along u at v = position.
        position: frame coordinate of the centre line, m.
        start, stop: extent along the street, m.
        carriage: carriageway width, m.
        verge: grass verge width on each side (0 = none), m.
        sidewalk: sidewalk width on each side, m.
    """

    axis: int
    position: float
    start: float
    stop: float
    carriage: float
    verge: float
    sidewalk: float

    @property
    def half(self) -> float:
        """Half-width of the whole corridor, m."""
        return self.carriage / 2 + self.verge + self.sidewalk

    def point(self, along: float, across: float) -> tuple[float, float]:
        """Frame point at *along* the street and *across* from its centre line."""
        if self.axis == 0:
            return self.position + across, along
        return along, self.position + across

    def strip(self, a0: float, a1: float, lo: float, hi: float) -> tuple[float, float, float, float]:
        """Frame box (u0, u1, v0, v1) from *a0* to *a1* along and *lo* to *hi* across."""
        if self.axis == 0:
            return self.position + lo, self.position + hi, a0, a1
        return a0, a1, self.position + lo, self.position + hi

    @property
    def angle(self) -> float:
        """Frame angle of the street direction."""
        return HALF_PI if self.axis == 0 else 0.0


def _span(p: tuple[float, float], q: tuple[float, float]) -> tuple[float, float, float, float]:
    """``(u0, u1, v0, v1)`` of the frame-aligned box with opposite corners ``p`` and ``q``."""
    return min(p[0], q[0]), max(p[0], q[0]), min(p[1], q[1]), max(p[1], q[1])


def _grid_lines(rng: np.random.Generator, reach: float) -> np.ndarray:
    """Street centre-line positions from -reach to reach, 55-110 m apart."""
    lines = [-reach - float(rng.uniform(0, 80))]
    while lines[-1] < reach:
        lines.append(lines[-1] + float(rng.uniform(55, 110)))
    return np.array(lines)


def _street_profile(rng: np.random.Generator) -> tuple[float, float, float]:
    """(carriage, verge, sidewalk) widths in m of a main, ordinary or narrow street."""
    kind = rng.choice(3, p=[0.25, 0.55, 0.2])
    carriage = float(rng.uniform(*((11, 14), (7, 9.5), (5, 6.5))[kind]))
    verge = float(rng.uniform(2, 3.5)) if rng.uniform() < (0.7, 0.4, 0.1)[kind] else 0.0
    return carriage, verge, float(rng.uniform(2, 4))


def lay_out_streets(plan: Plan) -> tuple[np.ndarray, np.ndarray, list[Street], np.ndarray]:
    """Lay out the street grid and what lies on the streets.

    Streets along v run across the whole scene; streets along u join neighbouring
    ones, each segment present with probability 0.75, so that some blocks merge.

    Returns:
        ``(us, vs, streets, present)``: the u and v centre-line positions, all streets
        (along-v ones first), and which u-running segment is present, shape
        (len(us) - 1, len(vs)).
    """
    rng = plan.rng
    reach = plan.frame.reach
    us, vs = _grid_lines(rng, reach), _grid_lines(rng, reach)
    streets: list[Street] = []
    for u in us:
        streets.append(Street(0, float(u), -reach, reach, *_street_profile(rng)))
    present = rng.uniform(size=(len(us) - 1, len(vs))) < 0.75
    v_profiles = [_street_profile(rng) for _ in vs]
    for i in range(len(us) - 1):
        for j, v in enumerate(vs):
            if present[i, j]:
                streets.append(Street(1, float(v), float(us[i]), float(us[i + 1]), *v_profiles[j]))
    crossings = {k: _crossings(s, streets) for k, s in enumerate(streets)}

    for s in streets:  # sidewalks (paving), then verges, then carriageways on top
        plan.box(
            *s.strip(s.start, s.stop, -s.half, s.half),
            layer=GROUND,
            cls=IMPERVIOUS,
            spectrum=ground_spectrum(plan, IMPERVIOUS),
        )
    for k, s in enumerate(streets):
        if s.verge <= 0:
            continue
        for a0, a1 in _between(s, crossings[k]):
            for sign in (-1.0, 1.0):
                lo = s.carriage / 2 if sign > 0 else -s.carriage / 2 - s.verge
                plan.box(
                    *s.strip(a0, a1, lo, lo + s.verge),
                    layer=GROUND,
                    cls=LOW_VEGETATION,
                    spectrum=ground_spectrum(plan, LOW_VEGETATION),
                )
    for s in streets:
        extra = 0.0 if s.axis == 0 else 1.0  # along-u segments reach into the crossing
        plan.box(
            *s.strip(s.start - extra, s.stop + extra, -s.carriage / 2, s.carriage / 2),
            layer=GROUND,
            cls=IMPERVIOUS,
            spectrum=ground_spectrum(plan, IMPERVIOUS, "road"),
        )
    for k, s in enumerate(streets):
        _street_furniture(plan, s, crossings[k])
    return us, vs, streets, present


def _crossings(street: Street, streets: list[Street]) -> list[tuple[float, float]]:
    """(position along *street*, corridor half-width) of the streets crossing or joining it."""
    out = []
    for other in streets:
        if other.axis == street.axis:
            continue
        if other.start - 1 <= street.position <= other.stop + 1 and street.start <= other.position <= street.stop:
            out.append((other.position, other.half))
    return sorted(out)


def _between(street: Street, crossings: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Stretches of *street* between its crossings, as (start, stop) along it."""
    cuts = [(street.start, 0.0), *crossings, (street.stop, 0.0)]
    out = []
    for (a, ha), (b, hb) in zip(cuts[:-1], cuts[1:], strict=True):
        if b - hb - (a + ha) > 1.0:
            out.append((a + ha, b - hb))
    return out


def _street_furniture(plan: Plan, s: Street, crossings: list[tuple[float, float]]) -> None:
    """Parked and driving cars, the centre line, zebra crossings, street trees and bins."""
    rng = plan.rng
    for a0, a1 in _between(s, crossings):
        # cars parked along both kerbs (parallel parking)
        occupancy = float(rng.uniform(0.45, 0.9))
        for sign in (-1.0, 1.0):
            if s.carriage < 6.5 and sign > 0:
                continue  # narrow streets park on one side
            t = a0 + 4.0 + float(rng.uniform(0, 3))
            while t < a1 - 7.0:
                if rng.uniform() < occupancy:
                    u, v = s.point(t + 2.5, sign * (s.carriage / 2 - 1.15))
                    car(plan, u, v, s.angle + float(rng.normal(0, 0.02)))
                    t += 5.2 + float(rng.uniform(0.4, 2.5))
                else:
                    t += float(rng.uniform(4, 9))
        # a few driving cars
        for _ in range(int(rng.poisson((a1 - a0) / 60.0)) if a1 - a0 > 8 else 0):
            lane = (s.carriage / 4 if s.carriage >= 9 else 0.0) * (1 if rng.uniform() < 0.5 else -1)
            u, v = s.point(float(rng.uniform(a0 + 3, a1 - 3)), lane)
            car(plan, u, v, s.angle + float(rng.normal(0, 0.01)))
        # dashed centre line
        if s.carriage >= 7:
            t = a0 + float(rng.uniform(0, 6))
            while t < a1 - 3:
                u, v = s.point(t + 1.5, 0.0)
                plan.rect(
                    u,
                    v,
                    3.0,
                    0.25,
                    s.angle,
                    layer=MARKINGS,
                    cls=IMPERVIOUS,
                    spectrum=MARKING * brightness(rng, 1, 0.05, 0.02)[0],
                )
                t += 9.0
        # zebra crossing at the start of the stretch
        if rng.uniform() < 0.3 and a1 - a0 > 20:
            for k in range(int(s.carriage / 1.0)):
                u, v = s.point(a0 + 2.0, -s.carriage / 2 + 0.5 + k * 1.0)
                plan.rect(u, v, 3.5, 0.5, s.angle, layer=MARKINGS, cls=IMPERVIOUS, spectrum=MARKING)
        # street trees in the verge or in tree pits on the sidewalk
        pits = s.verge == 0 and rng.uniform() < 0.35
        if s.verge > 0 or pits:
            spacing = float(rng.uniform(8, 15))
            for sign in (-1.0, 1.0):
                across = s.carriage / 2 + (s.verge / 2 if s.verge > 0 else s.sidewalk * 0.3)
                t = a0 + float(rng.uniform(2, spacing))
                while t < a1 - 2:
                    if rng.uniform() < 0.85:
                        u, v = s.point(t, sign * across)
                        tree(plan, u, v, float(rng.uniform(2.5, 5.0)), float(rng.uniform(8, 18)))
                    t += spacing + float(rng.normal(0, 0.8))
        # bins, kiosks, bike racks on the sidewalk
        for _ in range(int(rng.poisson((a1 - a0) / 45.0))):
            sign = 1.0 if rng.uniform() < 0.5 else -1.0
            u, v = s.point(float(rng.uniform(a0, a1)), sign * (s.half - s.sidewalk * 0.3))
            size = float(rng.uniform(0.6, 2.5))
            clutter_item(plan, u, v, size, size * float(rng.uniform(0.4, 1.0)), s.angle, float(rng.uniform(0.8, 2.5)))


# ------------------------------------------------------------------ blocks


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


class _Occupied:
    """Frame-aligned boxes already taken in a block (buildings, parking), for rejection sampling."""

    def __init__(self) -> None:
        self.boxes: list[tuple[float, float, float, float]] = []

    def take(self, u: float, v: float, half_u: float, half_v: float) -> None:
        self.boxes.append((u - half_u, u + half_u, v - half_v, v + half_v))

    def free(self, u: float, v: float, half_u: float, half_v: float) -> bool:
        return not any(
            u + half_u > a0 and u - half_u < a1 and v + half_v > b0 and v - half_v < b1 for a0, a1, b0, b1 in self.boxes
        )


def _half_extent(length: float, width: float, angle: float) -> tuple[float, float]:
    """Half-extents along u and v of a rectangle at a frame-aligned *angle* (0 or pi/2)."""
    return (length / 2, width / 2) if abs(math.sin(angle)) < 0.5 else (width / 2, length / 2)


def _scatter_trees(
    plan: Plan,
    occ: _Occupied,
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


def _scatter_clutter(plan: Plan, occ: _Occupied, area: tuple[float, float, float, float], count: int) -> None:
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


def _parking_row(
    plan: Plan,
    occ: _Occupied,
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
    occ.take(u, v, *_half_extent(s1 - s0, 5.0, angle))


def _sections(
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


def _perimeter_block(plan: Plan, block: Block) -> None:
    """A Potsdam-like block: a ring of 12-21 m high buildings around a courtyard."""
    rng = plan.rng
    u0, u1, v0, v1 = block.area
    plan.box(*block.area, layer=GROUND, cls=LOW_VEGETATION, spectrum=ground_spectrum(plan, LOW_VEGETATION))
    front = float(rng.uniform(0, 3))
    depth = float(rng.uniform(10, 14))
    if front > 0.5:
        paved = ground_spectrum(plan, IMPERVIOUS)
        for k in range(4):
            at, length, angle = block.side(k)
            if rng.uniform() < 0.5:
                (a, b), (c, d) = at(0, 0), at(length, front)
                plan.box(*_span((a, b), (c, d)), layer=GROUND, cls=IMPERVIOUS, spectrum=paved)
    occ = _Occupied()
    inner = (u0 + front + depth, u1 - front - depth, v0 + front + depth, v1 - front - depth)
    if inner[1] - inner[0] < 6 or inner[3] - inner[2] < 6:  # too small for a courtyard: one building
        at, length, angle = block.side(0)
        depth = block.v1 - block.v0 - 2 * front
        _sections(plan, at, angle, front, length - front, front + depth / 2, depth, (12.0, 21.0))
        return
    base_h = float(rng.uniform(13, 19))
    for k in range(4):
        at, length, angle = block.side(k)
        s, end = front, length - front
        if k >= 2:
            s, end = front + depth, length - front - depth
        first = True
        while end - s > 4:
            seg = float(rng.uniform(12, 30))
            if end - (s + seg) < 8:
                seg = end - s
            if not first and end - s > 20 and rng.uniform() < 0.12:  # a gateway into the courtyard
                gap = float(rng.uniform(4, 7))
                (a, b), (c, d) = at(s, 0), at(s + gap, front + depth + 2)
                plan.box(
                    *_span((a, b), (c, d)), layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS)
                )
                s += gap
                continue
            u, v = at(s + seg / 2, front + depth / 2)
            pitched = rng.uniform() < 0.45
            building(plan, u, v, seg, depth, angle, base_h + float(rng.normal(0, 2)), pitched=pitched)
            s += seg
            first = False
    _courtyard(plan, occ, Block(*inner))


def _courtyard(plan: Plan, occ: _Occupied, yard: Block) -> None:
    """Lawn with parking, a row of garages, paths, trees and clutter."""
    rng = plan.rng
    sides = rng.permutation(4)
    if rng.uniform() < 0.5:  # a parking strip along one side
        at, length, angle = yard.side(int(sides[0]))
        (a, b), (c, d) = at(0, 0), at(length, 6.0)
        plan.box(
            *_span((a, b), (c, d)), layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS, "road")
        )
        _parking_row(plan, occ, at, angle, 1.0, length - 1.0, 0.5, float(rng.uniform(0.4, 0.9)), rng.uniform() < 0.5)
    if rng.uniform() < 0.4:  # garages
        at, length, angle = yard.side(int(sides[1]))
        count = int(length * float(rng.uniform(0.3, 0.8)) / 3.2)
        start = float(rng.uniform(1, max(1, length - count * 3.2 - 1)))
        roof = pick(rng, ROOF_MATERIALS, FLAT_ROOF_P, 1, sd=0.06)[0]
        for g in range(count):
            u, v = at(start + 1.6 + g * 3.2, 3.2)
            plan.rect(
                u,
                v,
                3.0,
                6.0,
                angle + HALF_PI,
                layer=BUILDINGS,
                cls=BUILDING,
                spectrum=roof * brightness(rng, 1, 0.03, 0.01)[0],
                height=2.7,
            )
            occ.take(u, v, *_half_extent(3.0, 6.0, angle + HALF_PI))
            if rng.uniform() < 0.3:  # a car in front of the garage
                cu, cv = at(start + 1.6 + g * 3.2, 9.2)
                car(plan, cu, cv, angle + HALF_PI)
    if rng.uniform() < 0.6:  # a paved path across
        at, length, angle = yard.side(int(sides[2]))
        s = float(rng.uniform(0.2, 0.8)) * length
        width = float(rng.uniform(1.5, 3.5))
        (a, b), (c, d) = at(s - width / 2, 0), at(s + width / 2, 200.0)
        box = (max(min(a, c), yard.u0), min(max(a, c), yard.u1), max(min(b, d), yard.v0), min(max(b, d), yard.v1))
        plan.box(*box, layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS))
    area = (yard.u1 - yard.u0) * (yard.v1 - yard.v0)
    _scatter_trees(plan, occ, yard.area, int(area / float(rng.uniform(90, 250))) + 1, (2.0, 6.0), (6.0, 18.0))
    if rng.uniform() < 0.3:  # a sandpit or playground
        u, v = (
            float(rng.uniform(yard.u0 + 3, max(yard.u0 + 3, yard.u1 - 3))),
            float(rng.uniform(yard.v0 + 3, max(yard.v0 + 3, yard.v1 - 3))),
        )
        plan.blob(
            u,
            v,
            float(rng.uniform(1.5, 3.5)),
            wobble=0.15,
            layer=CLUTTER_LAYER,
            cls=CLUTTER,
            spectrum=CLUTTER_MATERIALS[2] * brightness(rng, 1, 0.08, 0.03)[0],
        )
    _scatter_clutter(plan, occ, yard.area, int(rng.integers(1, 5)))


def _houses_block(plan: Plan, block: Block) -> None:
    """A Vaihingen-like block: detached houses with pitched roofs in gardens, facing one or two streets."""
    rng = plan.rng
    u0, u1, v0, v1 = block.area
    plan.box(*block.area, layer=GROUND, cls=LOW_VEGETATION, spectrum=ground_spectrum(plan, LOW_VEGETATION))
    long_u = (u1 - u0) >= (v1 - v0)
    short = min(u1 - u0, v1 - v0)
    sides = (0, 1) if long_u else (2, 3)
    if short < 36:
        sides = sides[:1]
    lot_depth = min(short / len(sides), 40.0)
    occ = _Occupied()
    for k in sides:
        at, length, angle = block.side(k)
        s = float(rng.uniform(0, 4))
        while length - s > 12:
            width = min(float(rng.uniform(14, 24)), length - s)
            _house_lot(plan, occ, at, angle, s, width, lot_depth)
            s += width
    if short > 2 * 40 + 4:  # inner lawn between the rows of lots
        at, length, angle = block.side(sides[0])
        (a, b), (c, d) = at(0, lot_depth), at(length, short - lot_depth)
        inner = _span((a, b), (c, d))
        _scatter_trees(
            plan, occ, inner, int((inner[1] - inner[0]) * (inner[3] - inner[2]) / 150), (2.5, 6.0), (8.0, 20.0)
        )


def _house_lot(
    plan: Plan,
    occ: _Occupied,
    at: Callable[[float, float], tuple[float, float]],
    angle: float,
    s: float,
    width: float,
    depth: float,
) -> None:
    """One garden lot *width* x *depth* m starting *s* m along a block side."""
    rng = plan.rng
    (a, b), (c, d) = at(s, 0), at(s + width, depth)
    lot = _span((a, b), (c, d))
    plan.box(*lot, layer=GROUND, cls=LOW_VEGETATION, spectrum=ground_spectrum(plan, LOW_VEGETATION))
    length = min(float(rng.uniform(9, 15)), width - 4.5)
    house_d = min(float(rng.uniform(8, 12)), depth * 0.45)
    setback = float(rng.uniform(3, 7))
    drive_left = rng.uniform() < 0.5
    hs = s + (width - length) / 2 + (1.5 if drive_left else -1.5)  # start of the house along the side
    if length > 5 and house_d > 5:
        u, v = at(hs + length / 2, setback + house_d / 2)
        building(plan, u, v, length, house_d, angle, float(rng.uniform(6, 10)), pitched=rng.uniform() < 0.85)
        occ.take(u, v, *_half_extent(length, house_d, angle))
    # driveway beside the house, with a car or a garage
    ds = s + 0.5 if drive_left else s + width - 3.5
    drive_len = setback + house_d * float(rng.uniform(0.6, 1.0))
    (a, b), (c, d) = at(ds, 0), at(ds + 3.0, drive_len)
    plan.box(*_span((a, b), (c, d)), layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS))
    if rng.uniform() < 0.55:
        u, v = at(ds + 1.5, 3.0)
        car(plan, u, v, angle + HALF_PI + float(rng.normal(0, 0.05)))
    if rng.uniform() < 0.35 and drive_len + 6.5 < depth:
        u, v = at(ds + 1.5, drive_len + 3.1)
        plan.rect(
            u,
            v,
            3.0,
            6.0,
            angle + HALF_PI,
            layer=BUILDINGS,
            cls=BUILDING,
            spectrum=pick(rng, ROOF_MATERIALS, FLAT_ROOF_P, 1)[0],
            height=2.8,
        )
        occ.take(u, v, *_half_extent(3.0, 6.0, angle + HALF_PI))
    back = setback + house_d
    if rng.uniform() < 0.5 and back + 4 < depth:  # terrace
        (a, b), (c, d) = at(hs + 1, back), at(hs + length * 0.7, back + float(rng.uniform(2.5, 4.5)))
        plan.box(*_span((a, b), (c, d)), layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS))
    garden = at(s + 1, back + 2), at(s + width - 1, depth - 1)
    (a, b), (c, d) = garden
    area = _span((a, b), (c, d))
    if area[1] - area[0] > 4 and area[3] - area[2] > 4:
        if rng.uniform() < 0.06:  # a pool
            u, v = float(rng.uniform(area[0] + 2, area[1] - 2)), float(rng.uniform(area[2] + 2, area[3] - 2))
            plan.rect(u, v, 6.0, 3.0, angle, layer=CLUTTER_LAYER, cls=CLUTTER, spectrum=CLUTTER_MATERIALS[6])
            occ.take(u, v, 3.0, 3.0)
        if rng.uniform() < 0.2:  # a garden shed
            u, v = float(rng.uniform(area[0] + 1.5, area[1] - 1.5)), float(rng.uniform(area[2] + 1.5, area[3] - 1.5))
            if occ.free(u, v, 1.5, 1.5):
                plan.rect(
                    u,
                    v,
                    2.5,
                    2.0,
                    angle,
                    layer=BUILDINGS,
                    cls=BUILDING,
                    spectrum=pick(rng, ROOF_MATERIALS, FLAT_ROOF_P, 1)[0],
                    height=2.2,
                )
                occ.take(u, v, 1.5, 1.5)
        if rng.uniform() < 0.2:  # vegetable beds (bare soil)
            u, v = float(rng.uniform(area[0] + 2, area[1] - 2)), float(rng.uniform(area[2] + 2, area[3] - 2))
            plan.rect(
                u,
                v,
                float(rng.uniform(2, 5)),
                float(rng.uniform(1.2, 3)),
                angle,
                layer=CLUTTER_LAYER,
                cls=CLUTTER,
                spectrum=CLUTTER_MATERIALS[0] * brightness(rng, 1, 0.1, 0.03)[0],
            )
        _scatter_trees(plan, occ, area, int(rng.integers(0, 5)), (1.5, 5.0), (4.0, 14.0))
        _scatter_clutter(plan, occ, area, int(rng.integers(0, 3)))


def _commercial_block(plan: Plan, block: Block) -> None:
    """A hall with a flat roof along one side and a parking lot around it."""
    rng = plan.rng
    plan.box(*block.area, layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS, "road"))
    occ = _Occupied()
    k = int(rng.integers(0, 4))
    at, length, angle = block.side(k)
    depth_total = (block.v1 - block.v0) if k < 2 else (block.u1 - block.u0)
    margin = float(rng.uniform(0, 4))
    if margin > 1.5:  # a green margin with trees
        for kk in range(4):
            at2, length2, angle2 = block.side(kk)
            (a, b), (c, d) = at2(0, 0), at2(length2, margin)
            strip = _span((a, b), (c, d))
            plan.box(*strip, layer=GROUND, cls=LOW_VEGETATION, spectrum=ground_spectrum(plan, LOW_VEGETATION))
            _scatter_trees(plan, occ, strip, int(length2 / float(rng.uniform(10, 30))), (2.0, 4.0), (6.0, 14.0))
    setback = margin + float(rng.uniform(2, 6))
    hall_d = max(12.0, float(rng.uniform(0.35, 0.6)) * depth_total)
    hall_l = float(rng.uniform(0.5, 0.9)) * length
    if hall_d + setback > depth_total - 8 or hall_l < 10:
        hall_d = max(6.0, depth_total - setback - 8)
    s_mid = float(rng.uniform(hall_l / 2 + margin, max(hall_l / 2 + margin, length - hall_l / 2 - margin)))
    _sections(plan, at, angle, s_mid - hall_l / 2, s_mid + hall_l / 2, setback + hall_d / 2, hall_d, (7.0, 14.0))
    u, v = at(s_mid, setback + hall_d / 2)
    occ.take(u, v, *_half_extent(hall_l, hall_d, angle))
    # loading area: trucks and containers beside the hall
    for _ in range(int(rng.integers(0, 3))):
        su = s_mid + (hall_l / 2 + 4) * (1 if rng.uniform() < 0.5 else -1)
        tu, tv = at(su, setback + float(rng.uniform(3, max(3.5, hall_d - 3))))
        if occ.free(tu, tv, 1.5, 6):
            clutter_item(plan, tu, tv, float(rng.uniform(8, 14)), 2.5, angle + HALF_PI, 3.5)
            occ.take(tu, tv, *_half_extent(12, 2.5, angle + HALF_PI))
    # parking rows in front of the hall, away from the hall side
    occupancy = float(rng.uniform(0.35, 0.9))
    lines = rng.uniform() < 0.6
    islands = rng.uniform() < 0.5
    d = setback + hall_d + 3.0
    while d + 5.0 <= depth_total - margin - 1:
        _parking_row(plan, occ, at, angle, margin + 2, length - margin - 2, d, occupancy, lines)
        d += 5.0
        if d + 5.0 <= depth_total - margin - 1:
            if islands and rng.uniform() < 0.5:
                (a, b), (c, dd) = at(margin + 2, d), at(length - margin - 2, d + 2.0)
                strip = (min(a, c), max(a, c), min(b, dd), max(b, dd))
                plan.box(*strip, layer=GROUND, cls=LOW_VEGETATION, spectrum=ground_spectrum(plan, LOW_VEGETATION))
                t = margin + 2 + float(rng.uniform(2, 8))
                while t < length - margin - 4:
                    tu, tv = at(t, d + 1.0)
                    tree(plan, tu, tv, float(rng.uniform(2, 4)), float(rng.uniform(6, 12)))
                    t += float(rng.uniform(8, 16))
                d += 2.0
            _parking_row(plan, occ, at, angle, margin + 2, length - margin - 2, d, occupancy, lines)
            d += 5.0 + 6.5  # the next row across an aisle
    _scatter_clutter(plan, occ, block.area, int(rng.integers(0, 6)))


def _park_block(plan: Plan, block: Block) -> None:
    """A park: lawn, groves and solitary trees, paths, a pond, a playground, benches."""
    rng = plan.rng
    u0, u1, v0, v1 = block.area
    plan.box(*block.area, layer=GROUND, cls=LOW_VEGETATION, spectrum=ground_spectrum(plan, LOW_VEGETATION))
    occ = _Occupied()
    for _ in range(int(rng.integers(1, 4))):  # drier meadows
        plan.blob(
            float(rng.uniform(u0, u1)),
            float(rng.uniform(v0, v1)),
            float(rng.uniform(8, 25)),
            wobble=0.2,
            aspect=float(rng.uniform(0.5, 1)),
            angle=float(rng.uniform(0, math.pi)),
            clip=block.area,
            layer=GROUND,
            cls=LOW_VEGETATION,
            spectrum=ground_spectrum(plan, LOW_VEGETATION),
        )
    for _ in range(int(rng.integers(1, 4))):  # paths, straight or diagonal, clipped to the park
        width = float(rng.uniform(2, 4))
        ring = rect_ring(
            float(rng.uniform(u0, u1)), float(rng.uniform(v0, v1)), 400.0, width, float(rng.uniform(0, math.pi))
        )
        plan.clipped(ring, block.area, layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS))
    if rng.uniform() < 0.35:  # a pond
        r = float(rng.uniform(5, 12))
        u, v = float(rng.uniform(u0 + r, max(u0 + r, u1 - r))), float(rng.uniform(v0 + r, max(v0 + r, v1 - r)))
        plan.blob(
            u,
            v,
            r,
            wobble=0.25,
            aspect=float(rng.uniform(0.5, 1)),
            layer=CLUTTER_LAYER,
            cls=CLUTTER,
            spectrum=CLUTTER_MATERIALS[5] * brightness(rng, 1, 0.1, 0.04)[0],
        )
        occ.take(u, v, r, r)
    if rng.uniform() < 0.5:  # a playground: sand and play equipment
        size = float(rng.uniform(8, 16))
        u, v = (
            float(rng.uniform(u0 + size, max(u0 + size, u1 - size))),
            float(rng.uniform(v0 + size, max(v0 + size, v1 - size))),
        )
        plan.rect(
            u,
            v,
            size,
            size * float(rng.uniform(0.6, 1)),
            0.0,
            layer=CLUTTER_LAYER,
            cls=CLUTTER,
            spectrum=CLUTTER_MATERIALS[2] * brightness(rng, 1, 0.08, 0.03)[0],
        )
        _scatter_clutter(
            plan, _Occupied(), (u - size / 2, u + size / 2, v - size / 3, v + size / 3), int(rng.integers(2, 6))
        )
        occ.take(u, v, size / 2, size / 2)
    area = (u1 - u0) * (v1 - v0)
    for _ in range(int(rng.integers(2, 6))):  # groves of overlapping crowns
        cu, cv_ = float(rng.uniform(u0, u1)), float(rng.uniform(v0, v1))
        spread = float(rng.uniform(6, 18))
        for _ in range(int(rng.integers(4, 16))):
            r = float(rng.uniform(3, 7))
            u = float(np.clip(cu + rng.normal(0, spread), u0 + r / 2, u1 - r / 2))
            v = float(np.clip(cv_ + rng.normal(0, spread), v0 + r / 2, v1 - r / 2))
            if occ.free(u, v, r * 0.5, r * 0.5):
                tree(plan, u, v, r, float(rng.uniform(10, 22)))
    _scatter_trees(plan, occ, block.area, int(area / 700) + 1, (3.0, 7.0), (10.0, 22.0))
    _scatter_clutter(plan, occ, block.area, int(area / 400) + 1)


def _yard_block(plan: Plan, block: Block) -> None:
    """A building or industrial yard: bare ground, containers, material piles, trucks, sheds, cars."""
    rng = plan.rng
    u0, u1, v0, v1 = block.area
    plan.box(*block.area, layer=GROUND, cls=CLUTTER, spectrum=ground_spectrum(plan, CLUTTER))
    occ = _Occupied()
    for _ in range(int(rng.integers(1, 4))):  # concrete pads
        w, h = float(rng.uniform(10, 40)), float(rng.uniform(10, 40))
        u, v = float(rng.uniform(u0, u1)), float(rng.uniform(v0, v1))
        plan.box(
            max(u0, u - w / 2),
            min(u1, u + w / 2),
            max(v0, v - h / 2),
            min(v1, v + h / 2),
            layer=GROUND,
            cls=IMPERVIOUS,
            spectrum=ground_spectrum(plan, IMPERVIOUS),
        )
    for _ in range(int(rng.integers(1, 4))):  # weeds
        plan.blob(
            float(rng.uniform(u0, u1)),
            float(rng.uniform(v0, v1)),
            float(rng.uniform(3, 10)),
            wobble=0.25,
            clip=block.area,
            layer=GROUND,
            cls=LOW_VEGETATION,
            spectrum=ground_spectrum(plan, LOW_VEGETATION),
        )
    for _ in range(int(rng.integers(1, 3))):  # sheds and halls
        length, depth = float(rng.uniform(10, 35)), float(rng.uniform(8, 20))
        angle = 0.0 if rng.uniform() < 0.5 else HALF_PI
        hu, hv = _half_extent(length, depth, angle)
        if u1 - u0 > 2 * hu + 2 and v1 - v0 > 2 * hv + 2:
            u, v = float(rng.uniform(u0 + hu + 1, u1 - hu - 1)), float(rng.uniform(v0 + hv + 1, v1 - hv - 1))
            if occ.free(u, v, hu + 2, hv + 2):
                building(plan, u, v, length, depth, angle, float(rng.uniform(4, 9)), pitched=False)
                occ.take(u, v, hu + 2, hv + 2)
    for _ in range(int(rng.integers(1, 4))):  # rows of containers
        angle = 0.0 if rng.uniform() < 0.5 else HALF_PI
        u, v = float(rng.uniform(u0 + 8, max(u0 + 8, u1 - 8))), float(rng.uniform(v0 + 8, max(v0 + 8, v1 - 8)))
        length = 6.1 if rng.uniform() < 0.6 else 12.2
        for k in range(int(rng.integers(2, 7))):
            cu, cv_ = (u, v + k * 2.6) if angle == 0.0 else (u + k * 2.6, v)
            if occ.free(cu, cv_, *_half_extent(length, 2.44, angle)) and u0 < cu < u1 and v0 < cv_ < v1:
                clutter_item(plan, cu, cv_, length, 2.44, angle, 2.6)
                occ.take(cu, cv_, *_half_extent(length, 2.44, angle))
    for _ in range(int(rng.integers(2, 7))):  # material piles
        r = float(rng.uniform(2, 6))
        u, v = float(rng.uniform(u0 + r, max(u0 + r, u1 - r))), float(rng.uniform(v0 + r, max(v0 + r, v1 - r)))
        if occ.free(u, v, r, r):
            plan.blob(
                u,
                v,
                r,
                wobble=0.3,
                aspect=float(rng.uniform(0.5, 1)),
                angle=float(rng.uniform(0, math.pi)),
                layer=CLUTTER_LAYER,
                cls=CLUTTER,
                spectrum=clutter(rng, 1)[0],
                height=float(rng.uniform(1, 4)),
            )
            occ.take(u, v, r, r)
    for _ in range(int(rng.integers(0, 4))):  # trucks and machines
        u, v = float(rng.uniform(u0 + 6, max(u0 + 6, u1 - 6))), float(rng.uniform(v0 + 6, max(v0 + 6, v1 - 6)))
        angle = float(rng.uniform(0, math.pi))
        if occ.free(u, v, 6, 6):
            clutter_item(plan, u, v, float(rng.uniform(6, 14)), float(rng.uniform(2.4, 3.0)), angle, 3.5)
            occ.take(u, v, 6, 6)
    for _ in range(int(rng.integers(2, 9))):  # parked cars
        u, v = float(rng.uniform(u0 + 3, max(u0 + 3, u1 - 3))), float(rng.uniform(v0 + 3, max(v0 + 3, v1 - 3)))
        if occ.free(u, v, 2.6, 2.6):
            car(plan, u, v, float(rng.choice([0.0, HALF_PI])) + float(rng.normal(0, 0.1)))
            occ.take(u, v, 2.6, 2.6)
    _scatter_trees(plan, occ, block.area, int(rng.integers(0, 6)), (2.0, 5.0), (5.0, 14.0))
    _scatter_clutter(plan, occ, block.area, int((u1 - u0) * (v1 - v0) / 150))


_PLANNERS: dict[str, Callable[[Plan, Block], None]] = {
    "perimeter": _perimeter_block,
    "houses": _houses_block,
    "commercial": _commercial_block,
    "park": _park_block,
    "yard": _yard_block,
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
