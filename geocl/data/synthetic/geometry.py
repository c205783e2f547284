"""Shapes of the synthetic scene in pixel coordinates: Voronoi cells, wandering paths, polygons.

Coordinates are (x, y) = (column, row) in pixels of the scene grid, with pixel
centres at 0.5, 1.5, ...; polygons are GeoJSON-like dicts ready for
:func:`rasterio.features.rasterize` (through :func:`burn`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from rasterio.features import rasterize

from geocl.data.synthetic.noise import upsample


def voronoi(points: np.ndarray, size: int, cell: int = 8) -> np.ndarray:
    """Nearest-point labels of shape (size, size), int32, for points (k, 2) as (x, y).

    Labels are computed on a grid of *cell*-pixel cells, then refined pixel by pixel
    in the cells on a boundary, among the labels of the 3 x 3 neighbouring cells.
    """
    gc = -(-size // cell)
    centres = (np.arange(gc, dtype=np.float32) + 0.5) * cell
    px = points[:, 0].astype(np.float32)
    py = points[:, 1].astype(np.float32)
    d2 = (centres[None, None, :] - px[:, None, None]) ** 2 + (centres[None, :, None] - py[:, None, None]) ** 2
    coarse = np.argmin(d2, axis=0).astype(np.int32)
    full = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)
    pad = np.pad(coarse, 1, mode="edge")
    neigh = np.stack([pad[dy : dy + gc, dx : dx + gc] for dy in range(3) for dx in range(3)])
    by, bx = np.nonzero(np.any(neigh != coarse[None], axis=0))
    if by.size:
        cand = neigh[:, by, bx].T  # (nb, 9)
        offs = np.arange(cell, dtype=np.float32) + 0.5
        yy = by[:, None].astype(np.float32) * cell + offs  # (nb, cell)
        xx = bx[:, None].astype(np.float32) * cell + offs
        d = (xx[:, None, :, None] - px[cand][:, None, None, :]) ** 2 + (
            yy[:, :, None, None] - py[cand][:, None, None, :]
        ) ** 2
        best = np.take_along_axis(cand[:, None, None, :], np.argmin(d, axis=3)[..., None], axis=3)[..., 0]
        full.reshape(gc, cell, gc, cell)[by, :, bx, :] = best
    return np.ascontiguousarray(full[:size, :size])


def wander(
    rng: np.random.Generator,
    start: np.ndarray,
    target: np.ndarray,
    *,
    step: float,
    swing: float,
    bend: int,
    size: int,
    max_steps: int = 4000,
) -> np.ndarray:
    """A smoothly curving path from *start* to *target*, shape (m, 2) as (x, y).

    Each step heads towards the target plus a deviation: smooth 1-D noise with a
    typical amplitude of *swing* radians (capped at 75 degrees, so the path always
    gets closer) and bends every ~*bend* steps. The path ends with a straight piece
    once it is within 12 steps of the target, or once it has entered and then left
    the scene, or after *max_steps*.
    """
    knots = rng.standard_normal(max_steps // max(bend, 1) + 5).astype(np.float32)
    dev = upsample(knots[:, None] * np.ones((1, 4), dtype=np.float32), max(bend, 1), 0)[:, 0]
    dev = np.clip(dev * (swing / max(float(dev.std()), 1e-6)), -1.3, 1.3)
    pos = np.asarray(start, dtype=np.float64).copy()
    margin = 4 * step + 32
    pts = [pos.copy()]
    entered = False
    for k in range(min(max_steps, len(dev))):
        if math.hypot(target[0] - pos[0], target[1] - pos[1]) < 12 * step:
            pts.append(np.asarray(target, dtype=np.float64))
            break
        heading = math.atan2(target[1] - pos[1], target[0] - pos[0]) + float(dev[k])
        pos = pos + step * np.array([math.cos(heading), math.sin(heading)])
        pts.append(pos.copy())
        inside = -margin <= pos[0] <= size + margin and -margin <= pos[1] <= size + margin
        if entered and not inside:
            break
        entered |= inside
    return np.array(pts)


def _polygon(ring: np.ndarray) -> dict[str, Any]:
    """GeoJSON polygon from a ring of shape (m, 2) (closed here)."""
    coords = ring.tolist()
    coords.append(coords[0])
    return {"type": "Polygon", "coordinates": [coords]}


def thick_line(points: np.ndarray, widths: np.ndarray | float) -> Iterator[dict[str, Any]]:
    """Polygons covering a polyline (m, 2) of per-vertex *widths*: segment quads and joint octagons."""
    pts = np.asarray(points, dtype=np.float64)
    half = np.broadcast_to(np.asarray(widths, dtype=np.float64), (len(pts),)) / 2.0
    seg = np.diff(pts, axis=0)
    length = np.hypot(seg[:, 0], seg[:, 1])
    keep = length > 1e-9
    normal = np.zeros_like(seg)
    normal[keep] = np.stack([-seg[keep, 1], seg[keep, 0]], axis=1) / length[keep, None]
    angles = np.arange(8) * (np.pi / 4) + np.pi / 8
    octagon = np.stack([np.cos(angles), np.sin(angles)], axis=1) / math.cos(np.pi / 8)
    for i in np.flatnonzero(keep):
        p0, p1, n = pts[i], pts[i + 1], normal[i]
        h0, h1 = half[i], half[i + 1]
        yield _polygon(np.array([p0 + n * h0, p1 + n * h1, p1 - n * h1, p0 - n * h0]))
        if i > 0 and half[i] >= 1.0:
            yield _polygon(p0 + octagon * half[i])


def rectangle(cx: float, cy: float, length: float, depth: float, angle: float) -> dict[str, Any]:
    """GeoJSON rotated rectangle centred on (cx, cy), *length* along *angle*."""
    c, s = math.cos(angle), math.sin(angle)
    a = np.array([c, s]) * length / 2
    b = np.array([-s, c]) * depth / 2
    ctr = np.array([cx, cy])
    return _polygon(np.array([ctr + a + b, ctr + a - b, ctr - a - b, ctr - a + b]))


def burn(shapes: list[tuple[dict[str, Any], int]], size: int, dtype: str = "int32") -> np.ndarray:
    """Rasterise (geometry, value) pairs in pixel coordinates; later shapes win; 0 = none."""
    if not shapes:
        return np.zeros((size, size), dtype=dtype)
    return rasterize(shapes, out_shape=(size, size), fill=0, dtype=dtype)


def edge_point(rng: np.random.Generator, size: int, side: int) -> np.ndarray:
    """A random point just outside edge *side* (0 left, 1 top, 2 right, 3 bottom)."""
    t = rng.uniform(0.15, 0.85) * size
    out = -0.02 * size - 8
    return np.array([[out, t], [t, out], [size - out, t], [t, size - out]][side])


def min_dist(point: np.ndarray, path: np.ndarray) -> float:
    """Distance from *point* (2,) to the nearest vertex of *path* (m, 2)."""
    if path.size == 0:
        return float("inf")
    return float(np.min(np.hypot(path[:, 0] - point[0], path[:, 1] - point[1])))
