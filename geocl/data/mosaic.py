"""A scene given as several GeoTIFFs, read as one raster on the pixel grid of its first file.

Prediction walks a scene's pixel grid window by window. One GeoTIFF is read with
rasterio directly (its own grid, no resampling). Several files (a folder, or a list of
files and folders) are read as one :class:`SceneMosaic`, whose grid is the FIRST file's
(the first given; a folder's files sorted): its CRS, its pixel size and its pixel
origin, extended by whole pixels over the other files' footprints. So the first file's
pixels are read exactly as they are, never resampled, and the prediction inside its
footprint is its own single-file prediction (up to the context the model sees across
its edges).

Every other file is read in one of two ways:

- on the grid (the same CRS and pixel size, its origin a whole number of pixels from the
  first file's: tiles of one scene): its pixels are read as they are;
- else resampled onto the grid by GDAL (a ``WarpedVRT`` onto the whole grid, the
  transformer within 1/1000 px, so a pixel does not depend on the window it is read
  in), nearest neighbour: the rule of ``geocl tile``, so the model sees source values
  as in its training tiles.

Where files overlap, the earlier file in the given order wins: a later file fills only
the pixels where every band of the earlier ones is nodata (rasterio.merge's ``first``
rule). :attr:`SceneMosaic.notes` says in words which files are resampled (from which
CRS and pixel size, how) and which footprints overlap; ``geocl predict`` prints them.
Where no file covers a pixel (gaps of an L-shaped mosaic) the read holds the nodata
value: the first file's, else 0 (:func:`~geocl.data.rasters.nodata_value`).

Why not TorchGeo's ``RasterDataset``, which ``geocl tile`` uses: it sorts the files
(its first file, whose CRS it takes, is the alphabetically first), warps each file to a
grid of its own and resamples that again onto the grid of each query, whose origin is
the top-left corner of the union of the files: for files in two CRSs that grid lies a
fraction of a pixel off the first file's, and every pixel of it was resampled.

Memory: a read holds the window (and one file's part of it) only. File handles are
opened on first use and closed by :meth:`SceneMosaic.close` (``open_scene`` closes
them), so nothing is kept between scenes (safe in long-lived worker processes).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
import rasterio.errors
import shapely
import shapely.affinity
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine, array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from geocl.data.rasters import RasterInfo, RasterPath, find_rasters, inspect_rasters, nodata_value, read_error
from geocl.data.remote import remote_env
from geocl.errors import InvalidInputError

__all__ = ["RESAMPLING", "SceneMosaic", "SceneReader", "open_scene", "scene_files"]

#: Source dtypes that float32 holds exactly; others are read as float64.
_FLOAT32_EXACT = ("uint8", "int8", "uint16", "int16", "float16", "float32")
#: How files off the first file's grid are resampled onto it (``geocl tile``'s rule for images).
RESAMPLING = Resampling.nearest
#: A file is on the grid when its origin lies within this many pixels of a grid corner
#: and its pixel size within this fraction of the grid's.
_ON_GRID = 1e-6
#: Error (px) allowed to GDAL's approximate transformer when warping (its default is
#: 1/8 px, enough to move a nearest-neighbour pick between windows read apart).
_WARP_TOLERANCE = 1e-3
#: Points per footprint edge when a footprint is carried into another CRS (edges bend).
_EDGE_POINTS = 21


class SceneReader(Protocol):
    """What prediction reads from a scene: the part of rasterio's ``DatasetReader`` it uses."""

    height: int
    width: int
    count: int
    crs: CRS
    transform: Affine
    nodata: float | None

    def read(self, *, window: Window) -> np.ndarray:
        """``[count, window.height, window.width]`` pixels of the window (inside the grid)."""
        ...


def scene_files(
    scene: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], assets: Sequence[str] | None = None
) -> list[RasterPath]:
    """The rasters of a scene: a file, a folder (searched recursively), a remote file, a STAC
    document (one raster an item, ``assets`` stacked as bands), or a list of those
    (see :func:`~geocl.data.rasters.find_rasters`).

    Returns:
        The files in the order given (a folder's sorted, a STAC document's items in its
        order), each once.

    Raises:
        GeoclError: naming a path that does not exist, a folder without GeoTIFF, an
            empty list, or the STAC document, item, asset or URL at fault.
    """
    paths = [scene] if isinstance(scene, (str, os.PathLike)) else list(scene)
    if not paths:
        raise InvalidInputError("no scene given", key="scene")
    files = [file for path in paths for file in find_rasters(path, assets=assets)]
    return list(dict.fromkeys(files))


@dataclass(frozen=True)
class _Part:
    """One file of a mosaic and where it lies on the mosaic's grid.

    Attributes:
        info: the file.
        footprint: its outline in grid pixel coordinates (column, row).
        box: ``(col0, row0, col1, row1)``: the grid pixels its footprint touches.
        offset: ``(col, row)`` of its first pixel on the grid when it is on the grid
            (read as it is); None when it is resampled.
        nodata: the value of its missing pixels (its own nodata, else 0, GDAL's fill).
    """

    info: RasterInfo
    footprint: Any
    box: tuple[int, int, int, int]
    offset: tuple[int, int] | None
    nodata: float


def _crs_name(crs: CRS) -> str:
    """``EPSG:32633`` where the CRS has a code, else its name (``WGS 84 / UTM zone 33N``)."""
    code = crs.to_epsg()
    if code is not None:
        return f"EPSG:{code}"
    from pyproj import CRS as ProjCRS

    return str(ProjCRS.from_wkt(crs.to_wkt()).name)


def _outline(info: RasterInfo, crs: CRS, to_grid: Affine) -> Any:
    """``info``'s footprint in the pixel coordinates ``to_grid`` gives in ``crs`` (edges densified)."""
    steps = np.linspace(0.0, 1.0, _EDGE_POINTS)[:-1]
    width, height = info.width, info.height
    cols = np.concatenate([steps * width, np.full_like(steps, width), (1 - steps) * width, np.zeros_like(steps)])
    rows = np.concatenate([np.zeros_like(steps), steps * height, np.full_like(steps, height), (1 - steps) * height])
    xs, ys = info.transform @ (cols, rows)
    if info.crs != crs:
        xs, ys = transform_points(info.crs, crs, np.asarray(xs), np.asarray(ys))
    grid_cols, grid_rows = to_grid @ (np.asarray(xs), np.asarray(ys))
    return shapely.Polygon(np.column_stack([grid_cols, grid_rows]))


def _grid_offset(info: RasterInfo, first: RasterInfo) -> tuple[int, int] | None:
    """Where ``info``'s first pixel lies on ``first``'s pixel grid, when ``info`` shares that grid; else None."""
    if info.crs != first.crs:
        return None
    mine, grid = info.transform, first.transform
    scale = max(abs(grid.a), abs(grid.b), abs(grid.d), abs(grid.e))
    if any(abs(m - g) > _ON_GRID * scale for m, g in zip(mine[:2] + mine[3:5], grid[:2] + grid[3:5], strict=False)):
        return None
    col, row = ~grid @ (mine.c, mine.f)
    if abs(col - round(col)) > _ON_GRID or abs(row - round(row)) > _ON_GRID:
        return None
    return round(col), round(row)


def _missing(data: np.ndarray, nodata: float) -> np.ndarray:
    """``[H, W]``: True where every band holds ``nodata`` (NaN compares as NaN)."""
    return (np.isnan(data) if math.isnan(nodata) else data == nodata).all(axis=0)


class SceneMosaic:
    """Several GeoTIFFs read as one raster on the first file's pixel grid (see the module docstring).

    Args:
        infos: the files, checked by :func:`~geocl.data.rasters.inspect_rasters` (one
            band count), in the order given: the first gives the grid and wins overlaps.

    Attributes:
        height, width: rows and columns of the mosaic grid (px).
        count: bands.
        crs: the first file's CRS.
        res: the first file's pixel size (x, y).
        transform: pixel-to-map transform of the grid: the first file's, moved by whole pixels.
        first_origin: ``(col, row)`` of the first file's first pixel on the grid.
        nodata: the value of missing pixels in reads.
        dtypes: numpy dtype name of the reads, per band (float32, or float64 for
            sources float32 cannot hold exactly).
        files: the files.
        notes: what the mosaic does to the files, in words: each file resampled (from
            which CRS and pixel size, how) and each overlap (which file wins).
    """

    def __init__(self, infos: Sequence[RasterInfo]) -> None:
        first = infos[0]
        self.files = [info.path for info in infos]
        self.count = first.count
        self.crs = first.crs
        self.res: tuple[float, float] = first.res
        self.nodata: float | None = nodata_value(infos)
        dtype = "float32" if all(info.dtype in _FLOAT32_EXACT for info in infos) else "float64"
        self.dtypes = (dtype,) * self.count
        to_first = ~first.transform
        outlines = [_outline(info, first.crs, to_first) for info in infos]
        left, top = (min(math.floor(min(o.bounds[i] for o in outlines) + _ON_GRID), 0) for i in (0, 1))
        right = max(math.ceil(o.bounds[2] - _ON_GRID) for o in outlines)
        bottom = max(math.ceil(o.bounds[3] - _ON_GRID) for o in outlines)
        self.transform = first.transform @ Affine.translation(left, top)
        self.width, self.height = right - left, bottom - top
        self.first_origin = (-left, -top)
        self.parts: list[_Part] = []
        for info, outline in zip(infos, outlines, strict=False):
            footprint = shapely.affinity.translate(outline, -left, -top)
            offset = _grid_offset(info, first)
            if offset is not None:
                col, row = offset[0] - left, offset[1] - top
                box = (col, row, col + info.width, row + info.height)
                offset = (col, row)
            else:
                x0, y0, x1, y1 = footprint.bounds
                box = (
                    max(0, math.floor(x0)),
                    max(0, math.floor(y0)),
                    min(self.width, math.ceil(x1)),
                    min(self.height, math.ceil(y1)),
                )
            nodata = 0.0 if info.nodata is None else float(info.nodata)
            self.parts.append(_Part(info, footprint, box, offset, nodata))
        self.notes: tuple[str, ...] = tuple(self._describe())
        self._handles: dict[int, Any] = {}
        self._opened: list[Any] = []

    def _describe(self) -> list[str]:
        first = self.parts[0].info
        unit = self.crs.linear_units if self.crs.is_projected else "°"
        unit = {"metre": "m", "meter": "m"}.get(unit, unit)
        grid = f"the pixel grid of {first.path.name} ({self.res[0]:g} x {self.res[1]:g} {unit} pixels)"
        notes = []
        for part in self.parts[1:]:
            if part.offset is not None:
                continue
            info = part.info
            if info.crs != self.crs:
                how = f"from {_crs_name(info.crs)} to {_crs_name(self.crs)} onto {grid}"
            elif not np.allclose(info.res, self.res, rtol=_ON_GRID, atol=0):
                how = f"from {info.res[0]:g} x {info.res[1]:g} {unit} pixels onto {grid}"
            else:
                col, row = ~first.transform @ (info.transform.c, info.transform.f)
                how = f"onto {grid}, off which its pixels lie by {col - round(col):+.2f}, {row - round(row):+.2f} px"
            notes.append(f"{info.path.name} is resampled {how}, nearest neighbour")
        overlaps = []
        for i, a in enumerate(self.parts):
            for b in self.parts[i + 1 :]:
                area = a.footprint.intersection(b.footprint).area
                if area >= 0.5:
                    overlaps.append((a.info.path.name, b.info.path.name, area))
        for kept, filler, area in overlaps[:5]:
            notes.append(
                f"{kept} and {filler} overlap (about {area:,.0f} px): {kept}'s pixels are kept there, "
                f"{filler} fills only its nodata"
            )
        if len(overlaps) > 5:
            notes.append(f"{len(overlaps) - 5} more pairs of files overlap: in each, the file given first wins")
        return notes

    def _handle(self, index: int) -> Any:
        """The open file (or, for a resampled file, its ``WarpedVRT`` onto the grid) of part ``index``."""
        if index not in self._handles:
            part = self.parts[index]
            src = rasterio.open(part.info.path)
            self._opened.append(src)
            if part.offset is None:
                src = WarpedVRT(
                    src,
                    crs=self.crs,
                    transform=self.transform,
                    width=self.width,
                    height=self.height,
                    resampling=RESAMPLING,
                    nodata=part.nodata,
                    tolerance=_WARP_TOLERANCE,
                )
                self._opened.append(src)
            self._handles[index] = src
        return self._handles[index]

    def read(self, *, window: Window) -> np.ndarray:
        """The window's pixels, ``[count, height, width]`` in :attr:`dtypes`.

        Raises:
            GeoclError: naming the file when rasterio cannot read it.
        """
        col, row = int(window.col_off), int(window.row_off)
        width, height = int(window.width), int(window.height)
        out = np.full((self.count, height, width), self.nodata, dtype=self.dtypes[0])
        filled = np.zeros((height, width), dtype=bool)
        for index, part in enumerate(self.parts):
            c0, r0 = max(col, part.box[0]), max(row, part.box[1])
            c1, r1 = min(col + width, part.box[2]), min(row + height, part.box[3])
            if c0 >= c1 or r0 >= r1:
                continue
            place = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
            if filled[place].all():
                continue
            if part.offset is not None:
                own = Window(c0 - part.offset[0], r0 - part.offset[1], c1 - c0, r1 - r0)
            else:
                own = Window(c0, r0, c1 - c0, r1 - r0)
            try:
                data = self._handle(index).read(window=own)
            except rasterio.errors.RasterioError as error:
                raise read_error(error, part.info.path, "cannot read pixels (corrupt file?)") from None
            take = ~_missing(data, part.nodata) & ~filled[place]
            out[(slice(None), *place)][:, take] = data[:, take]
            filled[place] |= take
        return out

    def read_decimated(self, shape: tuple[int, int], indexes: Sequence[int] | None = None) -> np.ndarray:
        """The whole mosaic resampled to ``shape`` (for previews; memory of the result only).

        Every file is warped onto the coarse grid (nearest neighbour), the earlier files winning.

        Args:
            shape: ``(rows, cols)`` of the result.
            indexes: 1-based bands to return (default: all).
        """
        rows, cols = shape
        bands = list(indexes) if indexes is not None else list(range(1, self.count + 1))
        coarse = self.transform @ Affine.scale(self.width / cols, self.height / rows)
        out = np.full((len(bands), rows, cols), self.nodata, dtype=self.dtypes[0])
        filled = np.zeros(shape, dtype=bool)
        for part in self.parts:
            with (
                remote_env(),
                rasterio.open(part.info.path) as src,
                WarpedVRT(
                    src,
                    crs=self.crs,
                    transform=coarse,
                    width=cols,
                    height=rows,
                    resampling=Resampling.nearest,
                    nodata=part.nodata,
                ) as vrt,
            ):
                data = vrt.read(bands)
            take = ~_missing(data, part.nodata) & ~filled
            out[:, take] = data[:, take]
            filled |= take
        return out

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the grid in map units."""
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return min(west, east), min(south, north), max(west, east), max(south, north)

    def close(self) -> None:
        """Close the files opened by reads (the last opened first: a ``WarpedVRT`` before its file)."""
        for handle in reversed(self._opened):
            handle.close()
        self._opened.clear()
        self._handles.clear()


class _NamedReads:
    """A rasterio dataset of a remote file or STAC item whose failed reads are one line naming the
    URL, item or asset (:func:`~geocl.data.rasters.read_error`); everything else is the dataset's."""

    def __init__(self, src: Any, path: RasterPath) -> None:
        self._src = src
        self._path = path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._src, name)

    def read(self, *args: Any, **kwargs: Any) -> np.ndarray:
        """The dataset's ``read``."""
        try:
            return self._src.read(*args, **kwargs)
        except rasterio.errors.RasterioError as error:
            raise read_error(error, self._path, "cannot read pixels (corrupt file?)") from None


@contextlib.contextmanager
def open_scene(files: Sequence[RasterPath]) -> Iterator[Any]:
    """Open a scene's files for windowed reads: rasterio for one file, a :class:`SceneMosaic` for several.

    Args:
        files: as returned by :func:`scene_files`.

    Yields:
        A :class:`SceneReader` (a rasterio ``DatasetReader`` for one local file; for one
        remote file or STAC item, the same whose failed reads name the URL).

    Raises:
        GeoclError: naming the first unusable file (unreadable, empty, no CRS) or a
            band-count mismatch.
    """
    infos = inspect_rasters(list(files))
    if len(infos) == 1:
        with remote_env(), rasterio.open(infos[0].path) as src:
            yield src if isinstance(infos[0].path, Path) else _NamedReads(src, infos[0].path)
    else:
        mosaic = SceneMosaic(infos)
        try:
            yield mosaic
        finally:
            mosaic.close()
