"""A scene given as several GeoTIFFs, read as one raster in windows of its own pixel grid.

Prediction walks a scene's pixel grid window by window. One GeoTIFF is read with
rasterio directly (its own grid, no resampling). Several files (a folder, or a list of
files and folders) are mosaicked by TorchGeo's :class:`~torchgeo.datasets.RasterDataset`,
the way ``geocl tile`` reads them: every read is a ``rasterio.merge`` of the files the
window touches, files in another CRS warped to the first file's CRS and pixel size.

The mosaic's grid is that CRS and pixel size over the union of the files' bounds:
origin at its top-left corner, ``width = round((right - left) / xres)`` columns and
``height = round((top - bottom) / yres)`` rows. Files that share one pixel grid (tiles
of a larger scene) are therefore read back exactly: a mosaic of the tiles of a scene
reads as the scene. Where no file covers a window (gaps of an L-shaped mosaic) the read
holds the nodata value: the first file's, else 0, as TorchGeo fills
(:func:`~geocl.data.rasters.nodata_value`).

Memory: a read holds the window only; TorchGeo's file-handle cache is off, so nothing
is kept between reads or scenes (safe in long-lived worker processes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
import rasterio.errors
import torch
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window

from geocl.data.rasters import RasterInfo, find_rasters, inspect_rasters, nodata_value
from geocl.errors import GeoclError

__all__ = ["SceneMosaic", "SceneReader", "open_scene", "scene_files"]

#: Source dtypes that float32 holds exactly; others are read as float64.
_FLOAT32_EXACT = ("uint8", "int8", "uint16", "int16", "float16", "float32")


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


def scene_files(scene: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The GeoTIFFs of a scene: a file, a folder (searched recursively), or a list of those.

    Returns:
        The files in the order given (a folder's sorted), each once.

    Raises:
        GeoclError: naming a path that does not exist, a folder without GeoTIFF, or an
            empty list.
    """
    paths = [scene] if isinstance(scene, (str, os.PathLike)) else list(scene)
    if not paths:
        raise GeoclError("no scene given", key="scene")
    files = [file for path in paths for file in find_rasters(path)]
    return list(dict.fromkeys(files))


def _mosaic_dataset(paths: Sequence[Path], dtype: torch.dtype) -> Any:
    """TorchGeo's mosaic over an explicit list of files, read as ``dtype``.

    TorchGeo is imported here, not with the module: it takes seconds and some 300 MB,
    which one-file scenes do not need.
    """
    from torchgeo.datasets import RasterDataset

    class Files(RasterDataset):  # type: ignore[misc]
        @property
        def dtype(self) -> torch.dtype:
            return dtype

    # cache=False: no open handles kept between reads (nor between scenes in a worker)
    return Files(paths=[str(path) for path in paths], cache=False)


class SceneMosaic:
    """Several GeoTIFFs read as one raster (see the module docstring for the grid).

    Args:
        infos: the files, checked by :func:`~geocl.data.rasters.inspect_rasters` (one
            band count).

    Attributes:
        height, width: rows and columns of the mosaic grid (px).
        count: bands.
        crs: the first file's CRS.
        transform: pixel-to-map transform of the grid (north up).
        nodata: the value of missing pixels in reads.
        dtypes: numpy dtype name of the reads, per band (float32, or float64 for
            sources float32 cannot hold exactly).
        files: the files.
    """

    def __init__(self, infos: Sequence[RasterInfo]) -> None:
        dtype = "float32" if all(info.dtype in _FLOAT32_EXACT for info in infos) else "float64"
        self.files = [info.path for info in infos]
        self.dataset = _mosaic_dataset(self.files, torch.float32 if dtype == "float32" else torch.float64)
        self.res: tuple[float, float] = tuple(self.dataset.res)  # type: ignore[assignment]
        left, bottom, right, top = (float(v) for v in self.dataset.index.total_bounds)
        self.left, self.top = left, top
        self.width = max(1, round((right - left) / self.res[0]))
        self.height = max(1, round((top - bottom) / self.res[1]))
        self.count = infos[0].count
        self.crs = CRS.from_user_input(self.dataset.crs)
        self.transform = from_origin(left, top, *self.res)
        self.nodata: float | None = nodata_value(infos)
        self.dtypes = (dtype,) * self.count

    def read(self, *, window: Window) -> np.ndarray:
        """The window's pixels, ``[count, height, width]`` in :attr:`dtypes`.

        Raises:
            GeoclError: naming the files when rasterio cannot read them.
        """
        col, row = int(window.col_off), int(window.row_off)
        width, height = int(window.width), int(window.height)
        rx, ry = self.res
        xmin, ymax = self.left + col * rx, self.top - row * ry
        try:
            data = self.dataset[xmin : xmin + width * rx : rx, ymax - height * ry : ymax : ry]["image"].numpy()
        except IndexError:  # no file reaches the window
            return np.full((self.count, height, width), self.nodata, dtype=self.dtypes[0])
        except rasterio.errors.RasterioError as error:
            raise GeoclError(f"cannot read pixels (corrupt file?): {error}", path=self.files[0]) from None
        if data.shape[1:] != (height, width):  # merge rounds its shape; keep the grid's
            padded = np.full((self.count, height, width), self.nodata, dtype=self.dtypes[0])
            rows, cols = min(height, data.shape[1]), min(width, data.shape[2])
            padded[:, :rows, :cols] = data[:, :rows, :cols]
            return padded
        return data

    def read_decimated(self, shape: tuple[int, int], indexes: Sequence[int] | None = None) -> np.ndarray:
        """The whole mosaic resampled to ``shape`` (for previews; memory of the result only).

        Args:
            shape: ``(rows, cols)`` of the result.
            indexes: 1-based bands to return (default: all).
        """
        rows, cols = shape
        rx, ry = self.width * self.res[0] / cols, self.height * self.res[1] / rows
        right, bottom = self.left + cols * rx, self.top - rows * ry
        data = self.dataset[self.left : right : rx, bottom : self.top : ry]["image"].numpy()[:, :rows, :cols]
        return data if indexes is None else data[[i - 1 for i in indexes]]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the grid in map units."""
        rx, ry = self.res
        return self.left, self.top - self.height * ry, self.left + self.width * rx, self.top

    def close(self) -> None:
        """Nothing to release (no handles are cached); for symmetry with rasterio."""


@contextlib.contextmanager
def open_scene(files: Sequence[Path]) -> Iterator[Any]:
    """Open a scene's files for windowed reads: rasterio for one file, a :class:`SceneMosaic` for several.

    Args:
        files: as returned by :func:`scene_files`.

    Yields:
        A :class:`SceneReader` (a rasterio ``DatasetReader`` for one file).

    Raises:
        GeoclError: naming the first unusable file (unreadable, empty, no CRS) or a
            band-count mismatch.
    """
    infos = inspect_rasters(list(files))
    if len(infos) == 1:
        with rasterio.open(infos[0].path) as src:
            yield src
    else:
        yield SceneMosaic(infos)
