"""Built-up blocks: Potsdam-like perimeter blocks around a courtyard, Vaihingen-like detached
houses in gardens, commercial halls with parking lots.
"""

from __future__ import annotations

from collections.abc import Callable

from geocl.data.synthetic.classes import BUILDING, CLUTTER, IMPERVIOUS, LOW_VEGETATION
from geocl.data.synthetic.spectra import brightness
from geocl.data.synthetic.urban_painters.lots import (
    Block,
    Occupied,
    half_extent,
    parking_row,
    scatter_clutter,
    scatter_trees,
    sections,
    span,
)
from geocl.data.synthetic.urban_plan import (
    BUILDINGS,
    CLUTTER_LAYER,
    GROUND,
    HALF_PI,
    Plan,
    building,
    car,
    clutter_item,
    ground_spectrum,
    tree,
)
from geocl.data.synthetic.urban_spectra import CLUTTER_MATERIALS, FLAT_ROOF_P, ROOF_MATERIALS, pick


def perimeter_block(plan: Plan, block: Block) -> None:
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
                plan.box(*span((a, b), (c, d)), layer=GROUND, cls=IMPERVIOUS, spectrum=paved)
    occ = Occupied()
    inner = (u0 + front + depth, u1 - front - depth, v0 + front + depth, v1 - front - depth)
    if inner[1] - inner[0] < 6 or inner[3] - inner[2] < 6:  # too small for a courtyard: one building
        at, length, angle = block.side(0)
        depth = block.v1 - block.v0 - 2 * front
        sections(plan, at, angle, front, length - front, front + depth / 2, depth, (12.0, 21.0))
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
                    *span((a, b), (c, d)), layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS)
                )
                s += gap
                continue
            u, v = at(s + seg / 2, front + depth / 2)
            pitched = rng.uniform() < 0.45
            building(plan, u, v, seg, depth, angle, base_h + float(rng.normal(0, 2)), pitched=pitched)
            s += seg
            first = False
    courtyard(plan, occ, Block(*inner))


def courtyard(plan: Plan, occ: Occupied, yard: Block) -> None:
    """Lawn with parking, a row of garages, paths, trees and clutter."""
    rng = plan.rng
    sides = rng.permutation(4)
    if rng.uniform() < 0.5:  # a parking strip along one side
        at, length, angle = yard.side(int(sides[0]))
        (a, b), (c, d) = at(0, 0), at(length, 6.0)
        plan.box(
            *span((a, b), (c, d)), layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS, "road")
        )
        parking_row(plan, occ, at, angle, 1.0, length - 1.0, 0.5, float(rng.uniform(0.4, 0.9)), rng.uniform() < 0.5)
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
            occ.take(u, v, *half_extent(3.0, 6.0, angle + HALF_PI))
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
    scatter_trees(plan, occ, yard.area, int(area / float(rng.uniform(90, 250))) + 1, (2.0, 6.0), (6.0, 18.0))
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
    scatter_clutter(plan, occ, yard.area, int(rng.integers(1, 5)))


def houses_block(plan: Plan, block: Block) -> None:
    """A Vaihingen-like block: detached houses with pitched roofs in gardens, facing one or two streets."""
    rng = plan.rng
    u0, u1, v0, v1 = block.area
    plan.box(*block.area, layer=GROUND, cls=LOW_VEGETATION, spectrum=ground_spectrum(plan, LOW_VEGETATION))
    long_u = (u1 - u0) >= (v1 - v0)
    short = min(u1 - u0, v1 - v0)
    sides: tuple[int, ...] = (0, 1) if long_u else (2, 3)
    if short < 36:
        sides = sides[:1]
    lot_depth = min(short / len(sides), 40.0)
    occ = Occupied()
    for k in sides:
        at, length, angle = block.side(k)
        s = float(rng.uniform(0, 4))
        while length - s > 12:
            width = min(float(rng.uniform(14, 24)), length - s)
            house_lot(plan, occ, at, angle, s, width, lot_depth)
            s += width
    if short > 2 * 40 + 4:  # inner lawn between the rows of lots
        at, length, angle = block.side(sides[0])
        (a, b), (c, d) = at(0, lot_depth), at(length, short - lot_depth)
        inner = span((a, b), (c, d))
        scatter_trees(
            plan, occ, inner, int((inner[1] - inner[0]) * (inner[3] - inner[2]) / 150), (2.5, 6.0), (8.0, 20.0)
        )


def house_lot(
    plan: Plan,
    occ: Occupied,
    at: Callable[[float, float], tuple[float, float]],
    angle: float,
    s: float,
    width: float,
    depth: float,
) -> None:
    """One garden lot *width* x *depth* m starting *s* m along a block side."""
    rng = plan.rng
    (a, b), (c, d) = at(s, 0), at(s + width, depth)
    lot = span((a, b), (c, d))
    plan.box(*lot, layer=GROUND, cls=LOW_VEGETATION, spectrum=ground_spectrum(plan, LOW_VEGETATION))
    length = min(float(rng.uniform(9, 15)), width - 4.5)
    house_d = min(float(rng.uniform(8, 12)), depth * 0.45)
    setback = float(rng.uniform(3, 7))
    drive_left = rng.uniform() < 0.5
    hs = s + (width - length) / 2 + (1.5 if drive_left else -1.5)  # start of the house along the side
    if length > 5 and house_d > 5:
        u, v = at(hs + length / 2, setback + house_d / 2)
        building(plan, u, v, length, house_d, angle, float(rng.uniform(6, 10)), pitched=rng.uniform() < 0.85)
        occ.take(u, v, *half_extent(length, house_d, angle))
    # driveway beside the house, with a car or a garage
    ds = s + 0.5 if drive_left else s + width - 3.5
    drive_len = setback + house_d * float(rng.uniform(0.6, 1.0))
    (a, b), (c, d) = at(ds, 0), at(ds + 3.0, drive_len)
    plan.box(*span((a, b), (c, d)), layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS))
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
        occ.take(u, v, *half_extent(3.0, 6.0, angle + HALF_PI))
    back = setback + house_d
    if rng.uniform() < 0.5 and back + 4 < depth:  # terrace
        (a, b), (c, d) = at(hs + 1, back), at(hs + length * 0.7, back + float(rng.uniform(2.5, 4.5)))
        plan.box(*span((a, b), (c, d)), layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS))
    garden = at(s + 1, back + 2), at(s + width - 1, depth - 1)
    (a, b), (c, d) = garden
    area = span((a, b), (c, d))
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
        scatter_trees(plan, occ, area, int(rng.integers(0, 5)), (1.5, 5.0), (4.0, 14.0))
        scatter_clutter(plan, occ, area, int(rng.integers(0, 3)))


def commercial_block(plan: Plan, block: Block) -> None:
    """A hall with a flat roof along one side and a parking lot around it."""
    rng = plan.rng
    plan.box(*block.area, layer=GROUND, cls=IMPERVIOUS, spectrum=ground_spectrum(plan, IMPERVIOUS, "road"))
    occ = Occupied()
    k = int(rng.integers(0, 4))
    at, length, angle = block.side(k)
    depth_total = (block.v1 - block.v0) if k < 2 else (block.u1 - block.u0)
    margin = float(rng.uniform(0, 4))
    if margin > 1.5:  # a green margin with trees
        for kk in range(4):
            at2, length2, angle2 = block.side(kk)
            (a, b), (c, d) = at2(0, 0), at2(length2, margin)
            strip = span((a, b), (c, d))
            plan.box(*strip, layer=GROUND, cls=LOW_VEGETATION, spectrum=ground_spectrum(plan, LOW_VEGETATION))
            scatter_trees(plan, occ, strip, int(length2 / float(rng.uniform(10, 30))), (2.0, 4.0), (6.0, 14.0))
    setback = margin + float(rng.uniform(2, 6))
    hall_d = max(12.0, float(rng.uniform(0.35, 0.6)) * depth_total)
    hall_l = float(rng.uniform(0.5, 0.9)) * length
    if hall_d + setback > depth_total - 8 or hall_l < 10:
        hall_d = max(6.0, depth_total - setback - 8)
    s_mid = float(rng.uniform(hall_l / 2 + margin, max(hall_l / 2 + margin, length - hall_l / 2 - margin)))
    sections(plan, at, angle, s_mid - hall_l / 2, s_mid + hall_l / 2, setback + hall_d / 2, hall_d, (7.0, 14.0))
    u, v = at(s_mid, setback + hall_d / 2)
    occ.take(u, v, *half_extent(hall_l, hall_d, angle))
    # loading area: trucks and containers beside the hall
    for _ in range(int(rng.integers(0, 3))):
        su = s_mid + (hall_l / 2 + 4) * (1 if rng.uniform() < 0.5 else -1)
        tu, tv = at(su, setback + float(rng.uniform(3, max(3.5, hall_d - 3))))
        if occ.free(tu, tv, 1.5, 6):
            clutter_item(plan, tu, tv, float(rng.uniform(8, 14)), 2.5, angle + HALF_PI, 3.5)
            occ.take(tu, tv, *half_extent(12, 2.5, angle + HALF_PI))
    # parking rows in front of the hall, away from the hall side
    occupancy = float(rng.uniform(0.35, 0.9))
    lines = rng.uniform() < 0.6
    islands = rng.uniform() < 0.5
    d = setback + hall_d + 3.0
    while d + 5.0 <= depth_total - margin - 1:
        parking_row(plan, occ, at, angle, margin + 2, length - margin - 2, d, occupancy, lines)
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
            parking_row(plan, occ, at, angle, margin + 2, length - margin - 2, d, occupancy, lines)
            d += 5.0 + 6.5  # the next row across an aisle
    scatter_clutter(plan, occ, block.area, int(rng.integers(0, 6)))
