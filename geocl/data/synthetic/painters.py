"""Painters of the synthetic landscape: each lays out or paints one kind of object on the canvas.

:func:`~geocl.data.synthetic.render.generate` calls them in a fixed order (later
painters overwrite earlier ones: stands, farmland, forest and bare soil, open land in
settlements, water, then buildings, tracks and roads on top); each draws from the
canvas's one generator, so the order is part of the scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from geocl.data.synthetic.canvas import Canvas
from geocl.data.synthetic.classes import BARE_SOIL, BUILDINGS, CROPLAND, FOREST, GRASSLAND, N_CLASSES, ROADS, WATER
from geocl.data.synthetic.geometry import burn, edge_point, min_dist, rectangle, thick_line, voronoi, wander
from geocl.data.synthetic.noise import fbm, pow2, quantile
from geocl.data.synthetic.spectra import (
    ASPHALT,
    CLEAR_WATER,
    CONIFER,
    CROP_RIPE,
    CROP_SOIL,
    DRY_GRASS,
    GRAVEL,
    ROOF_P,
    ROOFS,
    SIGNATURES,
    TURBID_WATER,
    brightness,
)

_STANDS = 16  # quantisation levels of the natural "stand" field per class
_PARCEL_K = 64  # parcel index modulus per farm block


def add_natural_stands(cv: Canvas) -> None:
    """Objects 0 .. 7 x 16 - 1: 16 spectra per class for areas without objects of their own."""
    rng = cv.rng
    natural = np.empty((N_CLASSES, _STANDS, 6), dtype=np.float32)
    for c in range(N_CLASSES):
        natural[c] = SIGNATURES[c] * brightness(rng, _STANDS, 0.07, 0.03)
    conifer = rng.uniform(0.0, 1.0, size=(_STANDS, 1)).astype(np.float32) ** 2
    natural[FOREST] = natural[FOREST] * (1 - conifer) + CONIFER * conifer * brightness(rng, _STANDS, 0.05, 0.02)
    dry = rng.uniform(0.0, 0.6, size=(_STANDS, 1)).astype(np.float32) ** 2
    natural[GRASSLAND] = natural[GRASSLAND] * (1 - dry) + DRY_GRASS * dry
    first = cv.add(natural.reshape(-1, 6))
    assert first == 0


def _parcel_spectra(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random parcels: class, spectrum and row-texture amplitude.

    Cropland parcels are bare (just sown), green (vigour varies) or ripe; pastures
    are more or less dry grass; fallow parcels are bare soil.

    Returns:
        ``(classes, spectra, row_amplitude)`` of shapes (count,), (count, 6), (count,).
    """
    ptype = rng.choice(np.array([CROPLAND, GRASSLAND, BARE_SOIL], dtype=np.uint8), size=count, p=[0.7, 0.22, 0.08])
    stage = rng.choice(3, size=count, p=[0.1, 0.72, 0.18])[:, None]  # 0 bare, 1 green, 2 ripe
    vigour = rng.beta(4.0, 1.4, size=(count, 1)).astype(np.float32)
    early = rng.uniform(0.0, 0.45, size=(count, 1)).astype(np.float32)
    ripe = rng.uniform(0.5, 1.0, size=(count, 1)).astype(np.float32)
    crop = np.where(
        stage == 0,
        CROP_SOIL * (1 - early) + SIGNATURES[CROPLAND] * early,
        np.where(
            stage == 1,
            CROP_SOIL * (1 - vigour) + SIGNATURES[CROPLAND] * vigour,
            CROP_RIPE * ripe + SIGNATURES[CROPLAND] * (1 - ripe),
        ),
    )
    dry = rng.uniform(0.0, 0.7, size=(count, 1)).astype(np.float32) ** 2
    pasture = SIGNATURES[GRASSLAND] * (1 - dry) + DRY_GRASS * dry
    fallow = SIGNATURES[BARE_SOIL] * rng.uniform(0.75, 1.1, size=(count, 1)).astype(np.float32)
    spectra = np.where((ptype == CROPLAND)[:, None], crop, np.where((ptype == GRASSLAND)[:, None], pasture, fallow))
    spectra *= brightness(rng, count, 0.05, 0.03)
    row_amp = np.where(ptype == CROPLAND, rng.uniform(0.03, 0.14, count), 0.0).astype(np.float32)
    row_amp *= np.where(stage[:, 0] == 1, 1.0, 0.5).astype(np.float32)
    return ptype, spectra.astype(np.float32), row_amp


def paint_farmland(cv: Canvas, elevation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint the agricultural zone: Voronoi farm blocks cut into rotated parcels.

    Each farm block has its own parcel orientation, width and length; strips of
    parcels are staggered, and parcels are separated by 1-2.5 px grass margins.

    Returns:
        ``(agri, tracks, rows)``: the agricultural zone (n, n) bool; the farm-block
        boundaries inside it (n, n) bool, to become tracks; the crop-row texture
        (n, n) float32, a signed relative amplitude.
    """
    rng, n, xs, f = cv.rng, cv.n, cv.xs, cv.f
    agri_field = fbm(rng, n, pow2(n / 3), pow2(n / 64), decay=0.5)
    agri_field -= 0.5 * elevation
    agri = agri_field > quantile(agri_field, 0.42)
    del agri_field

    n_blocks = max(3, round(26 * cv.area))
    block = voronoi(rng.uniform(0, n, size=(n_blocks, 2)), n)
    theta = rng.uniform(0, np.pi, n_blocks).astype(np.float32)
    width = (rng.uniform(30, 110, n_blocks) * f).astype(np.float32)
    length = (rng.uniform(90, 320, n_blocks) * f).astype(np.float32)
    margin = rng.uniform(1.0, 2.5, n_blocks).astype(np.float32)
    offset = rng.uniform(0, 1000, size=(2, n_blocks)).astype(np.float32)
    stagger = rng.uniform(0, 1, size=(n_blocks, _PARCEL_K)).astype(np.float32)

    # (u, v): pixel coordinates in the block's rotated frame, px
    cos_t, sin_t = np.cos(theta)[block], np.sin(theta)[block]
    u = xs[None, :] * cos_t
    u += xs[:, None] * sin_t
    u += offset[0][block]
    v = xs[:, None] * cos_t
    v -= xs[None, :] * sin_t
    del cos_t, sin_t
    w_pix = width[block]
    cell = np.floor(u / w_pix)
    fu = u - cell * w_pix  # position across the strip of parcels, px
    del w_pix
    iu = cell.astype(np.int32)
    iu %= _PARCEL_K
    h_pix = length[block]
    v += offset[1][block]
    v += stagger.ravel()[block * _PARCEL_K + iu] * h_pix
    np.floor(v / h_pix, out=cell)
    fv = v - cell * h_pix  # position along the strip, px
    del h_pix
    jv = cell.astype(np.int32)
    jv %= _PARCEL_K
    del cell
    m_pix = margin[block]
    in_parcel = (fu >= m_pix) & (fv >= m_pix)
    in_parcel &= agri
    del fu, fv, m_pix
    key = (block * _PARCEL_K + iu) * _PARCEL_K + jv  # parcel id within the parcel tables
    del iu, jv

    n_parcels = n_blocks * _PARCEL_K * _PARCEL_K
    ptype, spectra, row_amp = _parcel_spectra(rng, n_parcels)
    parcel_base = cv.add(spectra)
    row_dir = rng.integers(0, 2, n_parcels).astype(bool)
    row_freq = (2 * np.pi / rng.uniform(3.0, 9.0, n_parcels)).astype(np.float32)
    cv.paint(in_parcel, 0, (parcel_base + key)[in_parcel])
    cv.cls[in_parcel] = ptype[key][in_parcel]
    rows = np.where(row_dir[key], u, v)
    del u, v
    rows *= row_freq[key]
    np.sin(rows, out=rows)
    rows *= row_amp[key]
    del key, in_parcel

    edge = np.zeros((n, n), dtype=bool)
    edge[:, 1:] |= block[:, 1:] != block[:, :-1]
    edge[1:, :] |= block[1:, :] != block[:-1, :]
    edge[:, :-1] |= edge[:, 1:].copy()  # 2-3 px wide
    edge[:-1, :] |= edge[1:, :].copy()
    edge &= agri
    return agri, edge, rows


def paint_forest_and_soil(cv: Canvas, elevation: np.ndarray, agri: np.ndarray) -> None:
    """Forest on high ground outside the fields plus woodlots, and dry bare-soil patches."""
    rng, n = cv.rng, cv.n
    forest_field = fbm(rng, n, pow2(n / 4), 8, decay=0.62)
    forest_field += 0.45 * elevation
    forest = forest_field > quantile(forest_field, 0.45, ~agri)
    forest &= ~agri
    forest |= forest_field > quantile(forest_field, 0.985)
    del forest_field
    cv.paint(forest, FOREST)
    bare_field = fbm(rng, n, pow2(n / 16), 8, decay=0.6)
    bare = bare_field > quantile(bare_field, 0.965)
    bare &= ~agri
    bare &= ~forest
    cv.paint(bare, BARE_SOIL)


@dataclass
class WaterLayout:
    """Water bodies before rasterisation.

    Attributes:
        river: river centre line, shape (m, 2) as (x, y) px.
        river_width: width at each vertex, shape (m,), px.
        tributary: tributary centre line, shape (k, 2).
        tributary_width: shape (k,), px.
        lakes: (cx, cy, radius, aspect, angle) per lake, the big lakes first.
        n_big: number of big lakes (the rest are ponds).
    """

    river: np.ndarray
    river_width: np.ndarray
    tributary: np.ndarray
    tributary_width: np.ndarray
    lakes: list[tuple[float, float, float, float, float]]
    n_big: int


def lay_out_water(cv: Canvas) -> WaterLayout:
    """A meandering river across the scene, a tributary joining it, lakes and ponds."""
    rng, n, f = cv.rng, cv.n, cv.f
    side = int(rng.integers(0, 4))
    src = edge_point(rng, n, side)
    dst = edge_point(rng, n, (side + 2) % 4)
    river = wander(rng, src, dst, step=6.0 * f, swing=0.75, bend=14, size=n)
    phase = np.linspace(0, rng.uniform(3, 8), len(river)) + rng.uniform(0, 6)
    river_width = 30.0 * f * (1 + 0.25 * np.sin(phase))
    start = edge_point(rng, n, (side + int(rng.choice([1, 3]))) % 4)
    end = river[rng.integers(len(river) // 4, max(len(river) // 4 + 1, 3 * len(river) // 4))]
    tributary = wander(rng, start, end, step=5.0 * f, swing=0.6, bend=10, size=n)
    tributary_width = np.linspace(5.0, 11.0, len(tributary)) * f
    lakes: list[tuple[float, float, float, float, float]] = []
    n_big = max(1, round(6 * cv.area))
    for _ in range(n_big):
        r = min(float(rng.lognormal(math.log(110 * f), 0.45)), 0.2 * n)
        cx, cy = rng.uniform(0.1, 0.9, 2) * n
        lakes.append((float(cx), float(cy), r, float(rng.uniform(0.5, 1.0)), float(rng.uniform(0, np.pi))))
    for _ in range(round(25 * cv.area) + 1):
        cx, cy = rng.uniform(0.05, 0.95, 2) * n
        r = float(rng.uniform(4, 14))
        lakes.append((float(cx), float(cy), r, float(rng.uniform(0.6, 1.0)), float(rng.uniform(0, np.pi))))
    return WaterLayout(river, river_width, tributary, tributary_width, lakes, n_big)


def place_settlements(cv: Canvas, water: WaterLayout) -> list[tuple[float, float, float, float]]:
    """Settlement centres away from water and each other, a town first.

    Returns:
        (cx, cy, radius, street angle) per settlement, px and radians.
    """
    rng, n, f = cv.rng, cv.n, cv.f
    wanted = max(2, round(7 * cv.area))
    settlements: list[tuple[float, float, float, float]] = []
    channel = np.concatenate([water.river, water.tributary])
    for _ in range(200):
        if len(settlements) == wanted:
            break
        radius = min((380.0 if not settlements else float(rng.uniform(110, 230))) * f, 0.3 * n)
        c = rng.uniform(0.12, 0.88, 2) * n
        if min_dist(c, channel) < 0.6 * radius + 30 * f:
            continue
        if any(math.hypot(c[0] - lx, c[1] - ly) < lr + 0.8 * radius for lx, ly, lr, _, _ in water.lakes[: water.n_big]):
            continue
        if any(math.hypot(c[0] - sx, c[1] - sy) < 1.2 * (sr + radius) for sx, sy, sr, _ in settlements):
            continue
        settlements.append((float(c[0]), float(c[1]), radius, float(rng.uniform(0, np.pi / 2))))
    return settlements


def paint_open_land(cv: Canvas, settlements: list[tuple[float, float, float, float]], shape: np.ndarray) -> None:
    """Gardens (grassland) and yards or building sites (bare soil) in the settlements; quarries."""
    rng, n, f = cv.rng, cv.n, cv.f
    urban = np.zeros((n, n), dtype=bool)
    for cx, cy, radius, _ in settlements:
        found = cv.blob(cx, cy, radius, shape, wobble=0.3)
        if found is not None:
            win, inside = found
            urban[win] |= inside
    cv.paint(urban, GRASSLAND)
    urban &= shape > quantile(shape, 0.93)
    cv.paint(urban, BARE_SOIL)
    for _ in range(round(6 * cv.area) + 1):
        r = float(rng.uniform(15, 70)) * f
        cx, cy = rng.uniform(0.05, 0.95, 2) * n
        quarry = cv.add(SIGNATURES[BARE_SOIL] * brightness(rng, 1, 0.12, 0.04))
        found = cv.blob(float(cx), float(cy), r, shape, wobble=0.35)
        if found is not None:
            win, inside = found
            cv.cls[win][inside] = BARE_SOIL
            cv.obj[win][inside] = quarry


def paint_water(cv: Canvas, layout: WaterLayout, shape: np.ndarray) -> np.ndarray:
    """Rasterise lakes, ponds, river and tributary; return the water mask (n, n)."""
    rng, n = cv.rng, cv.n
    water = np.zeros((n, n), dtype=bool)
    for cx, cy, r, aspect, angle in layout.lakes:
        turbidity = float(rng.uniform(0.0, 1.0)) ** 1.5
        spectrum = CLEAR_WATER * (1 - turbidity) + TURBID_WATER * turbidity
        lake = cv.add(spectrum * brightness(rng, 1, 0.06, 0.04))
        found = cv.blob(cx, cy, r, shape, wobble=0.3, aspect=aspect, angle=angle)
        if found is not None:
            win, inside = found
            cv.cls[win][inside] = WATER
            cv.obj[win][inside] = lake
            water[win] |= inside
    river = cv.add((CLEAR_WATER * 0.4 + TURBID_WATER * 0.6) * brightness(rng, 2, 0.05, 0.03))
    shapes = [(g, 1) for g in thick_line(layout.river, layout.river_width)]
    shapes += [(g, 2) for g in thick_line(layout.tributary, layout.tributary_width)]
    flow = burn(shapes, n, dtype="uint8")
    channel = flow > 0
    cv.paint(channel, WATER, river - 1 + flow[channel].astype(np.int32))
    water |= channel
    return water


def lay_out_built(
    cv: Canvas, settlements: list[tuple[float, float, float, float]]
) -> tuple[list[tuple[dict[str, Any], int]], list[tuple[dict[str, Any], int]]]:
    """Roads and buildings as polygons.

    Main roads (6-12 px) join the settlements along a minimum spanning tree and lead
    out of the scene; gravel tracks (2-3.5 px) cross the countryside; each settlement
    has a street grid (3-5 px) with houses (6-18 px) and some large buildings (up to
    55 px) along the streets, denser towards the centre; farmsteads of 1-4
    buildings are scattered over the scene.

    Returns:
        ``(roads, buildings)``: (GeoJSON polygon, object id + 1) pairs in pixel
        coordinates, ready for :func:`burn`.
    """
    rng, n, f = cv.rng, cv.n, cv.f
    roads: list[tuple[dict[str, Any], int]] = []
    buildings: list[tuple[dict[str, Any], int]] = []

    def road(path: np.ndarray, width: float, spectrum: np.ndarray) -> None:
        rid = cv.add(spectrum * brightness(rng, 1, 0.08, 0.03))
        roads.extend((g, rid + 1) for g in thick_line(path, width))

    def building(cx: float, cy: float, length: float, depth: float, angle: float) -> None:
        roof = ROOFS[rng.choice(len(ROOFS), p=ROOF_P)]
        bid = cv.add(roof * brightness(rng, 1, 0.12, 0.05))
        buildings.append((rectangle(cx, cy, length, depth, angle), bid + 1))

    centres = np.array([[sx, sy] for sx, sy, _, _ in settlements], dtype=np.float64).reshape(-1, 2)
    road_scale = max(f, 0.6)
    if len(centres) > 1:  # Prim's minimum spanning tree
        linked = np.zeros(len(centres), dtype=bool)
        linked[0] = True
        best_d = np.hypot(*(centres - centres[0]).T)
        best_i = np.zeros(len(centres), dtype=np.int64)
        for _ in range(len(centres) - 1):
            j = int(np.argmin(np.where(linked, np.inf, best_d)))
            i = int(best_i[j])
            linked[j] = True
            d_new = np.hypot(*(centres - centres[j]).T)
            closer = d_new < best_d
            best_d = np.where(closer, d_new, best_d)
            best_i = np.where(closer, j, best_i)
            path = wander(rng, centres[i], centres[j], step=8.0, swing=0.25, bend=30, size=n)
            road(path, float(rng.uniform(6, 10)) * road_scale, ASPHALT)
    for k in range(min(len(centres), 2)):
        exit_point = edge_point(rng, n, int(rng.integers(0, 4)))
        path = wander(rng, centres[k], exit_point, step=8.0, swing=0.25, bend=30, size=n)
        road(path, float(rng.uniform(8, 12)) * road_scale, ASPHALT)
    for _ in range(round(5 * cv.area) + 1):
        a, b = rng.choice(4, size=2, replace=False)
        path = wander(
            rng, edge_point(rng, n, int(a)), edge_point(rng, n, int(b)), step=6.0, swing=0.35, bend=20, size=n
        )
        road(path, float(rng.uniform(2, 3.5)), GRAVEL)

    for si, (cx, cy, radius, angle) in enumerate(settlements):
        spacing = float(rng.uniform(38, 60)) * max(f, 0.7)
        street_w = float(rng.uniform(3, 5))
        along = np.array([math.cos(angle), math.sin(angle)])
        across = np.array([-along[1], along[0]])
        centre = np.array([cx, cy])
        big_p = 0.15 if si == 0 else 0.06
        for direction in range(2):
            d_along, d_across = (along, across) if direction == 0 else (across, along)
            gap = spacing if direction == 0 else spacing * float(rng.uniform(2.0, 3.5))
            k_max = int(radius / gap)
            for k in range(-k_max, k_max + 1):
                off = k * gap
                half = math.sqrt(max(radius**2 - off**2, 0.0)) * float(rng.uniform(0.7, 1.0))
                if half < spacing:
                    continue
                mid = centre + d_across * off
                road(np.array([mid - d_along * half, mid + d_along * half]), street_w, ASPHALT)
                if direction == 1:
                    continue
                # houses on both sides of the main-direction streets
                t = -half + float(rng.uniform(2, 8))
                while t < half - 6:
                    big = rng.uniform() < big_p * (1.5 - abs(t) / half)
                    length = float(rng.uniform(22, 55) if big else rng.uniform(6, 18))
                    depth = float(rng.uniform(16, 40) if big else rng.uniform(7, 15))
                    depth = min(depth, spacing / 2 - street_w / 2 - 3)
                    pos = mid + d_along * (t + length / 2)
                    dist = float(np.hypot(*(pos - centre))) / radius
                    for sign in (-1.0, 1.0):
                        if rng.uniform() < 0.97 * math.exp(-0.7 * dist**2):
                            setback = float(rng.uniform(2, 7))
                            c = pos + d_across * sign * (street_w / 2 + setback + depth / 2)
                            building(float(c[0]), float(c[1]), length, depth, angle + float(rng.normal(0, 0.05)))
                    t += length + float(rng.uniform(3, 14))
    for _ in range(round(14 * cv.area) + 1):  # farmsteads
        cx, cy = rng.uniform(0.05, 0.95, 2) * n
        angle = float(rng.uniform(0, np.pi))
        for _ in range(int(rng.integers(1, 5))):
            bx, by = cx + float(rng.normal(0, 12)), cy + float(rng.normal(0, 12))
            length, depth = float(rng.uniform(8, 30)), float(rng.uniform(7, 16))
            building(bx, by, length, depth, angle + float(rng.normal(0, 0.05)))
    return roads, buildings


def paint_built(
    cv: Canvas,
    roads: list[tuple[dict[str, Any], int]],
    buildings: list[tuple[dict[str, Any], int]],
    tracks: np.ndarray,
    water: np.ndarray,
) -> None:
    """Paint buildings (not on water), farm tracks, then roads (bridges cross water)."""
    burnt = burn(buildings, cv.n)
    where = burnt > 0
    where &= ~water
    cv.paint(where, BUILDINGS, burnt[where] - 1)
    del burnt
    track = cv.add(GRAVEL * brightness(cv.rng, 1, 0.06, 0.03))
    tracks &= ~water
    tracks &= ~where
    cv.paint(tracks, ROADS, track)
    burnt = burn(roads, cv.n)
    where = burnt > 0
    cv.paint(where, ROADS, burnt[where] - 1)


def assign_stands(cv: Canvas) -> None:
    """Give pixels without an object the natural-stand object of their class."""
    stand_field = fbm(cv.rng, cv.n, pow2(cv.n / 8), pow2(cv.n / 128), decay=0.6)
    lo, hi = quantile(stand_field, 0.01), quantile(stand_field, 0.99)
    stand_field -= lo
    stand_field *= _STANDS / max(hi - lo, 1e-6)
    np.clip(stand_field, 0, _STANDS - 1, out=stand_field)
    free = cv.obj < 0
    cv.obj[free] = cv.cls[free].astype(np.int32) * _STANDS + stand_field[free].astype(np.int32)
