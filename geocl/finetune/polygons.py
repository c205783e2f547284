"""Polygons of a classified raster: 4-connected regions of one value, written to a GeoPackage.

The raster is vectorised in square blocks of ``block`` px, row by row of blocks, so
memory does not grow with the scene: GDAL polygonises each block
(``rasterio.features.shapes``, 4-connected), in pixel coordinates. A polygon that
reaches an edge the block shares with another block may continue there; it is merged
with the held-back regions of the same value that share an edge segment with it (not
only a corner: regions are 4-connected), and held back itself while it reaches a block
still to come (the next block of the row or the next row). Every other region is
complete and is written at once. What is held at any time is therefore the regions
crossing one horizontal line of block edges (plus the current block's right edge).
The result equals polygonising the whole raster at once: one polygon per 4-connected
region, holes included (a ring closed across a block edge gets its hole when merged).

Polygons are written in batches to the GeoPackage (layer :data:`POLYGON_LAYER`, column
``class_value``, the raster's CRS), in map coordinates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.transform import Affine
from rasterio.windows import Window

from geocl.data.rasters import bounded_memory
from geocl.io import atomic_path

__all__ = ["POLYGON_BLOCK", "POLYGON_LAYER", "polygonise_blocks", "write_polygons"]

#: GeoPackage layer of the prediction polygons.
POLYGON_LAYER = "prediction"
#: Default (and, in prediction, largest) block side (px) polygonised at a time. GDAL holds
#: every polygon of a block at once: on a fragmented 4096 px class map, 1024 px blocks
#: peaked at 0.7 GB and 4096 px blocks at 6 GB.
POLYGON_BLOCK = 1024
#: Polygons written to the GeoPackage per batch.
_BATCH = 20_000

Region = tuple[int, shapely.Geometry]  # (class value, polygon in pixel coordinates)


def _merge_shared_edges(regions: list[Region]) -> list[Region]:
    """Union the regions of one value that share an edge segment (4-connectivity); the others unchanged."""
    if len(regions) < 2:
        return regions
    geometries = np.asarray([geometry for _, geometry in regions], dtype=object)
    values = np.asarray([value for value, _ in regions])
    tree = shapely.STRtree(geometries)
    first, second = tree.query(geometries, predicate="touches")
    keep = (first < second) & (values[first] == values[second])
    first, second = first[keep], second[keep]
    # interiors apart, boundaries meeting in a line: a shared edge, not a shared corner
    along_edge = shapely.relate_pattern(geometries[first], geometries[second], "F***1****")
    parent = list(range(len(regions)))

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for a, b in zip(first[along_edge], second[along_edge]):
        parent[root(int(a))] = root(int(b))
    groups: dict[int, list[int]] = {}
    for item in range(len(regions)):
        groups.setdefault(root(item), []).append(item)
    merged: list[Region] = []
    for members in groups.values():
        if len(members) == 1:
            merged.append(regions[members[0]])
        else:
            merged.append((regions[members[0]][0], shapely.union_all(geometries[members])))
    return merged


def _block_polygons(features: Iterator[tuple[dict[str, Any], float]]) -> tuple[np.ndarray, list[int]]:
    """GDAL's GeoJSON-like polygons as shapely polygons, built in one vectorised call.

    ``shapely.geometry.shape`` per feature costs about 0.1 ms, which dominates on
    fragmented class maps (10^5 regions); a ragged array of the rings does not.
    """
    rings: list[np.ndarray] = []
    ring_ends = [0]
    polygon_ends = [0]
    values: list[int] = []
    for geometry, value in features:
        for ring in geometry["coordinates"]:
            rings.append(np.asarray(ring, dtype=np.float64))
            ring_ends.append(ring_ends[-1] + len(ring))
        polygon_ends.append(len(rings))
        values.append(int(value))
    if not values:
        return np.empty(0, dtype=object), values
    polygons = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, np.concatenate(rings),
        (np.asarray(ring_ends, dtype=np.int64), np.asarray(polygon_ends, dtype=np.int64)),
    )
    return polygons, values


def polygonise_blocks(src: Any, block: int = POLYGON_BLOCK) -> Iterator[list[Region]]:
    """The 4-connected regions of band 1 of an open raster, block by block.

    Args:
        src: an open single-band rasterio dataset; its nodata pixels are left out.
        block: block side (px).

    Yields:
        Lists of complete regions ``(value, polygon)`` in pixel coordinates (x = column,
        y = row), each region exactly once, as soon as no block still to come can
        touch them.
    """
    from rasterio.features import shapes

    height, width, nodata = src.height, src.width, src.nodata
    held: list[Region] = []  # regions that may continue into a block still to come
    for top in range(0, height, block):
        bottom = min(top + block, height)
        for left in range(0, width, block):
            right = min(left + block, width)
            classes = src.read(1, window=Window(left, top, right - left, bottom - top))
            valid = None if nodata is None else classes != nodata
            polygons, found = _block_polygons(shapes(
                classes, mask=valid, connectivity=4, transform=Affine.translation(left, top)
            ))
            done: list[Region] = []
            edge: list[Region] = []
            if found:
                x0, y0, x1, y1 = shapely.bounds(polygons).T
                # pixel coordinates are whole numbers: the comparisons are exact
                inner_edge = (
                    ((x0 == left) & (left > 0)) | ((x1 == right) & (right < width))
                    | ((y0 == top) & (top > 0)) | ((y1 == bottom) & (bottom < height))
                )
                for polygon, value, inner in zip(polygons, found, inner_edge):
                    (edge if inner else done).append((value, polygon))
            if edge:
                # held regions that reach this block's box: the only ones its edge regions can join
                near = np.zeros(len(held), dtype=bool)
                if held:
                    hx0, hy0, hx1, hy1 = shapely.bounds(np.asarray([p for _, p in held], dtype=object)).T
                    near = (hx0 <= right) & (hx1 >= left) & (hy0 <= bottom) & (hy1 >= top)
                merged = _merge_shared_edges([region for region, n in zip(held, near) if n] + edge)
                held = [region for region, n in zip(held, near) if not n]
                for value, polygon in merged:
                    _, _, mx1, my1 = polygon.bounds
                    open_right = right < width and mx1 >= right
                    open_below = bottom < height and my1 >= bottom
                    (held if open_right or open_below else done).append((value, polygon))
            yield done
        # the row is done: only regions reaching its bottom edge can grow further
        reaching = [bottom < height and polygon.bounds[3] >= bottom for _, polygon in held]
        yield [region for region, below in zip(held, reaching) if not below]
        held = [region for region, below in zip(held, reaching) if below]
    assert not held


def write_polygons(
    prediction: str | os.PathLike[str], final: str | os.PathLike[str], *, block: int = POLYGON_BLOCK
) -> Path:
    """Vectorise a classified raster (4-connected regions of one value) into a GeoPackage.

    Memory is bounded by the block and the regions crossing one row of block edges,
    not by the raster's size (see the module docstring).

    Args:
        prediction: the single-band classified GeoTIFF; its nodata pixels are left out.
        final: the GeoPackage to write (atomic), layer :data:`POLYGON_LAYER`: one row per
            polygon, column ``class_value``, the raster's CRS.
        block: side (px) of the blocks read and polygonised at a time.

    Returns:
        ``final`` as a :class:`~pathlib.Path`.
    """
    import geopandas as gpd

    final = Path(final)
    with bounded_memory(), rasterio.open(prediction) as src, atomic_path(final) as temp:
        a, b, c, d, e, f = src.transform[:6]

        def to_map(xy: np.ndarray) -> np.ndarray:  # pixel (col, row) -> map (x, y)
            return np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f])

        written = False
        batch: list[Region] = []

        def flush() -> None:
            nonlocal written, batch
            frame = gpd.GeoDataFrame(
                {"class_value": np.asarray([value for value, _ in batch], dtype=np.int64)},
                geometry=shapely.transform(np.asarray([polygon for _, polygon in batch], dtype=object), to_map),
                crs=src.crs,
            )
            frame.to_file(temp, driver="GPKG", layer=POLYGON_LAYER, mode="a" if written else "w")
            written, batch = True, []

        for regions in polygonise_blocks(src, block):
            batch.extend(regions)
            if len(batch) >= _BATCH:
                flush()
        if batch or not written:  # an empty layer still tells a reader "no polygons"
            flush()
    return final
