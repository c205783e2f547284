"""Cut a scene into georeferenced GeoTIFF tiles with a GeoPackage tile index.

One tile goes from the scene to disk at a time (TorchGeo's ``GriddedPatchSampler``
plans the grid, the scene dataset reads each tile), so memory does not grow with
the scene. Every file is written atomically, and a rerun into the same folder
reads back the tiles that exist and writes only the missing ones, so an
interrupted run resumes where it stopped and ends with the same files.

A tile file is trusted by more than its name: a rerun goes on only in a folder whose
``tiles.json`` records the same options and input files (tiles without it are refused,
and a changed option is named), and a tile is reused only when its size, bounds, band
count and dtype are what this run would write and its pixels read back; otherwise it
is written again.

Layout of the output folder::

    OUT/tiles.json          options, band statistics, classes, split counts
    OUT/tiles.gpkg          layer "tiles": one polygon per tile
    OUT/images/r0000_c0000.tif
    OUT/masks/r0000_c0000.tif   (with --mask)

Splits are drawn per spatial block (``split_block`` px square) so train, val and test
tiles come from different places; a val or test tile that overlaps a train tile
(possible when ``stride < size``) is dropped. When a split ends up empty (a scene
with too few blocks), the summary warns and names a split block that fills it.

Mask tiles hold integer classes (see :class:`~geocl.data.scene.SceneMask`): a float
mask is written in the smallest integer dtype that holds its classes and nodata.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.errors
import shapely
import torch
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from torchgeo.samplers import GriddedPatchSampler
from tqdm.auto import tqdm

from geocl.data.rasters import bounded_memory, geotiff_profile, scene_read_error
from geocl.data.roi import check_roi_overlaps, read_roi
from geocl.data.scene import SceneImage, SceneMask, labelled_scene
from geocl.data.remote import is_remote
from geocl.data.stac import StacRaster
from geocl.data.stats import BandStats, RunningBandStats, add_valid_pixels, scene_band_stats, valid_pixels
from geocl.errors import GeoclError
from geocl.io import atomic_path, atomic_write_bytes, atomic_write_text, check_output_folder, write_failure

SPLITS = ("train", "val", "test")
INDEX_FILE = "tiles.gpkg"
INDEX_LAYER = "tiles"
METADATA_FILE = "tiles.json"
_FORMAT_VERSION = 1


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
            raise GeoclError(f"tile size must be >= 8 px, got {self.size}", key="size")
        if not 1 <= self.stride:
            raise GeoclError(f"stride must be >= 1 px, got {self.stride}", key="stride")
        if not 0.0 <= self.max_nodata <= 1.0:
            raise GeoclError(f"must be within [0, 1], got {self.max_nodata}", key="max_nodata")
        if self.split_block < self.stride:
            raise GeoclError(
                f"split block ({self.split_block} px) must be >= stride ({self.stride} px)",
                key="split_block",
            )
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
            raise GeoclError(f"need 3 non-negative fractions summing to 1, got {fractions}", key="split")


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


@dataclass
class TilingSummary:
    """What a tiling run did.

    Attributes:
        out: the output folder.
        index: the GeoPackage tile index.
        written: tiles written by this run.
        reused: tiles found complete from an earlier run.
        skipped_nodata: tiles skipped for too much nodata.
        dropped_overlap: val/test tiles dropped because they overlap a train tile.
        splits: tiles kept per split.
        classes: class values seen in the mask (empty without a mask).
        replaced: tiles found damaged or not matching this run, written again (in ``written``).
        class_pixels: labelled pixels per class in each split's tiles, ``{split: {class: count}}``
            (empty without a mask); ``tiles.json`` stores it with the classes as strings.
        warnings: what the user should know about the result, with the option to change.
    """

    out: Path
    index: Path
    written: int = 0
    reused: int = 0
    skipped_nodata: int = 0
    dropped_overlap: int = 0
    splits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    classes: list[int] = field(default_factory=list)
    replaced: int = 0
    class_pixels: dict[str, dict[int, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """A short human-readable report."""
        kept = sum(self.splits.values())
        parts = ", ".join(f"{name} {count}" for name, count in self.splits.items())
        lines = [
            f"{kept} tiles in {self.out} ({parts})",
            f"  written {self.written}, already there {self.reused}, "
            f"skipped for nodata {self.skipped_nodata}, dropped for train overlap {self.dropped_overlap}",
            f"  index: {self.index}",
        ]
        if self.classes:
            lines.append(f"  mask classes: {self.classes}")
        for name, pixels in self.class_pixels.items():
            shown = ", ".join(f"{value}: {count:,}" for value, count in pixels.items())
            lines.append(f"  {name} pixels per class: {shown}")
        lines.extend(f"  warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


def plan_tiles(
    dataset: Any,
    options: TilingOptions,
    roi: shapely.Geometry | None = None,
    cell_classes: dict[Cell, dict[int, int]] | None = None,
) -> tuple[list[PlannedTile], int]:
    """Lay the tile grid over a TorchGeo dataset and draw the split of each tile.

    Args:
        dataset: a TorchGeo ``GeoDataset`` (scene or labelled scene).
        options: tiling options.
        roi: region of interest in the dataset CRS, or None for the whole scene.
        cell_classes: class pixel counts of each grid cell (from the mask), which
            stratify the draw (see :func:`draw_block_splits`); None draws by place only.

    Returns:
        The tiles in row-major order (top row first), without the val/test tiles that
        overlap a tile of a higher-priority split, and how many of those were dropped.

    Raises:
        GeoclError: if the tile is larger than the scene (or the part inside the ROI).
    """
    return _split_cells(_grid_cells(dataset, options, roi), options, cell_classes)


Cell = tuple[int, int]
Box = tuple[float, float, float, float]


def _grid_cells(dataset: Any, options: TilingOptions, roi: shapely.Geometry | None) -> dict[Cell, Box]:
    """The tile grid: (row, col) -> bounds, row 0 at the top."""
    res_x, res_y = dataset.res
    footprint = dataset.index.geometry.union_all()
    area = footprint if roi is None else roi
    left, bottom, right, top = area.bounds
    width_px, height_px = (right - left) / res_x, (top - bottom) / res_y
    if options.size > round(width_px) or options.size > round(height_px):
        where = "the part of the scene inside the ROI" if roi is not None else "the scene"
        raise GeoclError(
            f"tile size {options.size} px is larger than {where} "
            f"({round(width_px)} x {round(height_px)} px)",
            key="size",
        )
    sampler = GriddedPatchSampler(dataset, size=options.size, stride=options.stride, roi=roi)
    boxes = [(x.start, y.start, x.stop, y.stop) for x, y in sampler]
    x0 = min(box[0] for box in boxes)
    y_top = max(box[3] for box in boxes)
    step_x, step_y = options.stride * res_x, options.stride * res_y
    cells = {
        (round((y_top - box[3]) / step_y), round((box[0] - x0) / step_x)): box for box in boxes
    }
    return cells


def _split_cells(
    cells: dict[Cell, Box], options: TilingOptions, cell_classes: dict[Cell, dict[int, int]] | None = None
) -> tuple[list[PlannedTile], int]:
    """Draw the split of each grid cell; drop val/test tiles that overlap a higher split."""
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
    tiles = [
        PlannedTile(row, col, cells[row, col], block_split[block_of((row, col))]) for row, col in sorted(cells)
    ]
    kept = _drop_cross_split_overlaps(tiles, options)
    return kept, len(tiles) - len(kept)


#: A class is promised a place in the test split when its pixels lie in at least this
#: many split blocks: one each for train, val and test.
SPREAD_CLASS_BLOCKS = 3


def draw_block_splits(
    block_classes: dict[Cell, dict[int, int]],
    fractions: tuple[float, float, float],
    seed: int,
    *,
    stratify: bool = True,
) -> dict[Cell, str]:
    """Give every split block (``(block_row, block_col)``) a split, spread over the scene.

    The rule, so that a test split can carry a claim about the whole scene:

    1. **Spread.** The blocks are walked in serpentine order (left to right on even
       block rows, right to left on odd ones), so consecutive blocks are neighbours,
       and cut into ``n_val + n_test`` runs of near-equal length; each run gives one
       held-out block. Held-out runs alternate between test and val by an even
       (largest-remainder) sequence with a seeded phase, so both splits reach every
       part of the scene instead of one corner.
    2. **Stratify** (with class counts). Each run's block is then chosen among the run's
       blocks by coordinate ascent over the runs: the split's classes present first, then
       the L1 distance of its class shares to the scene's, the other runs' choices held
       fixed, sweeping until nothing changes. Without counts (no mask) the block of a run
       is a seeded draw.
    3. **Cover.** A class whose pixels lie in at least :data:`SPREAD_CLASS_BLOCKS`
       blocks but in no test block gets its largest train block moved to test, in
       exchange for the test block whose loss costs the test split no class (train
       keeps a block of the class, val is not touched).

    Every split with a fraction > 0 gets a block when there are 3 blocks or more.
    Deterministic for a seed.

    Args:
        block_classes: class -> pixel count of every block (empty dicts: no mask).
        fractions: shares of blocks for train, val and test.
        seed: seed of the phase and the within-run draws.
        stratify: use the class counts (steps 2 and 3).

    Returns:
        block -> ``"train"``, ``"val"`` or ``"test"``.
    """
    blocks = sorted(block_classes, key=lambda block: (block[0], block[1] if block[0] % 2 == 0 else -block[1]))
    n = len(blocks)
    _, val_fraction, test_fraction = fractions
    n_val, n_test = round(val_fraction * n), round(test_fraction * n)
    if n >= 3:  # every split gets a block when there are enough of them
        n_val = max(n_val, 1) if val_fraction > 0 else 0
        n_test = max(n_test, 1) if test_fraction > 0 else 0
    n_held = min(n_val + n_test, n)
    n_test = min(n_test, n_held)
    split = dict.fromkeys(blocks, "train")
    if n_held == 0:
        return split
    rng = np.random.default_rng(seed)
    phase = rng.random()
    run_splits = [
        "test" if math.floor((k + 1 + phase) * n_test / n_held) > math.floor((k + phase) * n_test / n_held) else "val"
        for k in range(n_held)
    ]
    classes = sorted({value for counts in block_classes.values() for value in counts})
    stratify = stratify and bool(classes)
    scene = np.array([sum(block_classes[b].get(c, 0) for b in blocks) for c in classes], dtype=float)
    scene_share = scene / scene.sum() if stratify else scene

    def vector(block: Cell) -> np.ndarray:
        return np.array([block_classes[block].get(c, 0) for c in classes], dtype=float)

    runs = [[blocks[i] for i in rng.permutation(run)] for run in np.array_split(np.arange(n), n_held)]
    chosen = [candidates[0] for candidates in runs]  # the seeded draw; stratified below
    if stratify:

        def score(counts: np.ndarray) -> tuple[int, float]:
            total = counts.sum()
            distance = float(np.abs(counts / total - scene_share).sum()) if total else 2.0
            return int(np.sum(counts > 0)), -distance

        # coordinate ascent: each run in turn takes the candidate that gives its split the
        # most classes, then shares closest to the scene's, the other runs' choices fixed;
        # a sweep that changes nothing ends it (a few sweeps in practice)
        for _ in range(10):
            changed = False
            for k, (candidates, name) in enumerate(zip(runs, run_splits, strict=True)):
                others = sum(
                    (vector(chosen[j]) for j, other in enumerate(run_splits) if other == name and j != k),
                    np.zeros(len(classes)),
                )
                best = max(candidates, key=lambda block: score(others + vector(block)))
                if score(others + vector(best)) > score(others + vector(chosen[k])):
                    chosen[k], changed = best, True
            if not changed:
                break
    for block, name in zip(chosen, run_splits, strict=True):
        split[block] = name
    if stratify:
        _cover_test_classes(split, blocks, classes, vector)
    return split


def _cover_test_classes(
    split: dict[Cell, str], blocks: list[Cell], classes: list[int], vector: Any
) -> None:
    """Move a train block of each spread class missing from test into test (rule 3 above)."""
    holders = {c: [b for b in blocks if vector(b)[i] > 0] for i, c in enumerate(classes)}
    for i, value in enumerate(classes):
        if len(holders[value]) < SPREAD_CLASS_BLOCKS or any(split[b] == "test" for b in holders[value]):
            continue
        train_holders = [b for b in holders[value] if split[b] == "train"]
        if len(train_holders) < 2:  # train keeps at least one block of the class
            continue
        incoming = max(train_holders, key=lambda b: vector(b)[i])
        test_blocks = [b for b in blocks if split[b] == "test"]

        def classes_only_there(block: Cell) -> int:
            others = sum((vector(b) for b in test_blocks if b != block), np.zeros(len(classes)))
            return int(np.sum((vector(block) > 0) & (others == 0)))

        outgoing = min(test_blocks, key=classes_only_there) if test_blocks else None
        if outgoing is not None and classes_only_there(outgoing) > 0:
            continue  # every test block holds a class no other one has: no free swap
        split[incoming] = "test"
        if outgoing is not None:
            split[outgoing] = "train"


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


def _rio_crs(dataset: Any) -> CRS:
    return CRS.from_wkt(dataset.crs.to_wkt())


def _write_tile(path: Path, array: np.ndarray, transform: Any, crs: CRS, nodata: float | None) -> None:
    predictor = 3 if np.issubdtype(array.dtype, np.floating) else 2
    profile = geotiff_profile(
        array.shape, array.dtype.name, crs=crs, transform=transform, nodata=nodata,
        compress="deflate", predictor=predictor,
    )
    with atomic_path(path) as temp, rasterio.open(temp, "w", **profile) as dst:
        dst.write(array)


@dataclass(frozen=True)
class _TileSpec:
    """What a tile file of this run holds besides its bounds: band count, dtype, side (px)."""

    count: int
    dtype: str
    size: int


def _reusable(path: Path, spec: _TileSpec, bounds: Box, res: tuple[float, float]) -> np.ndarray | None:
    """The pixels of an existing tile file if it is what this run would write there, else None.

    None for a missing, truncated or unreadable file, and for one whose band count, dtype,
    size or bounds (within a thousandth of a pixel) differ.
    """
    if not path.exists():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a cut header: rewritten
            with rasterio.open(path) as src:
                shape = (src.count, src.dtypes[0], src.width, src.height)
                if shape != (spec.count, spec.dtype, spec.size, spec.size):
                    return None
                tolerance = min(res) * 1e-3
                if not np.allclose(tuple(src.bounds), bounds, rtol=0, atol=tolerance):
                    return None
                return src.read()
    except (rasterio.errors.RasterioError, OSError):
        return None


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A write the disk refused (full, permissions changed: :func:`geocl.io.write_failure`) as a
    user error naming the file and how to go on; any other error (a bug) passes with its traceback."""
    try:
        yield
    except Exception as error:
        failure = write_failure(error, path)
        if failure is None:
            raise
        failure.args = (f"{failure.args[0]}; free some space or fix the permissions, then rerun to resume",)
        raise failure from None


#: Option keys that differ from the :class:`TilingOptions` field (the name users give).
_OPTION_KEYS = {"split_fractions": "split"}
#: Input files recorded in ``tiles.json``, by option key.
_SOURCE_KEYS = ("scene", "mask")


def _holds_tiles(out: Path) -> bool:
    if (out / INDEX_FILE).exists():
        return True
    return any(
        not path.name.startswith(".") for sub in ("images", "masks") for path in (out / sub).glob("*.tif")
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GeoclError(
            f"cannot be read ({error}); use a new output folder or delete {path.parent}", path=path
        ) from None
    if not isinstance(data, dict):
        raise GeoclError(f"is not what `geocl tile` writes; use a new output folder or delete {path.parent}", path=path)
    return data


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return " ".join(str(item) for item in value)
    return str(value)


def _files_differ(was: list[str], now: list[str]) -> str:
    if len(was) <= 1 and len(now) <= 1:
        return f"was {was[0] if was else 'none'}, now {now[0] if now else 'none'}"
    parts = []
    if gone := [path for path in was if path not in now]:
        parts.append(f"{len(gone)} file(s) no longer given, e.g. {gone[0]}")
    if new := [path for path in now if path not in was]:
        parts.append(f"{len(new)} new file(s), e.g. {new[0]}")
    return "files differ: " + "; ".join(parts)


def _difference(
    earlier: dict[str, Any], options: TilingOptions, sources: dict[str, list[str]]
) -> tuple[str, str] | None:
    """(option key, what changed) of the first option or input that differs from ``earlier``, or None."""
    was_options = earlier.get("options") if isinstance(earlier.get("options"), dict) else {}
    for name, value in json.loads(json.dumps(asdict(options))).items():
        if was_options.get(name) != value:
            return _OPTION_KEYS.get(name, name), f"was {_shown(was_options.get(name))}, now {_shown(value)}"
    was_sources = earlier.get("sources") if isinstance(earlier.get("sources"), dict) else {}
    for key in _SOURCE_KEYS:
        was, now = was_sources.get(key) or [], sources[key]
        if was != now:
            return key, _files_differ(was, now)
    return None


def _check_tile_folder(out: Path, options: TilingOptions, sources: dict[str, list[str]]) -> None:
    """Refuse a folder whose tiles this run cannot trust, before any work.

    Tiles are reused by name, so a folder may go on only with the options and inputs
    that made its tiles: those ``tiles.json`` records. A folder holding tiles but no
    ``tiles.json`` is refused (their options are unknown), and so is one whose
    ``tiles.json`` differs, naming the first option or input that does. Without tiles
    (a run that stopped before writing one) the new options replace the old.

    Raises:
        GeoclError: naming the folder, or the option that differs.
    """
    metadata_file = out / METADATA_FILE
    if not metadata_file.exists():
        if _holds_tiles(out):
            raise GeoclError(
                f"holds tiles but no {METADATA_FILE}, so nothing says which options made them; "
                "use a new output folder or delete this one",
                path=out, key="out",
            )
        return
    earlier = _read_json(metadata_file)
    difference = _difference(earlier, options, sources)
    if difference is not None and _holds_tiles(out):
        key, change = difference
        raise GeoclError(
            f"{change} for the tiles already in {out}; use a new output folder or delete that one",
            key=key,
        )


def _start_metadata(out: Path, options: TilingOptions, sources: dict[str, list[str]]) -> None:
    """Record the options and inputs before the first tile, so a rerun can check them."""
    metadata_file = out / METADATA_FILE
    if metadata_file.exists() and _difference(_read_json(metadata_file), options, sources) is None:
        return
    with _writing(metadata_file):
        atomic_write_text(
            metadata_file, json.dumps({"options": asdict(options), "sources": sources, "complete": False}, indent=1)
        )


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
        f"{blocks} split blocks of {options.split_block} px cover the tiled area" if blocks != 1
        else f"one split block of {options.split_block} px covers the tiled area"
    )
    # the largest block (a multiple of the stride, at most 32 tried) that gives every wanted split a tile
    blocks_to_try = list(range(options.stride * ((options.split_block - 1) // options.stride), 0, -options.stride))
    if len(blocks_to_try) > 32:
        blocks_to_try = blocks_to_try[:: math.ceil(len(blocks_to_try) / 32)] + [options.stride]
    for block in blocks_to_try:
        tiles, _ = _split_cells(cells, replace(options, split_block=block), cell_classes)
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
        A :class:`TilingSummary`.

    Raises:
        GeoclError: for any bad input, naming the file or option.
    """
    with bounded_memory():
        return _tile_scene(scene, out, mask, options or TilingOptions(), progress)


def _tile_scene(
    scene: str | os.PathLike[str],
    out: str | os.PathLike[str],
    mask: str | os.PathLike[str] | None,
    options: TilingOptions,
    progress: bool,
) -> TilingSummary:
    options.validate()
    if options.mask_nodata is not None and mask is None:
        raise GeoclError("an unlabelled mask value needs a mask; give --mask too", key="mask_nodata")
    image_ds = SceneImage(scene, dtype=torch.float64, resampling=Resampling.nearest, assets=options.assets)
    mask_ds = (
        SceneMask(mask, crs=image_ds.crs, res=image_ds.res, nodata=options.mask_nodata) if mask is not None else None
    )
    out = check_output_folder(out, key="out")  # after the inputs: a bad input leaves no folder behind
    dataset = labelled_scene(image_ds, mask_ds) if mask_ds is not None else image_ds
    sources = {
        "scene": [str(info.path.resolve()) for info in image_ds.infos],
        "mask": [str(info.path.resolve()) for info in mask_ds.infos] if mask_ds else [],
    }
    _check_tile_folder(out, options, sources)
    roi = None
    if options.roi is not None:
        footprint = dataset.index.geometry.union_all()
        roi = check_roi_overlaps(read_roi(options.roi, dataset.crs), footprint, options.roi)
    cells = _grid_cells(dataset, options, roi)
    cell_classes = _cell_class_counts(mask_ds, cells, progress) if mask_ds is not None else None
    tiles, dropped = _split_cells(cells, options, cell_classes)
    _start_metadata(out, options, sources)
    # A remote scene's statistics come from the tiles as they are read: a pass of its own
    # would fetch every block twice. A local scene's come from all its pixels (cached).
    remote = any(_is_remote_source(info.path) for info in image_ds.infos)
    stats = None if remote else scene_band_stats(image_ds.infos, progress=progress)
    running = RunningBandStats(image_ds.band_count) if remote else None

    summary = TilingSummary(out=out, index=out / INDEX_FILE, dropped_overlap=dropped)
    crs = _rio_crs(dataset)
    res = dataset.res
    nodata = image_ds.nodata_value
    mask_nodata = mask_ds.mask_nodata if mask_ds else None
    image_spec = _TileSpec(image_ds.band_count, image_ds.source_dtype, options.size)
    mask_spec = _TileSpec(1, mask_ds.class_dtype, options.size) if mask_ds else None
    rows: list[dict[str, Any]] = []
    histograms: list[dict[int, int]] = []
    skipped: set[Cell] = set()
    for tile in tqdm(tiles, desc="tiling", unit="tile", disable=not progress):
        image_path = out / "images" / tile.name
        mask_path = out / "masks" / tile.name
        image = _reusable(image_path, image_spec, tile.bounds, res)
        label = None
        if image is not None and mask_spec is not None:
            stored = _reusable(mask_path, mask_spec, tile.bounds, res)
            label = None if stored is None else stored[0]
        done = image is not None and (mask_spec is None or label is not None)
        if not done:
            summary.replaced += image_path.exists()
            image, label = _read_scene(dataset, tile, image_ds, mask_ds)
        valid = valid_pixels(image, nodata)
        if running is not None:
            add_valid_pixels(running, image, nodata if nodata is not None else 0.0)  # scene_band_stats' rule
        nodata_fraction = 1.0 - float(valid.mean())
        if nodata_fraction > options.max_nodata:
            summary.skipped_nodata += 1
            skipped.add((tile.row, tile.col))
            continue
        if done:
            summary.reused += 1
        else:
            transform = from_origin(tile.bounds[0], tile.bounds[3], *res)
            if label is not None:
                with _writing(mask_path):
                    _write_tile(mask_path, label[None], transform, crs, mask_nodata)
            with _writing(image_path):
                _write_tile(image_path, image, transform, crs, nodata)
            summary.written += 1
        summary.splits[tile.split] += 1
        rows.append(
            {
                "path": f"images/{tile.name}",
                "mask_path": f"masks/{tile.name}" if label is not None else None,
                "split": tile.split,
                "row": tile.row,
                "col": tile.col,
                "nodata_fraction": nodata_fraction,
                "geometry": shapely.box(*tile.bounds),
            }
        )
        histograms.append(_class_histogram(label, valid, mask_nodata) if label is not None else {})
        split_pixels = summary.class_pixels.setdefault(tile.split, {})
        for value, count in histograms[-1].items():
            split_pixels[value] = split_pixels.get(value, 0) + count
    if not rows:
        raise GeoclError(
            f"no tile has at most {options.max_nodata:.0%} nodata; raise --max-nodata or check the scene",
            path=scene,
        )
    summary.classes = sorted({value for histogram in histograms for value in histogram})
    for row, histogram in zip(rows, histograms, strict=True):
        for value in summary.classes:
            row[f"class_{value}"] = histogram.get(value, 0)
    if summary.replaced:
        summary.warnings.append(
            f"{summary.replaced} tile(s) already there were unreadable or did not match this run "
            "and were written again"
        )
    summary.class_pixels = {
        name: {value: summary.class_pixels.get(name, {}).get(value, 0) for value in summary.classes}
        for name in SPLITS
    } if summary.classes else {}
    split_warning = _missing_split_warning(cells, options, summary, skipped, cell_classes)
    if split_warning is not None:
        summary.warnings.append(split_warning)
    with _writing(summary.index):
        _write_index(summary.index, rows, dataset.crs)
    if stats is None:
        stats = _tile_pass_stats(running, scene)
    with _writing(out / METADATA_FILE):
        _write_metadata(out, options, sources, image_ds, mask_nodata, stats, summary)
    return summary


def _is_remote_source(path: Any) -> bool:
    """Whether a scene file is read over the network (a URL, ``/vsi…`` path, or a STAC item with one remote asset)."""
    if isinstance(path, StacRaster):
        return any(is_remote(href) for href in path.hrefs)
    return is_remote(path)


def _tile_pass_stats(running: RunningBandStats | None, scene: Any) -> BandStats:
    """Band statistics of a remote scene over its tiles (a pixel in two overlapping tiles counts twice)."""
    if running is None or running.count == 0:
        raise GeoclError("scene is all nodata: no valid pixel to train on", path=scene)
    return running.result()


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
        counts[cell] = _class_histogram(label, np.ones(label.shape, dtype=bool), nodata)
    return counts


def _class_histogram(label: np.ndarray, valid: np.ndarray, mask_nodata: int | None) -> dict[int, int]:
    keep = valid if mask_nodata is None else valid & (label != mask_nodata)
    values, counts = np.unique(label[keep], return_counts=True)
    return {int(value): int(count) for value, count in zip(values, counts, strict=True)}


#: ``last_change`` written into the tile index. GeoPackage stamps the write time there
#: otherwise, the only byte that differs between two runs on the same inputs; fixed, the
#: same scene and options give the same files (serial or on a cluster, now or later).
INDEX_TIMESTAMP = "2000-01-01T00:00:00.000Z"


def _write_index(path: Path, rows: list[dict[str, Any]], crs: Any) -> None:
    """The tile index as a GeoPackage, built in memory and written by Python in one atomic write.

    In memory (a few hundred bytes a tile), because SQLite writing in place reports a
    full disk as a later statement failing (``no such table: gpkg_contents``), with the
    SQL in the message; Python's write says ``No space left on device`` with the file.
    The bytes are those of a GeoPackage written to disk.
    """
    import pyogrio  # geopandas' writer: its own GDAL, with its own configuration

    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)
    previous = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": INDEX_TIMESTAMP})
    try:
        buffer = io.BytesIO()
        frame.to_file(buffer, layer=INDEX_LAYER, driver="GPKG", engine="pyogrio")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": previous})
    atomic_write_bytes(path, buffer.getvalue())


def _write_metadata(
    out: Path,
    options: TilingOptions,
    sources: dict[str, list[str]],
    image_ds: SceneImage,
    mask_nodata: int | None,
    stats: BandStats,
    summary: TilingSummary,
) -> None:
    metadata = {
        "format_version": _FORMAT_VERSION,
        "options": asdict(options),
        "sources": sources,
        "complete": True,
        "crs": image_ds.crs.to_wkt(),
        "res": list(image_ds.res),
        "bands": image_ds.band_count,
        "dtype": image_ds.source_dtype,
        "nodata": image_ds.nodata_value,
        "mask_nodata": mask_nodata,
        "classes": summary.classes,
        "splits": summary.splits,
        "class_pixels": {name: {str(value): count for value, count in pixels.items()}
                         for name, pixels in summary.class_pixels.items()},
        "band_stats": stats.to_dict(),
    }
    atomic_write_text(out / METADATA_FILE, json.dumps(metadata, indent=1))


def read_metadata(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``tiles.json`` of a finished tile set.

    Raises:
        GeoclError: if the folder holds no finished tile set.
    """
    path = Path(out) / METADATA_FILE
    if not path.exists():
        raise GeoclError("no tile set here (tiles.json missing); run `geocl tile` first", path=out)
    metadata = json.loads(path.read_text())
    if not metadata.get("complete"):
        raise GeoclError("tile set is incomplete; rerun `geocl tile` to finish it", path=out)
    return metadata
