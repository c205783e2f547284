"""Cut a scene into georeferenced GeoTIFF tiles: the grid plan, its split, the pass over the tiles.

One tile goes from the scene to disk at a time (TorchGeo's ``GriddedPatchSampler``
plans the grid, the scene dataset reads each tile), so memory does not grow with the
scene. The folder is a tile set (:mod:`geocl.data.tileset`: ``tiles.json``, ``tiles.gpkg``,
``images/r0000_c0000.tif``, ``masks/...``), checked before any work, its tiles reused when
they read back as this run would write them, every file written atomically: an
interrupted run resumes where it stopped and ends with the same files.

Splits are drawn per spatial block (``split_block`` px square, :mod:`geocl.data.block_splits`)
so train, val and test tiles come from different places; a val or test tile that overlaps a train tile
(possible when ``stride < size``) is dropped. When a split ends up empty (a scene
with too few blocks), the summary warns and names a split block that fills it.

Mask tiles hold integer classes (see :class:`~geocl.data.scene.SceneMask`): a float
mask is written in the smallest integer dtype that holds its classes and nodata.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import shapely
import torch
from rasterio.crs import CRS
from rasterio.enums import Resampling
from torchgeo.samplers import GriddedPatchSampler
from tqdm.auto import tqdm

from geocl.data.block_splits import Cell, draw_block_splits
from geocl.data.rasters import bounded_memory, scene_read_error
from geocl.data.remote import is_remote
from geocl.data.roi import check_roi_overlaps, read_roi
from geocl.data.scene import SceneImage, SceneMask, labelled_scene
from geocl.data.stac import StacRaster
from geocl.data.stats import RunningBandStats, add_valid_pixels, scene_band_stats, scene_stats, valid_pixels
from geocl.data.tileset import (
    INDEX_FILE,
    INDEX_LAYER,
    METADATA_FILE,
    SPLITS,
    TileLayout,
    TileSetWriter,
    TileSpec,
    TilingSummary,
    check_tile_folder,
    class_histogram,
    read_metadata,
    start_metadata,
    write_index,
    write_metadata,
)
from geocl.errors import InvalidInputError
from geocl.io import check_output_folder

# INDEX_FILE ... read_metadata are geocl.data.tileset's, named here too for the modules that import them from here
__all__ = [
    "INDEX_FILE",
    "INDEX_LAYER",
    "METADATA_FILE",
    "SPLITS",
    "PlannedTile",
    "TilingOptions",
    "TilingSummary",
    "draw_block_splits",
    "grid_cells",
    "read_metadata",
    "split_cells",
    "tile_scene",
]

#: Option keys that differ from the :class:`TilingOptions` field (the name users give).
OPTION_KEYS = {"split_fractions": "split"}


@dataclass(frozen=True)
class TilingOptions:
    """What defines a tile set; a rerun into the same folder must use the same options.

    Attributes:
        size: tile side (px).
        stride: distance between tile origins (px); ``stride < size`` overlaps tiles.
        max_nodata: tiles whose nodata fraction is above this are skipped.
        split_block: side of the square blocks that get one split each (px).
        split_fractions: fractions of blocks for train, val and test.
        seed: seed of the block-to-split draw.
        roi: the ROI file, if any.
        mask_nodata: the mask value that means "unlabelled" when the mask file sets no
            nodata (0 is common), or None: the file's nodata (see :class:`SceneMask`).
        assets: for a STAC scene: the asset keys stacked as the tiles' bands, in order
            (see :mod:`geocl.data.stac`), or None (the items' one raster asset).
    """

    size: int = 256
    stride: int = 256
    max_nodata: float = 0.2
    split_block: int = 1024
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    roi: str | None = None
    mask_nodata: int | None = None
    assets: tuple[str, ...] | None = None

    def validate(self) -> None:
        """Raise :class:`GeoclError` naming the first bad option."""
        if self.size < 8:
            raise InvalidInputError(f"tile size must be >= 8 px, got {self.size}", key="size")
        if not 1 <= self.stride:
            raise InvalidInputError(f"stride must be >= 1 px, got {self.stride}", key="stride")
        if not 0.0 <= self.max_nodata <= 1.0:
            raise InvalidInputError(f"must be within [0, 1], got {self.max_nodata}", key="max_nodata")
        if self.split_block < self.stride:
            raise InvalidInputError(
                f"split block ({self.split_block} px) must be >= stride ({self.stride} px)", key="split_block"
            )
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
            raise InvalidInputError(f"need 3 non-negative fractions summing to 1, got {fractions}", key="split")


@dataclass(frozen=True)
class PlannedTile:
    """One cell of the tile grid.

    Attributes:
        row: grid row, 0 at the top.
        col: grid column, 0 at the left.
        bounds: (xmin, ymin, xmax, ymax) in map units of the scene CRS.
        split: ``"train"``, ``"val"`` or ``"test"``.
    """

    row: int
    col: int
    bounds: tuple[float, float, float, float]
    split: str

    @property
    def name(self) -> str:
        """File name of the tile."""
        return f"r{self.row:04d}_c{self.col:04d}.tif"


Box = tuple[float, float, float, float]


def grid_cells(dataset: Any, options: TilingOptions, roi: shapely.Geometry | None) -> dict[Cell, Box]:
    """The tile grid over a TorchGeo dataset (scene or labelled scene), inside ``roi`` (dataset CRS) when given.

    Returns:
        (row, col) -> bounds (xmin, ymin, xmax, ymax), row 0 at the top.

    Raises:
        GeoclError: if the tile is larger than the scene (or the part inside the ROI).
    """
    res_x, res_y = dataset.res
    footprint = dataset.index.geometry.union_all()
    area = footprint if roi is None else roi
    left, bottom, right, top = area.bounds
    width_px, height_px = (right - left) / res_x, (top - bottom) / res_y
    if options.size > round(width_px) or options.size > round(height_px):
        where = "the part of the scene inside the ROI" if roi is not None else "the scene"
        raise InvalidInputError(
            f"tile size {options.size} px is larger than {where} ({round(width_px)} x {round(height_px)} px)",
            key="size",
        )
    sampler = GriddedPatchSampler(dataset, size=options.size, stride=options.stride, roi=roi)
    boxes = [(x.start, y.start, x.stop, y.stop) for x, y in sampler]
    x0 = min(box[0] for box in boxes)
    y_top = max(box[3] for box in boxes)
    step_x, step_y = options.stride * res_x, options.stride * res_y
    return {(round((y_top - box[3]) / step_y), round((box[0] - x0) / step_x)): box for box in boxes}


def split_cells(
    cells: dict[Cell, Box], options: TilingOptions, cell_classes: dict[Cell, dict[int, int]] | None = None
) -> tuple[list[PlannedTile], int]:
    """Draw the split of each grid cell (:func:`draw_block_splits`, stratified by ``cell_classes`` when given).

    Returns:
        The tiles in row-major order, without the val/test tiles that overlap a tile of a
        higher-priority split, and how many of those were dropped.
    """

    def block_of(cell: Cell) -> Cell:
        return (cell[0] * options.stride // options.split_block, cell[1] * options.stride // options.split_block)

    block_classes: dict[Cell, dict[int, int]] = {block_of(cell): {} for cell in cells}
    for cell, histogram in (cell_classes or {}).items():
        if cell in cells:
            total = block_classes[block_of(cell)]
            for value, count in histogram.items():
                total[value] = total.get(value, 0) + count
    block_split = draw_block_splits(
        block_classes, options.split_fractions, options.seed, stratify=cell_classes is not None
    )
    tiles = [PlannedTile(row, col, cells[row, col], block_split[block_of((row, col))]) for row, col in sorted(cells)]
    kept = _drop_cross_split_overlaps(tiles, options)
    return kept, len(tiles) - len(kept)


def _drop_cross_split_overlaps(tiles: list[PlannedTile], options: TilingOptions) -> list[PlannedTile]:
    """Keep a tile only if no tile of a higher-priority split (train > val > test) overlaps it."""
    priority = {name: rank for rank, name in enumerate(SPLITS)}
    by_cell = {(tile.row, tile.col): tile for tile in tiles}
    reach = math.ceil(options.size / options.stride) - 1
    kept = []
    for tile in tiles:
        clash = any(
            (other := by_cell.get((tile.row + dr, tile.col + dc))) is not None
            and priority[other.split] < priority[tile.split]
            for dr in range(-reach, reach + 1)
            for dc in range(-reach, reach + 1)
        )
        if not clash:
            kept.append(tile)
    return kept


def _missing_split_warning(
    cells: dict[Cell, Box],
    options: TilingOptions,
    summary: TilingSummary,
    skipped: set[Cell],
    cell_classes: dict[Cell, dict[int, int]] | None = None,
) -> str | None:
    """Say which splits got no tile and which split block would give every split tiles."""
    wanted = [name for name, fraction in zip(SPLITS, options.split_fractions, strict=True) if fraction > 0]
    missing = [name for name in wanted if summary.splits[name] == 0]
    if not missing:
        return None
    what = " and no ".join(missing)
    side = options.split_block
    blocks = len({(row * options.stride // side, col * options.stride // side) for row, col in cells})
    cover = (
        f"{blocks} split blocks of {options.split_block} px cover the tiled area"
        if blocks != 1
        else f"one split block of {options.split_block} px covers the tiled area"
    )
    # the largest block (a multiple of the stride, at most 32 tried) that gives every wanted split a tile
    blocks_to_try = list(range(options.stride * ((options.split_block - 1) // options.stride), 0, -options.stride))
    if len(blocks_to_try) > 32:
        blocks_to_try = blocks_to_try[:: math.ceil(len(blocks_to_try) / 32)] + [options.stride]
    for block in blocks_to_try:
        tiles, _ = split_cells(cells, replace(options, split_block=block), cell_classes)
        counts = {name: 0 for name in SPLITS}
        for tile in tiles:
            if (tile.row, tile.col) not in skipped:
                counts[tile.split] += 1
        if all(counts[name] > 0 for name in wanted):
            return f"no {what} tiles: {cover}; pass --split-block {block} to give every split tiles"
    return f"no {what} tiles: {cover}, and no smaller --split-block helps; use a smaller --size or a larger scene"


def tile_scene(
    scene: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mask: str | os.PathLike[str] | None = None,
    options: TilingOptions | None = None,
    progress: bool = True,
) -> TilingSummary:
    """Cut a scene (and optionally its mask) into GeoTIFF tiles with an index.

    The inputs are opened (headers only) before the output folder is made: a scene that
    is missing, unreadable, or remote and refused or unreachable leaves nothing behind.

    Args:
        scene: a GeoTIFF or a folder of GeoTIFFs (same band count; CRSs may differ); a
            remote file (``https://``, ``s3://``, ``gs://``, ``/vsi…``), read in windows;
            or a STAC document, its items' ``options.assets`` stacked as bands and the
            items mosaicked (see :func:`~geocl.data.rasters.find_rasters`).
        out: output folder; rerunning into it resumes an interrupted run.
        mask: a one-band class mask (file or folder) overlapping the scene.
        options: tile size, stride, nodata limit, split and ROI.
        progress: show tqdm bars.

    Returns:
        A :class:`~geocl.data.tileset.TilingSummary`.

    Raises:
        GeoclError: for any bad input, naming the file or option.
    """
    with bounded_memory():
        return _tile_scene(scene, out, mask, options or TilingOptions(), progress)


@dataclass(frozen=True)
class _Inputs:
    """The opened scene (and mask) of a run, and the files ``tiles.json`` records for them."""

    image: SceneImage
    mask: SceneMask | None
    dataset: Any  # the scene, or the scene and its mask
    sources: dict[str, list[str]]

    @property
    def layout(self) -> TileLayout:
        return TileLayout(
            crs=self.image.crs.to_wkt(),
            res=(self.image.res[0], self.image.res[1]),
            bands=self.image.band_count,
            dtype=self.image.source_dtype,
            nodata=self.image.nodata_value,
            mask_nodata=self.mask.mask_nodata if self.mask else None,
        )


def _open_inputs(scene: Any, mask: Any, options: TilingOptions) -> _Inputs:
    """Open the scene and mask (headers only) on the scene's grid."""
    image_ds = SceneImage(scene, dtype=torch.float64, resampling=Resampling.nearest, assets=options.assets)
    mask_ds = (
        SceneMask(mask, crs=image_ds.crs, res=image_ds.res, nodata=options.mask_nodata) if mask is not None else None
    )
    dataset = labelled_scene(image_ds, mask_ds) if mask_ds is not None else image_ds
    sources = {
        "scene": [str(info.path.resolve()) for info in image_ds.infos],
        "mask": [str(info.path.resolve()) for info in mask_ds.infos] if mask_ds else [],
    }
    return _Inputs(image_ds, mask_ds, dataset, sources)


def _tile_scene(
    scene: str | os.PathLike[str],
    out: str | os.PathLike[str],
    mask: str | os.PathLike[str] | None,
    options: TilingOptions,
    progress: bool,
) -> TilingSummary:
    options.validate()
    if options.mask_nodata is not None and mask is None:
        raise InvalidInputError("an unlabelled mask value needs a mask; give --mask too", key="mask_nodata")
    inputs = _open_inputs(scene, mask, options)
    out = check_output_folder(out, key="out")  # after the inputs: a bad input leaves no folder behind
    recorded = asdict(options)
    check_tile_folder(out, recorded, inputs.sources, OPTION_KEYS)
    roi = None
    if options.roi is not None:
        footprint = inputs.dataset.index.geometry.union_all()
        roi = check_roi_overlaps(read_roi(options.roi, inputs.dataset.crs), footprint, options.roi)
    # A remote scene's statistics come from the tiles as they are read: a pass of its own
    # would fetch every block twice. A local scene's come from all its pixels (cached), read
    # before anything is written: an all-nodata scene is refused with nothing left behind.
    remote = any(_is_remote_source(info.path) for info in inputs.image.infos)
    stats = None if remote else scene_band_stats(inputs.image.infos, progress=progress)
    running = RunningBandStats(inputs.image.band_count) if remote else None
    cells = grid_cells(inputs.dataset, options, roi)
    cell_classes = _cell_class_counts(inputs.mask, cells, progress) if inputs.mask is not None else None
    tiles, dropped = split_cells(cells, options, cell_classes)
    start_metadata(out, recorded, inputs.sources)

    summary = TilingSummary(out=out, index=out / INDEX_FILE, dropped_overlap=dropped)
    writer = _TileWriter(inputs, options, summary, running)
    for tile in tqdm(tiles, desc="tiling", unit="tile", disable=not progress):
        writer.add(tile)
    if not writer.tiles.rows:
        raise InvalidInputError(
            f"no tile has at most {options.max_nodata:.0%} nodata; raise --max-nodata or check the scene", path=scene
        )
    rows = writer.finish()
    split_warning = _missing_split_warning(cells, options, summary, writer.skipped, cell_classes)
    if split_warning is not None:
        summary.warnings.append(split_warning)
    write_index(summary.index, rows, inputs.dataset.crs)
    if running is not None:  # a remote scene's, over its tiles (a pixel in two overlapping tiles counts twice)
        stats = scene_stats(running, scene)
    assert stats is not None  # a local scene's: read before the pass
    write_metadata(out, recorded, inputs.sources, inputs.layout, summary, stats)
    return summary


class _TileWriter:
    """The pass over the planned tiles: reuse or read each, skip it for nodata, else write and keep it
    (counted in ``summary``; the pixels read added to ``running``, a remote scene's band statistics)."""

    def __init__(
        self, inputs: _Inputs, options: TilingOptions, summary: TilingSummary, running: RunningBandStats | None
    ) -> None:
        self.inputs, self.options, self.summary, self.running = inputs, options, summary, running
        self.nodata = inputs.image.nodata_value
        self.tiles = TileSetWriter(
            summary,
            CRS.from_wkt(inputs.dataset.crs.to_wkt()),
            inputs.dataset.res,
            TileSpec(inputs.image.band_count, inputs.image.source_dtype, options.size),
            TileSpec(1, inputs.mask.class_dtype, options.size) if inputs.mask else None,
            self.nodata,
            inputs.mask.mask_nodata if inputs.mask else None,
        )
        #: class pixels of each tile kept, in the order of ``self.tiles.rows``
        self.histograms: list[dict[int, int]] = []
        #: the cells of the tiles skipped for nodata
        self.skipped: set[Cell] = set()

    def add(self, tile: PlannedTile) -> None:
        """Reuse or write one tile; skip it when its nodata fraction is above ``max_nodata``."""
        stored = self.tiles.stored(tile.name, tile.bounds)
        if stored is None:
            image, label = _read_scene(self.inputs.dataset, tile, self.inputs.image, self.inputs.mask)
        else:
            image, label = stored
        valid = valid_pixels(image, self.nodata)
        if self.running is not None:  # scene_band_stats' rule
            add_valid_pixels(self.running, image, self.nodata if self.nodata is not None else 0.0)
        nodata_fraction = 1.0 - float(valid.mean())
        if nodata_fraction > self.options.max_nodata:
            self.summary.skipped_nodata += 1
            self.skipped.add((tile.row, tile.col))
            return
        if stored is not None:
            self.summary.reused += 1
        else:
            self.tiles.write(tile.name, tile.bounds, image, label)
        row = {
            "path": f"images/{tile.name}",
            "mask_path": f"masks/{tile.name}" if label is not None else None,
            "split": tile.split,
            "row": tile.row,
            "col": tile.col,
            "nodata_fraction": nodata_fraction,
            "geometry": shapely.box(*tile.bounds),
        }
        self.histograms.append(class_histogram(label, valid, self.tiles.mask_nodata) if label is not None else {})
        self.tiles.keep(tile.split, row, self.histograms[-1])

    def finish(self) -> list[dict[str, Any]]:
        """The index rows, with a class-pixel column of each class seen; the classes and the class
        pixels of every split in the summary."""
        summary = self.summary
        summary.classes = sorted({value for histogram in self.histograms for value in histogram})
        for row, histogram in zip(self.tiles.rows, self.histograms, strict=True):
            for value in summary.classes:
                row[f"class_{value}"] = histogram.get(value, 0)
        summary.warn_if_replaced()
        summary.class_pixels = (
            {
                name: {value: summary.class_pixels.get(name, {}).get(value, 0) for value in summary.classes}
                for name in SPLITS
            }
            if summary.classes
            else {}
        )
        return self.tiles.rows


def _is_remote_source(path: Any) -> bool:
    """Whether a scene file is read over the network (a URL, ``/vsi…`` path, or a STAC item with one remote asset)."""
    if isinstance(path, StacRaster):
        return any(is_remote(href) for href in path.hrefs)
    return is_remote(path)


def _read_scene(
    dataset: Any, tile: PlannedTile, image_ds: SceneImage, mask_ds: SceneMask | None
) -> tuple[np.ndarray, np.ndarray | None]:
    xmin, ymin, xmax, ymax = tile.bounds
    try:
        sample = dataset[xmin:xmax, ymin:ymax]
    except rasterio.errors.RasterioError as error:
        paths = [info.path for info in image_ds.infos] + ([info.path for info in mask_ds.infos] if mask_ds else [])
        raise scene_read_error(error, paths, "cannot read pixels (corrupt file?)", image_ds.source) from None
    image = sample["image"].numpy().astype(image_ds.source_dtype)
    label = None
    if mask_ds is not None:
        label = sample["mask"].numpy().astype(mask_ds.class_dtype)
    return image, label


def _cell_class_counts(mask_ds: SceneMask, cells: dict[Cell, Box], progress: bool) -> dict[Cell, dict[int, int]]:
    """Class pixel counts of every grid cell, read from the mask one cell at a time (bounded memory)."""
    counts: dict[Cell, dict[int, int]] = {}
    nodata = mask_ds.mask_nodata
    for cell, (xmin, ymin, xmax, ymax) in tqdm(
        sorted(cells.items()), desc="class counts", unit="tile", disable=not progress, leave=False
    ):
        try:
            label = mask_ds[xmin:xmax, ymin:ymax]["mask"].numpy()
        except rasterio.errors.RasterioError as error:
            paths = [info.path for info in mask_ds.infos]
            raise scene_read_error(error, paths, "cannot read pixels (corrupt file?)", mask_ds.source) from None
        counts[cell] = class_histogram(label, np.ones(label.shape, dtype=bool), nodata)
    return counts
