"""A TorchGeo sampler that draws training boxes where gradient region maps are high.

GraSS (Zhang et al., IEEE TGRS 2023, arXiv 2306.15868) crops each view at the region that drives the contrastive
loss. For geospatial data the same signal can steer *where* training boxes are cut from
a scene: a method writes its per-tile maps with
:func:`~geocl.sampling.region_rasters.write_region_map` (one single-band GeoTIFF on the
tile's grid), and :class:`GradientRegionSampler` draws boxes with probability following
those maps, for any TorchGeo dataset over the scene.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import rasterio.warp
from numpy.random import Generator
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.transform import Affine
from torchgeo.samplers import GeoSampler

from geocl.data.rasters import RasterPath, as_raster_path, find_rasters, inspect_rasters, read_error
from geocl.data.remote import remote_env
from geocl.errors import GeoclError


def box_sums(values: np.ndarray, size: int, stride: int = 1) -> np.ndarray:
    """Sums of ``values`` over every ``size x size`` window whose origin is on a stride grid.

    Cumulative sums make the cost one pass over the array whatever ``size`` is; integer
    and bool inputs are summed exactly in int64, floats in float64.

    Args:
        values: ``[H, W]`` array.
        size: window side (px).
        stride: distance between window origins (px), along both axes.

    Returns:
        ``[R, C]`` array, ``R = (H - size) // stride + 1`` (0 if ``H < size``), whose
        entry ``(i, j)`` is ``values[i*stride : i*stride + size, j*stride : j*stride + size].sum()``.
    """
    height, width = values.shape
    rows = np.arange(0, height - size + 1, stride)
    cols = np.arange(0, width - size + 1, stride)
    kind = np.int64 if values.dtype.kind in "biu" else np.float64
    if rows.size == 0 or cols.size == 0:
        return np.zeros((rows.size, cols.size), dtype=kind)
    # Vertical window sums at the candidate rows only, then horizontal ones: one full-size
    # cumulative array at a time.
    acc = np.zeros((height + 1, width), dtype=kind)
    np.cumsum(values, axis=0, dtype=kind, out=acc[1:])
    strip = acc[rows + size] - acc[rows]  # [R, W]
    del acc
    acc = np.zeros((rows.size, width + 1), dtype=kind)
    np.cumsum(strip, axis=1, dtype=kind, out=acc[:, 1:])
    return acc[:, cols + size] - acc[:, cols]


@dataclass(frozen=True)
class _MapGrid:
    """Where one map's candidate boxes are: origins ``(i * stride, j * stride)`` px."""

    path: RasterPath
    transform: Affine
    crs: CRS
    cols: int  # candidate origins per row
    first: int  # index of the map's first window in the sampler's flat arrays


class GradientRegionSampler(GeoSampler):
    """Draw ``size x size`` px boxes where gradient region maps are high.

    Sampling rule:

    * *candidates*: every ``size x size`` window of a map's grid whose origin lies on a
      ``stride`` px grid from the map's top-left corner, that lies fully inside the map
      and whose pixels are all valid (not NaN and not the map's nodata value). So every
      sampled region lies inside its tile and its valid-data area.
    * *weight* of a candidate: the sum over the window of ``max(map, 0)`` (negative map
      values count as 0, i.e. never make a region less likely than an empty one).
      Window sums of all candidates come from cumulative sums, one pass per map.
    * boxes are drawn independently, with replacement, with probability proportional to
      weight across all maps; maps without a candidate (smaller than ``size`` or with no
      all-valid window) contribute nothing. If every weight is 0, the draw is uniform
      over the candidates.

    Each map is read once, at construction; afterwards the sampler holds one cumulative
    weight (8 bytes) per window position on the stride grid and each map's grid
    description, not the maps.

    Boxes are yielded as ``(slice(xmin, xmax, xres), slice(ymin, ymax, yres))`` in the
    target CRS, so ``dataset[x, y]`` reads exactly ``size x size`` pixels whatever the
    dataset's own resolution. (TorchGeo's spatial samplers leave the step out and let the
    dataset's resolution decide; carrying it keeps every sample the same shape, so batches
    stack, also when boxes are reprojected.) In the maps' CRS the box is the exact window
    of map pixels and ``res`` is the map's pixel size. In another CRS it is the bounding
    box of the window reprojected with densified edges
    (:func:`rasterio.warp.transform_bounds`), which can reach a little beyond the window
    where the grids are rotated against each other.

    Args:
        maps: a region-map GeoTIFF, a folder of them (searched recursively), or a list of
            files, as written by :func:`~geocl.sampling.region_rasters.write_region_map`;
            a file may be remote (``https://``, ``s3://``, ``gs://``, ``/vsi…``: see
            :mod:`geocl.data.remote`; each map is read whole once, to score it).
        size: box side in pixels of the maps' grid.
        length: boxes per epoch (``len(sampler)``).
        crs: CRS to yield boxes in, e.g. ``dataset.crs`` (pyproj or rasterio CRS, or a
            string such as ``"EPSG:3857"``); default: the first map's CRS.
        stride: distance between candidate origins (px). Default ``max(1, size // 8)``:
            neighbouring candidates overlap by 7/8, finer than the maps' own resolution
            of the signal (the GraSS map is 32 px per cell at 224 px views), while the
            number of candidates, and so memory and set-up time, drops by ``stride**2``.
        generator: seed or :class:`numpy.random.Generator`. Each epoch draws new boxes;
            two samplers with the same seed yield the same sequence of epochs.

    Raises:
        GeoclError: if a map is missing or unreadable, has more than one band or a
            rotated grid, or if no map holds a candidate box (naming the folder).
    """

    def __init__(
        self,
        maps: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        size: int,
        length: int,
        crs: CRS | ProjCRS | str | None = None,
        stride: int | None = None,
        generator: int | Generator | None = None,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise GeoclError(f"box size must be a positive number of pixels, got {size!r}", key="size")
        if stride is None:
            stride = max(1, int(size) // 8)
        if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
            raise GeoclError(f"stride must be a positive number of pixels, got {stride!r}", key="stride")
        if length < 0:
            raise GeoclError(f"length must be >= 0, got {length}", key="length")
        self.size = int(size)
        self.stride = int(stride)
        self._length = int(length)
        self.generator = np.random.default_rng(generator)

        if isinstance(maps, str | os.PathLike):
            self.source: RasterPath | None = as_raster_path(maps)
            paths = find_rasters(maps, role="region map")
        else:
            self.source = None
            paths = [as_raster_path(path) for path in maps]
            if not paths:
                raise GeoclError("no region maps given", key="maps")
            for path in paths:
                if isinstance(path, Path) and not path.is_file():  # a remote one: inspect_rasters asks its server
                    raise GeoclError("region map not found", path=path)
        infos = inspect_rasters(paths, role="region map")
        for info in infos:
            if info.count != 1:
                raise GeoclError(f"a region map has one band, this one has {info.count}", path=info.path)
            if info.transform.b != 0 or info.transform.d != 0:
                raise GeoclError("region maps with a rotated or sheared grid are not supported", path=info.path)
        target = infos[0].crs if crs is None else CRS.from_user_input(crs)
        self._target = target
        #: CRS of the yielded boxes.
        self.crs = ProjCRS.from_user_input(target.to_wkt())

        grids: list[_MapGrid] = []
        weights: list[np.ndarray] = []
        candidates: list[np.ndarray] = []
        first = 0
        for info in infos:
            weight, candidate = self._score(info.path)
            grids.append(_MapGrid(info.path, info.transform, info.crs, weight.shape[1], first))
            weights.append(weight.ravel())
            candidates.append(candidate.ravel())
            first += weight.size
        flat_weights = np.concatenate(weights)
        is_candidate = np.concatenate(candidates)
        del weights, candidates
        if not is_candidate.any():
            first_map = paths[0]
            folder = first_map.parent if isinstance(first_map, Path) else first_map
            where = self.source if self.source is not None else folder
            raise GeoclError(
                f"no {self.size}x{self.size} px box lies fully inside the valid (not NaN, not nodata) area of any of "
                f"the {len(paths)} region map(s); use a smaller size or maps with more valid pixels",
                path=where,
            )
        if not flat_weights.any():  # all candidates weigh 0: nothing to prefer
            flat_weights = is_candidate.astype(np.float64)
        self._grids = grids
        self._cumulative = np.cumsum(flat_weights)
        self._firsts = np.array([grid.first for grid in grids])
        #: Number of candidate boxes over all maps.
        self.candidates = int(is_candidate.sum())

    def _score(self, path: RasterPath) -> tuple[np.ndarray, np.ndarray]:
        """Candidate weights ``[R, C]`` (0 where not a candidate) and the candidate mask of one map."""
        try:
            with remote_env(), rasterio.open(path) as src:
                values = src.read(1).astype(np.float32, copy=False)
                nodata = src.nodata
        except rasterio.errors.RasterioError as error:
            raise read_error(error, path, "cannot read the region map") from None
        invalid = ~np.isfinite(values)
        if nodata is not None and not np.isnan(nodata):
            invalid |= values == nodata
        positive = np.where(invalid, 0.0, np.maximum(values, 0.0))
        del values
        candidate = box_sums(invalid, self.size, self.stride) == 0
        weight = box_sums(positive, self.size, self.stride)
        # Differences of cumulative sums can leave -1e-12 where the true sum is 0.
        weight = np.where(candidate, np.maximum(weight, 0.0), 0.0)
        return weight, candidate

    def _box(self, index: int) -> tuple[slice, slice]:
        """Map-coordinate box of flat candidate ``index``, in the target CRS."""
        grid = self._grids[int(np.searchsorted(self._firsts, index, side="right")) - 1]
        row, col = divmod(int(index) - grid.first, grid.cols)
        r0, c0 = row * self.stride, col * self.stride
        x0, y0 = grid.transform @ (c0, r0)
        x1, y1 = grid.transform @ (c0 + self.size, r0 + self.size)
        xmin, xmax = min(x0, x1), max(x0, x1)
        ymin, ymax = min(y0, y1), max(y0, y1)
        if grid.crs == self._target:
            xres, yres = abs(grid.transform.a), abs(grid.transform.e)
        else:
            xmin, ymin, xmax, ymax = rasterio.warp.transform_bounds(grid.crs, self._target, xmin, ymin, xmax, ymax)
            xres, yres = (xmax - xmin) / self.size, (ymax - ymin) / self.size
        return slice(float(xmin), float(xmax), float(xres)), slice(float(ymin), float(ymax), float(yres))

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        """Draw one epoch of boxes.

        Yields:
            ``(slice(xmin, xmax, xres), slice(ymin, ymax, yres))`` in :attr:`crs`.
        """
        total = self._cumulative[-1]
        # Inverse-CDF draw; side="right" never lands on a zero-weight candidate.
        draws = self.generator.random(self._length) * total
        picks = np.minimum(np.searchsorted(self._cumulative, draws, side="right"), self._cumulative.size - 1)
        for index in picks:
            yield self._box(int(index))

    def __len__(self) -> int:
        """Boxes per epoch."""
        return self._length
