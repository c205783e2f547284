"""Open blocks: parks (groves, paths, ponds, playgrounds) and yards (containers, material
piles, trucks, sheds).
"""

from __future__ import annotations

import math

import numpy as np

from geocl.data.synthetic.classes import CLUTTER, IMPERVIOUS, LOW_VEGETATION
from geocl.data.synthetic.spectra import brightness
from geocl.data.synthetic.urban_painters.lots import Block, Occupied, half_extent, scatter_clutter, scatter_trees
from geocl.data.synthetic.urban_plan import (
    CLUTTER_LAYER,
    GROUND,
    HALF_PI,
    Plan,
    building,
    car,
    clutter_item,
    ground_spectrum,
    rect_ring,
    tree,
)
from geocl.data.synthetic.urban_spectra import CLUTTER_MATERIALS, clutter


def park_block(plan: Plan, block: Block) -> None:
    """A park: lawn, groves and solitary trees, paths, a pond, a playground, benches."""
    rng = plan.rng
    u0, u1, v0, v1 = block.area
    plan.box(*block.area, layer=GROUND, cls=LOW_VEGETATION, spectrum=ground_spectrum(plan, LOW_VEGETATION))
    occ = Occupied()
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
        scatter_clutter(
            plan, Occupied(), (u - size / 2, u + size / 2, v - size / 3, v + size / 3), int(rng.integers(2, 6))
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
    scatter_trees(plan, occ, block.area, int(area / 700) + 1, (3.0, 7.0), (10.0, 22.0))
    scatter_clutter(plan, occ, block.area, int(area / 400) + 1)


def yard_block(plan: Plan, block: Block) -> None:
    """A building or industrial yard: bare ground, containers, material piles, trucks, sheds, cars."""
    rng = plan.rng
    u0, u1, v0, v1 = block.area
    plan.box(*block.area, layer=GROUND, cls=CLUTTER, spectrum=ground_spectrum(plan, CLUTTER))
    occ = Occupied()
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
        hu, hv = half_extent(length, depth, angle)
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
            if occ.free(cu, cv_, *half_extent(length, 2.44, angle)) and u0 < cu < u1 and v0 < cv_ < v1:
                clutter_item(plan, cu, cv_, length, 2.44, angle, 2.6)
                occ.take(cu, cv_, *half_extent(length, 2.44, angle))
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
    scatter_trees(plan, occ, block.area, int(rng.integers(0, 6)), (2.0, 5.0), (5.0, 14.0))
    scatter_clutter(plan, occ, block.area, int((u1 - u0) * (v1 - v0) / 150))
