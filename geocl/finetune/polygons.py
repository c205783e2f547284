"""Polygons of a classified raster: 4-connected regions of one value, written to a GeoPackage.

The raster is vectorised in square blocks of ``block`` px, row by row of blocks, so
memory does not grow with the scene. In each block the 4-connected regions of one value
are labelled (``scipy.ndimage.label``, one id per region, unique over the scene) and
GDAL polygonises the label image (``rasterio.features.shapes``), in pixel coordinates:
one polygon per region. Regions that continue across a block edge are joined from the
pixels on either side of the edge: two facing pixels of the same value put their
regions in one group (union-find), so corners alone never join (4-connectivity). A
region that reaches no edge shared with another block is written at once; a group is
written (its polygons unioned) once no block still to come can touch it, that is after
the block to the right of and the block below each of its parts. What is held at any
time is therefore the regions crossing one horizontal line of block edges, plus one
column of ids and values of the current row of blocks. The result equals polygonising
the whole raster at once: one polygon per 4-connected region, holes included (a ring
closed across a block edge gets its hole in the union).

Polygons are written in batches to the GeoPackage (layer :data:`POLYGON_LAYER`, column
``class_value``, the raster's CRS), in map coordinates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.transform import Affine
from rasterio.windows import Window
from scipy import ndimage

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
#: 4-connectivity for ``ndimage.label``.
_CROSS = ndimage.generate_binary_structure(2, 1)

Region = tuple[int, shapely.Geometry]  # (class value, polygon in pixel coordinates)


def _block_polygons(features: Iterator[tuple[dict[str, Any], float]]) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's GeoJSON-like polygons as shapely polygons (built in one vectorised call) and their values.

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
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    polygons = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        np.concatenate(rings),
        (np.asarray(ring_ends, dtype=np.int64), np.asarray(polygon_ends, dtype=np.int64)),
    )
    return polygons, np.asarray(values, dtype=np.int64)


def _region_ids(classes: np.ndarray, valid: np.ndarray | None, first: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids ``first, first + 1, ...`` of the 4-connected regions of one value (0 on nodata) and each id's value.

    Returns:
        ``ids`` int32 ``[rows, cols]`` and ``values`` with ``values[id - first]`` the class of ``id``.
    """
    ids = np.zeros(classes.shape, dtype=np.int32)
    values: list[np.ndarray] = []
    count = 0
    present = np.unique(classes if valid is None else classes[valid])
    for value in present:
        labels, found = ndimage.label((classes == value) if valid is None else (classes == value) & valid, _CROSS)
        inside = labels > 0
        ids[inside] = labels[inside] + (first + count - 1)
        values.append(np.full(found, value, dtype=np.int64))
        count += found
    return ids, (np.concatenate(values) if values else np.empty(0, dtype=np.int64))


def _present(line: np.ndarray, first: int, count: int) -> np.ndarray:
    """``[count]`` bool: which of the ids ``first .. first + count - 1`` occur in ``line`` (0: none)."""
    flags = np.zeros(count, dtype=bool)
    flags[line[line > 0] - first] = True
    return flags


@dataclass
class _Group:
    """Regions joined across block edges: their class value, polygons and the last block that can touch them."""

    value: int
    polygons: list[shapely.Geometry] = field(default_factory=list)
    closes: int = 0


class _Groups:
    """Union-find over region ids, each root holding its :class:`_Group`."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.groups: dict[int, _Group] = {}
        self.closing: dict[int, set[int]] = {}  # block index -> roots that close after it

    def root(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def add(self, item: int, value: int, polygon: shapely.Geometry, closes: int) -> None:
        self.parent[item] = item
        self.groups[item] = _Group(value, [polygon], closes)
        self.closing.setdefault(closes, set()).add(item)

    def join(self, a: int, b: int) -> None:
        a, b = self.root(a), self.root(b)
        if a == b:
            return
        kept, gone = self.groups[a], self.groups.pop(b)
        self.closing[gone.closes].discard(b)
        self.closing[kept.closes].discard(a)
        kept.polygons.extend(gone.polygons)
        kept.closes = max(kept.closes, gone.closes)
        self.closing.setdefault(kept.closes, set()).add(a)
        self.parent[b] = a

    def close(self, block: int) -> list[Region]:
        """The groups no block after ``block`` can touch, unioned; forgotten here."""
        done = []
        for root in self.closing.pop(block, ()):
            group = self.groups.pop(root)
            polygon = group.polygons[0] if len(group.polygons) == 1 else shapely.union_all(group.polygons)
            done.append((group.value, polygon))
        # ids of closed groups are never referenced again: only the open groups' ids stay
        if done:
            live = set(self.groups)
            self.parent = {item: root for item, root in self.parent.items() if self.root(item) in live}
        return done


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
    columns = -(-width // block)
    groups = _Groups()
    next_id = 1
    # ids and values of the pixel row above the current row of blocks (0: nodata or first row)
    above_ids = np.zeros(width, dtype=np.int32)
    above_values = np.zeros(width, dtype=np.int64)
    for row, top in enumerate(range(0, height, block)):
        bottom = min(top + block, height)
        below_ids = np.zeros(width, dtype=np.int32)
        below_values = np.zeros(width, dtype=np.int64)
        left_ids = left_values = None  # the last pixel column of the previous block of this row
        for column, left in enumerate(range(0, width, block)):
            index = row * columns + column
            right = min(left + block, width)
            classes = src.read(1, window=Window(left, top, right - left, bottom - top))
            valid = None if nodata is None else classes != nodata
            ids, id_values = _region_ids(classes, valid, next_id)
            polygons, found = _block_polygons(
                shapes(ids, mask=ids > 0, connectivity=4, transform=Affine.translation(left, top))
            )
            # regions on an edge shared with another block, and the last block that can touch
            # them (in block order); indexed by id - next_id, so sized by this block only
            local = found - next_id
            closes = np.full(len(found), index, dtype=np.int64)
            is_edge = np.zeros(len(id_values), dtype=bool)
            if right < width:
                on_right = _present(ids[:, -1], next_id, len(id_values))
                is_edge |= on_right
                closes = np.where(on_right[local], index + 1, closes)
            if bottom < height:
                on_bottom = _present(ids[-1], next_id, len(id_values))
                is_edge |= on_bottom
                closes = np.where(on_bottom[local], index + columns, closes)
            if left > 0:
                is_edge |= _present(ids[:, 0], next_id, len(id_values))
            if top > 0:
                is_edge |= _present(ids[0], next_id, len(id_values))
            done: list[Region] = []
            for polygon, region, close in zip(polygons, local, closes, strict=False):
                value = int(id_values[region])
                if is_edge[region]:
                    groups.add(int(region) + next_id, value, polygon, int(close))
                else:
                    done.append((value, polygon))
            # join facing pixels of one value across the left and the top edge
            pairs = []
            if left_ids is not None and left_values is not None:
                pairs.append((left_ids, left_values, ids[:, 0], classes[:, 0]))
            if top > 0:
                pairs.append((above_ids[left:right], above_values[left:right], ids[0], classes[0]))
            for there, there_values, here, here_values in pairs:
                same = (there > 0) & (here > 0) & (there_values == here_values)
                for a, b in set(zip(there[same].tolist(), here[same].tolist(), strict=False)):
                    groups.join(a, b)
            left_ids, left_values = ids[:, -1].copy(), classes[:, -1].astype(np.int64)
            below_ids[left:right], below_values[left:right] = ids[-1], classes[-1]
            next_id += len(id_values)
            yield done + groups.close(index)
        above_ids, above_values = below_ids, below_values
    assert not groups.groups


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
