"""The street grid of the urban scene: carriageways, sidewalks and verges, and what lies on them
(parked and driving cars, markings, street trees, bins).

The painters add objects to a :class:`~geocl.data.synthetic.urban_plan.Plan`, in frame
metres; they draw from the scene's one generator, so the order of the calls is part of
the scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geocl.data.synthetic.classes import IMPERVIOUS, LOW_VEGETATION
from geocl.data.synthetic.spectra import brightness
from geocl.data.synthetic.urban_plan import GROUND, HALF_PI, MARKINGS, Plan, car, clutter_item, ground_spectrum, tree
from geocl.data.synthetic.urban_spectra import MARKING


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
