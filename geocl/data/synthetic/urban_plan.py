"""The plan of the urban scene: its frame, its sun, and its objects as polygons with their attributes.

Everything is laid out in the street grid's frame, (u, v) metres from the scene centre
along the grid's two axes (the grid is rotated by a random angle), and collected in a
:class:`Plan`; :func:`~geocl.data.synthetic.urban.generate_urban` rasterises the plan
in one pass. Sizes are in metres: the urban scene is drawn for a 0.2 m pixel
(:data:`PX_PER_M` pixels a metre), so a car of 4.5 x 1.8 m is about 22 x 9 px.

The objects that the painters (:mod:`~geocl.data.synthetic.urban_painters`) place are
made here: :func:`tree`, :func:`car`, :func:`building` (with roof details),
:func:`clutter_item` and the spectra of ground areas (:func:`ground_spectrum`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NotRequired, TypedDict, Unpack

import numpy as np
import shapely

from geocl.data.synthetic.classes import BUILDING, CAR, CLUTTER, IMPERVIOUS, LOW_VEGETATION, TREE
from geocl.data.synthetic.spectra import brightness
from geocl.data.synthetic.urban_spectra import (
    CAR_P,
    CAR_PAINTS,
    CLUTTER_MATERIALS,
    FLAT_ROOF_P,
    GLASS,
    IMPERVIOUS_MATERIALS,
    PAVING_P,
    PITCHED_ROOF_P,
    ROAD_P,
    ROOF_MATERIALS,
    ROOFTOP_MATERIALS,
    TREE_GAIN,
    YARD_P,
    clutter,
    pick,
    vegetation,
)

#: Pixels per metre: the urban scene is drawn for a 0.2 m ground sampling distance.
PX_PER_M: float = 5.0
#: Vertices of every polygon ring (shorter rings repeat their last vertex).
RING: int = 24
_BLOB = 20  # vertices of a blob

# Layers, painted in this order: later layers cover earlier ones.
GROUND, MARKINGS, CLUTTER_LAYER, CARS, BUILDINGS, ROOFTOP, TREES = range(7)
# Shading styles: flat, pitched (gable) roof, tree crown (dome).
FLAT, GABLE, CROWN = range(3)

HALF_PI = math.pi / 2

#: Shading frame of an object: centre u, v (m), angle (frame radians), half-length,
#: half-width (m) and roof slope (rise over run).
Shape = tuple[float, float, float, float, float, float]
_NO_SHAPE: Shape = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class Attributes(TypedDict):
    """What an object of the plan is, besides its polygon.

    Attributes:
        layer: paint layer (:data:`GROUND` ... :data:`TREES`); later layers cover earlier ones.
        cls: class index (:data:`~geocl.data.synthetic.classes.URBAN_CLASS_NAMES`).
        spectrum: reflectance x 10000 on the six base bands, shape (6,).
        height: top above the ground, m (default 0).
        base: height of what it stands on, m (default 0; a chimney stands on its roof).
        style: shading style, :data:`FLAT` (default), :data:`GABLE` or :data:`CROWN`.
    """

    layer: int
    cls: int
    spectrum: np.ndarray
    height: NotRequired[float]
    base: NotRequired[float]
    style: NotRequired[int]


@dataclass(frozen=True)
class Sun:
    """Position of the sun.

    Attributes:
        azimuth: radians clockwise from north (the image's up).
        elevation: radians above the horizon.
    """

    azimuth: float
    elevation: float

    def vector(self) -> np.ndarray:
        """Unit vector towards the sun as (x east, y south = down the rows, z up), shape (3,)."""
        c = math.cos(self.elevation)
        return np.array(
            [math.sin(self.azimuth) * c, -math.cos(self.azimuth) * c, math.sin(self.elevation)], dtype=np.float32
        )

    def shadow(self, height: np.ndarray) -> np.ndarray:
        """Offset of the shadow of a point *height* metres high, in pixels, shape (..., 2) as (x, y)."""
        length = np.asarray(height, dtype=np.float64)[..., None] * (PX_PER_M / math.tan(self.elevation))
        return length * np.array([-math.sin(self.azimuth), math.cos(self.azimuth)])


@dataclass(frozen=True)
class Frame:
    """The street grid's frame: (u, v) metres from the scene centre along the rotated grid axes.

    Attributes:
        n: scene side, px.
        angle: rotation of the u axis from the x axis (columns), radians.
    """

    n: int
    angle: float

    def to_px(self, uv: np.ndarray) -> np.ndarray:
        """Pixel coordinates (x, y) of frame points *uv* (..., 2) in metres."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = uv[..., 0] * PX_PER_M, uv[..., 1] * PX_PER_M
        return np.stack([self.n / 2 + u * c - v * s, self.n / 2 + u * s + v * c], axis=-1)

    @property
    def reach(self) -> float:
        """Half-extent in metres of the frame area that covers the scene (plus a margin)."""
        c, s = abs(math.cos(self.angle)), abs(math.sin(self.angle))
        return self.n / 2 * (c + s) / PX_PER_M + 30.0


def rect_ring(u: float, v: float, length: float, width: float, angle: float) -> np.ndarray:
    """Corners (4, 2) of a rectangle centred on (u, v), *length* along *angle*."""
    c, s = math.cos(angle), math.sin(angle)
    a = (c * length / 2, s * length / 2)
    b = (-s * width / 2, c * width / 2)
    return np.array(
        [
            (u + a[0] + b[0], v + a[1] + b[1]),
            (u + a[0] - b[0], v + a[1] - b[1]),
            (u - a[0] - b[0], v - a[1] - b[1]),
            (u - a[0] + b[0], v - a[1] + b[1]),
        ]
    )


@dataclass
class Plan:
    """The urban scene's objects before rasterisation, in the order they were laid out.

    Each object is one polygon in frame metres with its class, spectrum (6 base bands),
    height above ground and height of what it stands on (m; a chimney stands on its
    roof), layer, shading style and the frame of its shading (centre, angle,
    half-length and half-width in metres; the roof pitch as a slope).

    Attributes:
        rng: the scene's one generator.
        frame: the street grid's frame.
    """

    rng: np.random.Generator
    frame: Frame
    rings: list[np.ndarray] = field(default_factory=list)
    layer: list[int] = field(default_factory=list)
    cls: list[int] = field(default_factory=list)
    spectra: list[np.ndarray] = field(default_factory=list)
    height: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    style: list[int] = field(default_factory=list)
    shape: list[Shape] = field(default_factory=list)

    def add(self, ring: np.ndarray, *, shape: Shape = _NO_SHAPE, **attrs: Unpack[Attributes]) -> None:
        """Add one object: *ring* (m, 2) in frame metres, m <= :data:`RING`, with its shading *shape*."""
        if len(ring) < RING:
            ring = np.concatenate([ring, np.repeat(ring[-1:], RING - len(ring), axis=0)])
        self.rings.append(ring)
        self.layer.append(attrs["layer"])
        self.cls.append(attrs["cls"])
        self.spectra.append(np.asarray(attrs["spectrum"], dtype=np.float32).reshape(6))
        self.height.append(attrs.get("height", 0.0))
        self.base.append(attrs.get("base", 0.0))
        self.style.append(attrs.get("style", FLAT))
        self.shape.append(shape)

    def rect(
        self,
        u: float,
        v: float,
        length: float,
        width: float,
        angle: float = 0.0,
        *,
        slope: float = 0.0,
        **attrs: Unpack[Attributes],
    ) -> None:
        """Add a rectangle centred on (u, v), *length* along *angle* (frame radians); *slope*: its roof pitch."""
        self.add(rect_ring(u, v, length, width, angle), shape=(u, v, angle, length / 2, width / 2, slope), **attrs)

    def box(self, u0: float, u1: float, v0: float, v1: float, **attrs: Unpack[Attributes]) -> None:
        """Add the frame-aligned rectangle [u0, u1] x [v0, v1] (nothing if it is empty)."""
        if u1 - u0 > 0.05 and v1 - v0 > 0.05:
            self.rect((u0 + u1) / 2, (v0 + v1) / 2, u1 - u0, v1 - v0, **attrs)

    def blob(
        self,
        u: float,
        v: float,
        radius: float,
        *,
        wobble: float,
        aspect: float = 1.0,
        angle: float = 0.0,
        clip: tuple[float, float, float, float] | None = None,
        **attrs: Unpack[Attributes],
    ) -> None:
        """Add an irregular ellipse of semi-axes *radius* and *radius* x *aspect*, clipped to the box *clip*.

        The outline wobbles by about *wobble* (relative) with three random harmonics.
        """
        t = np.arange(_BLOB) * (2 * math.pi / _BLOB)
        phase = self.rng.uniform(0, 2 * math.pi, 3)
        amp = self.rng.uniform(0.3, 1.0, 3) * wobble
        r = 1 + sum(amp[k] * np.sin((k + 2) * t + phase[k]) / (k + 1) for k in range(3))
        c, s = math.cos(angle), math.sin(angle)
        x, y = radius * r * np.cos(t), radius * aspect * r * np.sin(t)
        ring = np.stack([u + x * c - y * s, v + x * s + y * c], axis=1)
        shape = (u, v, angle, radius, radius * aspect, 0.0)
        if clip is None:
            self.add(ring, shape=shape, **attrs)
        else:
            self.clipped(ring, clip, shape=shape, **attrs)

    def clipped(
        self,
        ring: np.ndarray,
        area: tuple[float, float, float, float],
        *,
        shape: Shape = _NO_SHAPE,
        **attrs: Unpack[Attributes],
    ) -> None:
        """Add the part of polygon *ring* (m, 2) inside the frame-aligned *area* (u0, u1, v0, v1)."""
        u0, u1, v0, v1 = area
        part = shapely.clip_by_rect(shapely.Polygon(ring), u0, v0, u1, v1)
        if isinstance(part, shapely.Polygon) and not part.is_empty and part.area > 0.05:
            coords = np.asarray(part.exterior.coords)[:-1]
            if len(coords) <= RING:
                self.add(coords, shape=shape, **attrs)

    def __len__(self) -> int:
        return len(self.rings)


# ------------------------------------------------------------------ objects


def tree(plan: Plan, u: float, v: float, radius: float, height: float) -> None:
    """A tree crown of *radius* m (slightly irregular) whose top is *height* m high."""
    spectrum = vegetation(plan.rng, 1)[0] * TREE_GAIN
    plan.blob(
        u,
        v,
        radius,
        wobble=0.12,
        aspect=float(plan.rng.uniform(0.85, 1.0)),
        angle=float(plan.rng.uniform(0, math.pi)),
        layer=TREES,
        cls=TREE,
        spectrum=spectrum,
        height=height,
        style=CROWN,
    )


def car(plan: Plan, u: float, v: float, angle: float) -> None:
    """A car of 3.8-5.1 x 1.65-1.95 m centred on (u, v), its length along *angle*: body, windscreen, rear window."""
    rng = plan.rng
    length, width = float(rng.uniform(3.8, 5.1)), float(rng.uniform(1.65, 1.95))
    spectrum = pick(rng, CAR_PAINTS, CAR_P, 1, sd=0.06)[0]
    if rng.uniform() < 0.5:
        angle += math.pi  # the windscreen at either end
    plan.rect(u, v, length, width, angle, layer=CARS, cls=CAR, spectrum=spectrum, height=1.5)
    c, s = math.cos(angle), math.sin(angle)
    glass = GLASS * brightness(rng, 1, 0.1, 0.02)[0]
    for at, size in ((0.2, 0.2), (-0.3, 0.1)):  # windscreen ahead of the roof, rear window behind it
        plan.rect(
            u + at * length * c,
            v + at * length * s,
            size * length,
            0.85 * width,
            angle,
            layer=CARS,
            cls=CAR,
            spectrum=glass,
            height=1.5,
        )


def clutter_item(plan: Plan, u: float, v: float, length: float, width: float, angle: float, height: float) -> None:
    """A small clutter object (bin, bench, container, pallet, kiosk, truck) as a rectangle."""
    plan.rect(
        u, v, length, width, angle, layer=CLUTTER_LAYER, cls=CLUTTER, spectrum=clutter(plan.rng, 1)[0], height=height
    )


def building(
    plan: Plan, u: float, v: float, length: float, depth: float, angle: float, height: float, *, pitched: bool
) -> None:
    """A building of *length* x *depth* m with a flat or a pitched roof (ridge along its length) and roof details.

    The details (:func:`_pitched_roof_details`, :func:`_flat_roof_details`) are drawn after the
    building, from the scene's generator.
    """
    rng = plan.rng
    roof = pick(rng, ROOF_MATERIALS, PITCHED_ROOF_P if pitched else FLAT_ROOF_P, 1, sd=0.1)[0]
    slope = float(math.tan(math.radians(rng.uniform(30, 48)))) if pitched else 0.0
    plan.rect(
        u,
        v,
        length,
        depth,
        angle,
        slope=slope,
        layer=BUILDINGS,
        cls=BUILDING,
        spectrum=roof,
        height=height,
        style=GABLE if pitched else FLAT,
    )
    roof_frame = _RoofFrame(u, v, angle, length, depth, height)
    if pitched:
        _pitched_roof_details(plan, roof_frame)
    else:
        _flat_roof_details(plan, roof_frame)


@dataclass(frozen=True)
class _RoofFrame:
    """A building's roof: its centre (*u*, *v*) and *angle* in the frame, its *length* x *depth* and *height*, m."""

    u: float
    v: float
    angle: float
    length: float
    depth: float
    height: float

    def at(self, a: float, b: float) -> tuple[float, float]:
        """Frame point at *a* m along the building and *b* m across it, from its centre."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.u + a * c - b * s, self.v + a * s + b * c


def _pitched_roof_details(plan: Plan, roof: _RoofFrame) -> None:
    """Chimneys near the ridge, skylights on one side, sometimes solar panels on the other."""
    rng = plan.rng
    length, depth, angle, height = roof.length, roof.depth, roof.angle, roof.height
    for _ in range(int(rng.integers(0, 3))):  # chimneys, near the ridge
        x, y = roof.at(float(rng.uniform(-0.4, 0.4)) * length, float(rng.uniform(-0.15, 0.15)) * depth)
        size = float(rng.uniform(0.5, 0.9))
        plan.rect(
            x,
            y,
            size,
            size,
            angle,
            layer=ROOFTOP,
            cls=BUILDING,
            spectrum=ROOFTOP_MATERIALS[0] * brightness(rng, 1, 0.1, 0.03)[0],
            height=height + 1.0,
            base=height,
        )
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    for _ in range(int(rng.integers(0, 4))):  # skylights on one side
        x, y = roof.at(float(rng.uniform(-0.4, 0.4)) * length, side * float(rng.uniform(0.15, 0.35)) * depth)
        plan.rect(x, y, 1.0, 1.2, angle, layer=ROOFTOP, cls=BUILDING, spectrum=ROOFTOP_MATERIALS[1], height=height)
    if rng.uniform() < 0.2:  # solar panels on the other side
        x, y = roof.at(float(rng.uniform(-0.15, 0.15)) * length, -side * 0.25 * depth)
        plan.rect(
            x,
            y,
            float(rng.uniform(0.3, 0.7)) * length,
            0.35 * depth,
            angle,
            layer=ROOFTOP,
            cls=BUILDING,
            spectrum=ROOFTOP_MATERIALS[2] * brightness(rng, 1, 0.05, 0.02)[0],
            height=height,
        )


def _flat_roof_details(plan: Plan, roof: _RoofFrame) -> None:
    """HVAC units and hatches, and on a large roof sometimes rows of solar panels."""
    rng = plan.rng
    length, depth, angle, height = roof.length, roof.depth, roof.angle, roof.height
    area = length * depth
    for _ in range(int(rng.poisson(area / 220.0))):  # HVAC units and hatches
        x, y = roof.at(float(rng.uniform(-0.4, 0.4)) * length, float(rng.uniform(-0.4, 0.4)) * depth)
        size = float(rng.uniform(1.0, 3.0))
        plan.rect(
            x,
            y,
            size,
            size * float(rng.uniform(0.5, 1.0)),
            angle,
            layer=ROOFTOP,
            cls=BUILDING,
            spectrum=ROOFTOP_MATERIALS[3] * brightness(rng, 1, 0.12, 0.03)[0],
            height=height + float(rng.uniform(0.5, 2.0)),
            base=height,
        )
    if area > 150 and rng.uniform() < 0.25:  # rows of solar panels
        rows = int(rng.integers(2, 6))
        for k in range(rows):
            x, y = roof.at(0.0, (k - (rows - 1) / 2) * 2.6)
            if abs((k - (rows - 1) / 2) * 2.6) < depth / 2 - 1.5:
                plan.rect(
                    x,
                    y,
                    0.6 * length,
                    1.6,
                    angle,
                    layer=ROOFTOP,
                    cls=BUILDING,
                    spectrum=ROOFTOP_MATERIALS[2],
                    height=height + 0.5,
                    base=height,
                )


def ground_spectrum(plan: Plan, cls: int, kind: str = "") -> np.ndarray:
    """One spectrum for a ground area: lawn, road asphalt (*kind* "road"), paving, or yard soil (clutter)."""
    rng = plan.rng
    if cls == LOW_VEGETATION:
        return vegetation(rng, 1)[0]
    if cls == IMPERVIOUS:
        return pick(rng, IMPERVIOUS_MATERIALS, ROAD_P if kind == "road" else PAVING_P, 1)[0]
    return pick(rng, CLUTTER_MATERIALS, YARD_P, 1, sd=0.1)[0]
