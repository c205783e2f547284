"""The urban scene: a very-high-resolution city where the spectrum of a pixel does not give its class.

GraSS (Zhang et al., IEEE TGRS 2023, doi:10.1109/TGRS.2023.3336285, arXiv:2306.15868)
crops a view down to the region that drives the contrastive loss, hoping that it holds
one ground object. Its benchmarks, ISPRS Potsdam and Vaihingen (5-9 cm orthophotos,
doi:10.5194/isprsannals-I-3-293-2012), are cities where many objects are smaller than
a view and where spectra alone do not separate the classes. The rural scene
(:mod:`~geocl.data.synthetic.render`) has neither property; this one has both:

* **ground sampling distance 0.2 m**, the ISPRS legend (impervious surfaces, building,
  low vegetation, tree, car, clutter) and objects of all sizes: cars of about
  22 x 9 px, tree crowns of 3-14 m (15-70 px), garages, sheds and clutter items of
  1-6 m, houses of 9-15 m, and streets, building blocks, lawns and parks of 50-200 m
  (see :mod:`~geocl.data.synthetic.urban_painters`), so that a 96-128 px crop can hold
  a single car, tree or house;
* **classes that spectra do not separate** (see
  :mod:`~geocl.data.synthetic.urban_spectra`): roofs of street materials (tar, gravel,
  grey tiles), trees and low vegetation with one spectral distribution, cars in the
  colours of roofs and asphalt, heterogeneous clutter, and cast shadows of buildings,
  trees, cars and clutter that darken whatever lies under them (the class does not
  change), by 58-76 % depending on the band;
* **context that does**: buildings are rectangles with sharp edges, pitched roofs lit
  on one side and dark on the other, chimneys and HVAC units, and a shadow on the side
  away from the sun; tree crowns are round, strongly textured domes (bright towards the
  sun) with shadows, while lawns are smooth; cars are small rectangles with dark glass
  at both ends, parked in rows along kerbs and in parking lots.

A per-pixel nearest-class-mean classifier
(:func:`geocl.evaluation.spectral_baseline.nearest_class_mean_miou`) therefore stays
far below what a model with spatial context reaches on the same image.

The scene is an orthophoto tile without nodata. Rendering: the street grid and the
blocks are laid out as polygons (:func:`lay_out_streets`, :func:`lay_out_blocks`),
rasterised in one pass in layer order (ground, markings, clutter, cars, buildings,
rooftop details, trees); then shading (pitched roofs, crowns), cast shadows from the
objects' heights and the sun, fine and mid-scale texture, and sensor noise
(:func:`~geocl.data.synthetic.render.compose`).
"""

from __future__ import annotations

import math

import numpy as np
import shapely

from geocl.data.synthetic.canvas import Canvas
from geocl.data.synthetic.classes import LOW_VEGETATION, N_URBAN_CLASSES
from geocl.data.synthetic.geometry import burn
from geocl.data.synthetic.noise import fbm
from geocl.data.synthetic.painters import assign_stands
from geocl.data.synthetic.render import compose
from geocl.data.synthetic.spectra import brightness, texture_table
from geocl.data.synthetic.urban_painters import lay_out_blocks, lay_out_streets
from geocl.data.synthetic.urban_plan import CROWN, GABLE, PX_PER_M, Frame, Plan, Sun
from geocl.data.synthetic.urban_spectra import FINE_AMP, MID_AMP, SHADOW_GAIN, URBAN_SIGNATURES, VIGOUR

#: Ground sampling distance the urban scene is drawn for, metres.
URBAN_GSD: float = 1.0 / PX_PER_M

_STANDS = 16  # stand spectra per class, as in the rural scene (see painters.assign_stands)
_SHADOW_MARGIN_CM = 20  # a pixel is in shadow when a caster's top is this much above it


def generate_urban(*, size: int, seed: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate the urban scene in memory.

    Args:
        size: width and height in pixels.
        seed: random seed.
        bands: number of image bands.

    Returns:
        ``(image, mask)``: ``uint16`` array of shape (bands, size, size), reflectance
        x 10000, >= 1 everywhere; and ``uint8`` array of shape (size, size) with the
        class indices of :data:`~geocl.data.synthetic.classes.URBAN_CLASS_NAMES`.
    """
    n = size
    cv = Canvas(
        rng=np.random.default_rng(seed),
        n=n,
        f=1.0,
        area=(n / 4096.0) ** 2,
        xs=np.arange(n, dtype=np.float32) + 0.5,
        cls=np.full((n, n), LOW_VEGETATION, dtype=np.uint8),
        obj=np.full((n, n), -1, dtype=np.int32),
    )
    rng = cv.rng
    stands = np.repeat(URBAN_SIGNATURES, _STANDS, axis=0) * brightness(rng, N_URBAN_CLASSES * _STANDS, 0.07, 0.03)
    assert cv.add(stands) == 0  # ids class x 16 + level, as assign_stands expects
    sun = Sun(azimuth=math.radians(float(rng.uniform(135, 225))), elevation=math.radians(float(rng.uniform(40, 60))))
    plan = Plan(rng, Frame(n, float(rng.uniform(-0.5, 0.5))))
    us, vs, streets, present = lay_out_streets(plan)
    lay_out_blocks(plan, us, vs, streets, present)

    rings, keep, shape = _to_pixels(plan, sun)
    first = cv.add(np.stack([plan.spectra[i] for i in keep])) if keep.size else cv.count
    ids = first + np.arange(keep.size, dtype=np.int64)
    layer = np.array(plan.layer, dtype=np.int64)[keep]
    height = np.array(plan.height, dtype=np.float32)[keep]
    rise = height - np.array(plan.base, dtype=np.float32)[keep]
    order = np.argsort(layer, kind="stable")
    polygons = shapely.polygons(rings)
    burnt = burn(list(zip(polygons[order].tolist(), (ids[order] + 1).tolist(), strict=True)), n)
    burnt -= 1
    cv.obj = burnt
    del burnt
    cls_of = np.concatenate(
        [np.repeat(np.arange(N_URBAN_CLASSES, dtype=np.uint8), _STANDS), np.array(plan.cls, dtype=np.uint8)[keep]]
    )
    painted = cv.obj >= 0
    cv.cls[painted] = cls_of[cv.obj[painted]]
    del painted
    assign_stands(cv)

    height_of = np.concatenate([np.zeros(first, dtype=np.int32), np.rint(height * 100).astype(np.int32)])
    shadow = _cast_shadows(cv, rings, height, rise, sun, height_of)
    style_of = np.concatenate([np.zeros(first, dtype=np.uint8), np.array(plan.style, dtype=np.uint8)[keep]])
    base = _shading(cv, style_of, shape, first, sun)
    fine = fbm(rng, n, 8, 2, decay=0.7)
    fine *= FINE_AMP[cv.cls]
    fine += 1.0
    base *= fine
    del fine
    mid = fbm(rng, n, 128, 16, decay=0.6)
    gain = SHADOW_GAIN * np.float32(rng.uniform(0.9, 1.1))
    image = compose(
        cv, bands=bands, base=base, mid=mid, mid_amp=texture_table(MID_AMP, VIGOUR), shadow=shadow, shadow_gain=gain
    )
    return image, cv.cls


def _to_pixels(plan: Plan, sun: Sun) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rings in pixels of the objects that (or whose shadows) reach into the scene.

    Returns:
        ``(rings, keep, shape)``: rings (k, RING, 2) as (x, y) px, the plan indices of
        the k objects kept, and their shading frames (k, 6): centre x, y (px), angle
        (radians from the x axis), half-length, half-width (px) and roof slope.
    """
    n = plan.frame.n
    if not plan.rings:
        return np.zeros((0, 0, 2)), np.zeros(0, dtype=np.int64), np.zeros((0, 6))
    rings = plan.frame.to_px(np.stack(plan.rings))
    offset = sun.shadow(np.array(plan.height) - np.array(plan.base))  # (k, 2)
    lo = rings.min(axis=1) + np.minimum(offset, 0)
    hi = rings.max(axis=1) + np.maximum(offset, 0)
    keep = np.flatnonzero(np.all(hi > 0, axis=1) & np.all(lo < n, axis=1))
    frames = np.array(plan.shape, dtype=np.float64)[keep]
    centre = plan.frame.to_px(frames[:, :2])
    shape = np.column_stack(
        [centre, frames[:, 2] + plan.frame.angle, frames[:, 3] * PX_PER_M, frames[:, 4] * PX_PER_M, frames[:, 5]]
    )
    return rings[keep], keep, shape


def _cast_shadows(
    cv: Canvas, rings: np.ndarray, height: np.ndarray, rise: np.ndarray, sun: Sun, height_of: np.ndarray
) -> np.ndarray:
    """Pixels in the cast shadow of a higher object, shape (n, n) bool.

    The shadow of a prism rising r above what it stands on, over a convex footprint,
    is the convex hull of the footprint and the footprint moved by r / tan(elevation)
    away from the sun; it falls on the pixels lower than the prism's top by more than
    20 cm (tree crowns count as prisms as high as the tree).

    Args:
        cv: the painted canvas.
        rings: object polygons (k, RING, 2) in px.
        height: top of each object above the ground, shape (k,), m.
        rise: height of each object above what it stands on, shape (k,), m.
        sun: the sun.
        height_of: top per object id (all ids of the canvas), cm.
    """
    casters = np.flatnonzero(rise > 0.3)
    if casters.size == 0:
        return np.zeros((cv.n, cv.n), dtype=bool)
    moved = rings[casters] + sun.shadow(rise[casters])[:, None, :]
    hulls = shapely.convex_hull(shapely.multipoints(np.concatenate([rings[casters], moved], axis=1)))
    top = np.rint(height[casters] * 100).astype(np.int64)
    order = np.argsort(top, kind="stable")  # the highest caster wins
    shade_top = burn(list(zip(hulls[order].tolist(), top[order].tolist(), strict=True)), cv.n)
    ground = np.take(height_of, cv.obj)
    ground += _SHADOW_MARGIN_CM
    return shade_top > ground


def _shading(cv: Canvas, style_of: np.ndarray, shape: np.ndarray, first: int, sun: Sun) -> np.ndarray:
    """Relative brightness from the sun's angle on pitched roofs and tree crowns, shape (n, n), float32.

    1 on flat ground. A pitched roof plane of slope t facing horizontal direction d
    gets 0.25 + 0.75 cos(incidence) / sin(elevation); a crown is half an ellipsoid
    (height 0.8 x radius) and gets 0.3 + 0.7 cos(incidence) / sin(elevation), clipped
    to [0.15, 1.6].
    """
    n = cv.n
    base = np.ones((n, n), dtype=np.float32)
    style = np.take(style_of, cv.obj)
    s = sun.vector()
    for kind in (GABLE, CROWN):
        index = np.flatnonzero(style == kind)
        if index.size == 0:
            continue
        o = cv.obj.ravel()[index] - first
        y = (index // n).astype(np.float32) + 0.5
        x = (index % n).astype(np.float32) + 0.5
        frame = shape[o].astype(np.float32)
        dx, dy = x - frame[:, 0], y - frame[:, 1]
        c, sn = np.cos(frame[:, 2]), np.sin(frame[:, 2])
        across = (dy * c - dx * sn) / frame[:, 4]
        if kind == GABLE:
            side = np.where(across >= 0, np.float32(1), np.float32(-1))
            slope = frame[:, 5]
            nx, ny = -sn * side * slope, c * side * slope
            illum = (nx * s[0] + ny * s[1] + s[2]) / (np.sqrt(1 + slope * slope) * s[2])
            shade = 0.25 + 0.75 * np.maximum(illum, 0)
        else:
            along = (dx * c + dy * sn) / frame[:, 3]
            rho2 = np.minimum(along * along + across * across, np.float32(0.97))
            scale = np.sqrt(rho2 / np.maximum(dx * dx + dy * dy, np.float32(1e-6)))
            nx, ny, nz = dx * scale, dy * scale, np.sqrt(1 - rho2) / np.float32(0.8)
            illum = (nx * s[0] + ny * s[1] + nz * s[2]) / (np.sqrt(nx * nx + ny * ny + nz * nz) * s[2])
            shade = 0.3 + 0.7 * np.maximum(illum, 0)
        base.ravel()[index] = np.clip(shade, 0.15, 1.6)
    return base
