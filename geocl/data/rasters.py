"""Finding and checking the user's raster files before any work starts.

TorchGeo silently skips files rasterio cannot open; a user pointing geocl at a folder
wants to hear which file is broken instead. Everything here raises
:class:`~geocl.errors.GeoclError` naming the file at fault.

A raster file is a local path, a remote file (:class:`~geocl.data.remote.RemoteFile`:
``https://``, ``s3://``, ``gs://``, ``/vsi…``, read in windows through GDAL) or a STAC
item's stacked assets (:class:`~geocl.data.stac.StacRaster`); :func:`find_rasters` turns
what the user gave into them, and everything downstream opens them with ``rasterio.open``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from geocl.data.malloc import computing as computing  # named here too: benchmarks/ scripts import it from here
from geocl.data.malloc import streaming
from geocl.data.remote import RemoteFile, display_url, gdal_path, is_remote, remote_env, remote_error
from geocl.data.stac import StacRaster, is_stac, stac_rasters
from geocl.errors import GeoclError, InvalidInputError, MissingInputError

#: A raster file as geocl holds it: a local path, a remote file, or a STAC item's stacked assets.
RasterPath = Path | RemoteFile | StacRaster

#: GDAL block cache (MiB) while geocl streams a scene. GDAL's default, 5 % of RAM, lets
#: a pass over a large compressed scene grow the process by that much. Small on purpose:
#: geocl reads whole blocks in order (tiles, strips), so a larger cache only costs memory.
GDAL_CACHE_MB = 16

#: File name patterns taken as rasters when a folder is given.
RASTER_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")


@dataclass(frozen=True)
class RasterInfo:
    """What geocl needs to know about one raster file.

    Attributes:
        path: the file (:data:`RasterPath`).
        crs: its coordinate reference system.
        transform: pixel-to-map affine transform.
        width: columns (px).
        height: rows (px).
        count: number of bands.
        dtype: numpy dtype name of the bands, e.g. ``"uint16"``.
        nodata: the nodata value, or None when the file sets none.
        bounds: (left, bottom, right, top) in map units of ``crs``.
    """

    path: RasterPath
    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    bounds: tuple[float, float, float, float]

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in map units, both positive."""
        return (abs(self.transform.a), abs(self.transform.e))


@contextlib.contextmanager
def bounded_memory() -> Iterator[rasterio.Env]:
    """A rasterio environment for streaming a scene in bounded memory.

    Its GDAL block cache is :data:`GDAL_CACHE_MB`; inside :func:`geocl.data.malloc.malloc_tuning`
    (a command's entry), glibc's mmap threshold is fixed while it is open
    (:func:`geocl.data.malloc.streaming`), so memory does not grow with the number of tiles
    read. GDAL's network options for remote files are set too
    (:func:`~geocl.data.remote.remote_env`; they change nothing for local files).
    """
    # GDAL_CACHEMAX in bytes: rasterio hands it to GDALSetCacheMax64 as it is, without
    # GDAL's "small numbers are MB" rule (a bare 128 is a 128-byte cache)
    with streaming(), remote_env(), rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20) as env:
        yield env


def read_decimated(
    path: str | os.PathLike[str], indexes: int | Sequence[int], shape: tuple[int, int]
) -> tuple[Any, Any, float | None]:
    """Read a whole raster decimated to ``shape`` (nearest neighbour), for previews, in bounded memory.

    Output pixel ``(i, j)`` holds source pixel ``(floor((i + 0.5) H / h), floor((j + 0.5) W / w))``,
    GDAL's nearest-neighbour rule. When the file has overviews, the coarsest one still
    at least ``shape`` is read instead of the full resolution (the same rule on its grid).

    The source is read in full-width strips of whole block rows (at most
    :data:`PREVIEW_STRIP_BYTES`, strips holding no wanted row are not read) inside
    :func:`bounded_memory`, and each strip is decimated with numpy. Memory therefore
    does not grow with the raster, and every block is decompressed once: GDAL's own
    decimated read of a whole raster needs a block cache the size of the raster to be
    fast (without one it decompresses a block row again for each output row: about 50 s
    for the 4096 px demo scene), and with GDAL's default cache (5 % of RAM) it made a
    preview of a 1 GiB scene cost 1 GiB.

    Args:
        path: the raster.
        indexes: band number (-> ``[h, w]``) or band numbers (-> ``[len, h, w]``).
        shape: ``(h, w)`` of the result.

    Returns:
        The array, the raster's bounds and its nodata value.
    """
    bands = [indexes] if isinstance(indexes, int) else list(indexes)
    raster = as_raster_path(path)
    try:
        with bounded_memory():
            with rasterio.open(raster) as src:
                bounds, nodata = src.bounds, src.nodata
                level = _overview_level(src, bands[0], shape)
            opened = rasterio.open(raster) if level is None else rasterio.open(raster, overview_level=level)
            with opened as src:
                data = _decimate_in_strips(src, bands, shape)
    except rasterio.errors.RasterioError as error:
        raise read_error(error, raster, "cannot read pixels (corrupt file?)") from None
    return (data[0] if isinstance(indexes, int) else data), bounds, nodata


#: Bytes of source pixels read at once by :func:`read_decimated` (one strip, all bands read).
PREVIEW_STRIP_BYTES = 32 * 2**20


def _overview_level(src: Any, band: int, shape: tuple[int, int]) -> int | None:
    """Index of the coarsest overview of ``src`` at least ``shape`` in both sides, or None."""
    height, width = shape
    level = None
    for position, factor in enumerate(src.overviews(band)):
        if math.ceil(src.height / factor) >= height and math.ceil(src.width / factor) >= width:
            level = position
    return level


def _nearest(source: int, target: int) -> np.ndarray:
    """Source indices that GDAL's nearest-neighbour decimation picks for ``target`` outputs."""
    return np.minimum(((np.arange(target) + 0.5) * (source / target)).astype(np.int64), source - 1)


def _decimate_in_strips(src: Any, bands: list[int], shape: tuple[int, int]) -> np.ndarray:
    rows, cols = _nearest(src.height, shape[0]), _nearest(src.width, shape[1])
    block_rows = src.block_shapes[0][0] if src.block_shapes else 1
    row_bytes = src.width * len(bands) * np.dtype(src.dtypes[0]).itemsize
    strip = max(block_rows, PREVIEW_STRIP_BYTES // max(row_bytes, 1) // block_rows * block_rows)
    out = np.empty((len(bands), *shape), dtype=src.dtypes[0])
    for top in range(0, src.height, strip):
        wanted = np.flatnonzero((rows >= top) & (rows < top + strip))
        if wanted.size == 0:
            continue
        first, last = int(rows[wanted[0]]), int(rows[wanted[-1]])
        data = src.read(bands, window=Window(0, first, src.width, last - first + 1))
        out[:, wanted] = data[:, rows[wanted] - first][:, :, cols]
    return out


def geotiff_profile(
    array_shape: tuple[int, int, int],
    dtype: str,
    *,
    crs: CRS,
    transform: Affine,
    nodata: float | None,
    block: int = 256,
    **creation: Any,
) -> dict[str, Any]:
    """Creation profile of a tiled, pixel-interleaved GeoTIFF.

    Args:
        array_shape: ``(bands, height, width)`` of what will be written.
        dtype: numpy dtype name.
        crs: its CRS.
        transform: its pixel-to-map transform.
        nodata: nodata value to record, or None.
        block: internal tile side (px); striped layout when the raster is too small
            for a block side that is a multiple of 16, as GDAL requires.
        creation: further GDAL creation options (compression, predictor, ...).

    Returns:
        Keyword arguments for ``rasterio.open(path, "w", **profile)``.
    """
    count, height, width = array_shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "interleave": "pixel",
    }
    block_x, block_y = min(width, block), min(height, block)
    if block_x % 16 == 0 and block_y % 16 == 0:
        profile.update(tiled=True, blockxsize=block_x, blockysize=block_y)
    profile.update(creation)
    return profile


def find_rasters(
    path: str | os.PathLike[str], *, role: str = "scene", assets: Sequence[str] | None = None
) -> list[RasterPath]:
    """List the raster files of a scene: one GeoTIFF, every GeoTIFF in a folder, a remote file, or STAC items.

    Args:
        path: a GeoTIFF file or a folder holding GeoTIFFs (searched recursively); a
            remote file (``https://``, ``http://``, ``s3://``, ``gs://``, ``/vsi…``: see
            :mod:`geocl.data.remote`; not searched, it is one file); or a STAC Item,
            ItemCollection, Catalog or Collection (a local or ``http(s)`` path ending in
            ``.json``/``.geojson``: one raster an item, see :mod:`geocl.data.stac`).
        role: what the files are for, used in error messages (``"scene"``, ``"mask"``).
        assets: for STAC: the asset keys stacked as bands, in order (default: the
            item's one raster data asset).

    Returns:
        The files, sorted so that runs are deterministic (a folder's); STAC items in
        the document's order.

    Raises:
        GeoclError: if the path does not exist or a folder holds no GeoTIFF; for STAC,
            naming the document, item, asset or URL at fault; ``assets`` given for a
            raster that is no STAC document.
    """
    if isinstance(path, (RemoteFile, StacRaster)):
        return [path]
    if is_stac(path):
        return list(stac_rasters(path, assets))
    if assets:
        raise InvalidInputError(
            f"--assets picks the bands of STAC items; this {role} is a raster, not a STAC document (.json)",
            path=str(path),
            key="assets",
        )
    if is_remote(path):
        return [RemoteFile(os.fspath(path))]
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{role} not found", path=path)
    if path.is_file():
        return [path]
    files: list[RasterPath] = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix in RASTER_SUFFIXES]
    if not files:
        raise MissingInputError(f"{role} folder holds no GeoTIFF (*.tif, *.tiff)", path=path)
    return files


def inspect_raster(path: str | os.PathLike[str]) -> RasterInfo:
    """Open a raster's header and check it is usable as georeferenced data.

    Args:
        path: the raster file (a remote one's header is fetched: a request or two).

    Returns:
        Its :class:`RasterInfo`.

    Raises:
        GeoclError: if the file is not a readable raster, is empty or has no CRS; for a
            remote file, one of :class:`~geocl.data.remote.RemoteError`'s kinds naming
            the URL (missing, refused, unreachable).
    """
    path = as_raster_path(path)
    try:
        with remote_env(), rasterio.open(path) as src:
            info = RasterInfo(
                path=path,
                crs=src.crs,
                transform=src.transform,
                width=src.width,
                height=src.height,
                count=src.count,
                dtype=src.dtypes[0] if src.count else "",
                nodata=src.nodata,
                bounds=tuple(src.bounds),
            )
    except rasterio.errors.RasterioError as error:
        raise read_error(error, path, "not a readable raster (corrupt or not a GeoTIFF)") from None
    if info.count == 0 or info.width == 0 or info.height == 0:
        raise InvalidInputError("raster is empty (no bands or no pixels)", path=path)
    if info.crs is None:
        raise InvalidInputError(
            "raster has no CRS; geocl needs georeferenced data (assign one, e.g. with `gdal_edit.py -a_srs EPSG:XXXX`)",
            path=path,
        )
    if info.transform.is_identity:
        raise InvalidInputError("raster has no geotransform (identity transform)", path=path)
    return info


def as_raster_path(path: str | os.PathLike[str]) -> RasterPath:
    """``path`` as a :data:`RasterPath`: a remote URL as a :class:`~geocl.data.remote.RemoteFile`,
    any other string or path as a local :class:`~pathlib.Path`, a RasterPath as it is."""
    if isinstance(path, (Path, RemoteFile, StacRaster)):
        return path
    if is_remote(path):
        return RemoteFile(os.fspath(path))
    return Path(path)


def read_error(error: BaseException, path: RasterPath, reason: str) -> GeoclError:
    """The one-line error for a failed read of ``path``: for a remote file what the server
    said (:func:`~geocl.data.remote.remote_error`), for a STAC item that of the asset at
    fault (each asset's header is asked again to find it: GDAL's message through a VRT
    need not name it), else ``reason: error`` naming the file."""
    mapped: GeoclError | None = None
    if isinstance(path, RemoteFile):
        mapped = remote_error(error, path.url)
    elif isinstance(path, StacRaster):
        for key, href in zip(path.assets, path.hrefs, strict=True):
            try:
                with remote_env(), rasterio.open(gdal_path(href)):
                    pass
            except rasterio.errors.RasterioError as own:
                mapped = remote_error(own, href, f"item {path.item}, asset {key}") or GeoclError(
                    f"item {path.item}, asset {key}: {reason}: {own}", path=display_url(href)
                )
                break
    if mapped is not None:
        return mapped
    return GeoclError(f"{reason}: {error}", path=str(path))


def scene_read_error(error: BaseException, paths: Sequence[RasterPath], reason: str, source: object) -> GeoclError:
    """:func:`read_error` for a read of a scene of several files, naming the file at fault.

    GDAL's message for a failed network read need not name the file: one file is taken
    as the one; of several, the first remote one whose header can no longer be read
    (each asked again); else the error names ``source``, the scene as given.
    """
    if len(paths) == 1:
        return read_error(error, paths[0], reason)
    for path in paths:
        if isinstance(path, Path):
            continue
        try:
            with remote_env(), rasterio.open(path):
                pass
        except rasterio.errors.RasterioError as own:
            return read_error(own, path, reason)
    return GeoclError(f"{reason}: {error}", path=str(source))


def inspect_rasters(paths: Sequence[RasterPath], *, role: str = "scene") -> list[RasterInfo]:
    """Inspect several files of one scene and check they can be mosaicked.

    Different CRSs are fine (TorchGeo reprojects to the first file's CRS); different band
    counts are not, because a mosaic needs one band layout.

    Args:
        paths: the files, as returned by :func:`find_rasters`.
        role: what the files are for, used in error messages.

    Returns:
        One :class:`RasterInfo` per file, in the same order.

    Raises:
        GeoclError: naming the first unusable file or the first band-count mismatch.
    """
    infos = [inspect_raster(path) for path in paths]
    first = infos[0]
    for info in infos[1:]:
        if info.count != first.count:
            raise InvalidInputError(
                f"{role} files have inconsistent band counts: {info.count} bands here but "
                f"{first.count} in {first.path}",
                path=info.path,
            )
    return infos


def nodata_value(infos: Sequence[RasterInfo]) -> float:
    """The value that marks missing pixels in a scene's reads.

    TorchGeo's mosaic fills gaps with the first file's nodata value; files that set none
    get 0, GDAL's fill value, so 0 in every band is then taken as nodata.

    Args:
        infos: the scene's files.

    Returns:
        The nodata value to test against.
    """
    value = infos[0].nodata
    return 0.0 if value is None else float(value)


#: Integer dtypes a float mask's classes are stored as, smallest first.
CLASS_DTYPES = ("uint8", "uint16", "int16", "int32")
#: Pixels read per strip while checking a mask's values (bounds memory).
_STRIP_PIXELS = 1 << 22


@dataclass(frozen=True)
class MaskClasses:
    """How a class mask's pixel values become integer classes.

    Class masks must hold integer class values. A mask stored as integers is used as it
    is; a float mask (what many GIS exports write) is accepted when every valid pixel is
    a whole number, and its classes are then stored in the smallest integer dtype of
    :data:`CLASS_DTYPES` that holds them and the nodata value.

    Attributes:
        dtype: numpy dtype name of the classes as read and written (mask tiles).
        nodata: the integer that marks pixels without a class, or None.
        from_float: the mask files are floats (reads must be converted).
        source_nodata: the first file's own nodata value (may be NaN), or None.
    """

    dtype: str
    nodata: int | None
    from_float: bool
    source_nodata: float | None


def mask_classes(infos: Sequence[RasterInfo], unlabelled: int | None = None) -> MaskClasses:
    """Check that a class mask holds integer classes; say how to store them.

    Integer masks need no pixel pass. Float masks are read once in row strips (memory
    bounded by :data:`_STRIP_PIXELS`): NaN and the file's nodata value are "no class";
    every other value must be a whole number within 32-bit integers. A NaN nodata
    (or NaN pixels, or a nodata that is no whole number) is replaced by an integer
    outside the classes (255 for classes within 0..254).

    ``unlabelled`` is a class value that means "no class" although the file does not
    say so (no nodata tag, 0 is common): it becomes the nodata (the file's own nodata,
    if any, still means no class too and reads as ``unlabelled``).

    Args:
        infos: the mask's files (one band each).
        unlabelled: the value that marks unlabelled pixels, or None (the file's nodata).

    Returns:
        The :class:`MaskClasses` of the mask.

    Raises:
        GeoclError: naming the file and pixel of the first non-integer class value, or
            naming ``mask_nodata`` when ``unlabelled`` does not fit an integer mask's dtype.
    """
    first = infos[0]
    source_nodata = first.nodata
    from_float = _is_float(first.dtype)
    # an integer mosaic is read as the first file's integers: only float files can hide fractions
    scans = [_scan_classes(info) for info in infos if from_float or _is_float(info.dtype)]
    if not from_float:
        if unlabelled is None:
            return MaskClasses(first.dtype, _whole(source_nodata), False, source_nodata)
        limits = np.iinfo(first.dtype)
        if not limits.min <= unlabelled <= limits.max:
            raise InvalidInputError(
                f"the unlabelled value {unlabelled} (given by mask_nodata) is outside the values "
                f"of the mask's {first.dtype} ({limits.min}..{limits.max})",
                path=first.path,
                key="mask_nodata",
            )
        return MaskClasses(first.dtype, unlabelled, False, source_nodata)
    found = [(low, high) for low, high, _ in scans if low is not None and high is not None]
    has_nan = any(nan for _, _, nan in scans)
    seen = bool(found)
    low = min((pair[0] for pair in found), default=0)
    high = max((pair[1] for pair in found), default=0)
    nodata = _whole(source_nodata) if unlabelled is None else unlabelled
    need_nodata = nodata is None and (has_nan or source_nodata is not None)
    if nodata is not None:
        low, high = (min(low, nodata), max(high, nodata)) if seen else (nodata, nodata)
    for name in CLASS_DTYPES:
        limits = np.iinfo(name)
        if low < limits.min or high > limits.max:
            continue
        if need_nodata:
            if high < limits.max:
                nodata = int(limits.max)
            elif low > limits.min:
                nodata = int(limits.min)
            else:
                continue
        return MaskClasses(name, nodata, True, source_nodata)
    raise InvalidInputError(
        f"class values from {low} to {high} do not fit 32-bit integers; a class mask holds class numbers",
        path=first.path,
    )


def _is_float(dtype: str) -> bool:
    return np.issubdtype(np.dtype(dtype), np.floating)


def _whole(value: float | None) -> int | None:
    """``value`` as an int when it is a whole number within 32-bit integers, else None."""
    if value is None or not math.isfinite(value) or value != math.floor(value) or abs(value) >= 2**31:
        return None
    return int(value)


def _scan_classes(info: RasterInfo) -> tuple[int | None, int | None, bool]:
    """Lowest and highest class value of one mask file (None without any) and whether it holds NaN."""
    low: float | None = None
    high: float | None = None
    has_nan = False
    rows = max(1, _STRIP_PIXELS // info.width)
    try:
        with remote_env(), rasterio.open(info.path) as src:
            for top in range(0, info.height, rows):
                window = Window(0, top, info.width, min(rows, info.height - top))
                values = src.read(1, window=window)
                nan = np.isnan(values)
                has_nan |= bool(nan.any())
                missing = nan if info.nodata is None or math.isnan(info.nodata) else nan | (values == info.nodata)
                bad = ~missing & ~(np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) < 2**31))
                if bad.any():
                    row, col = (int(i) for i in np.argwhere(bad)[0])
                    raise InvalidInputError(
                        f"a class mask needs integer class values, this one holds {values[row, col]} "
                        f"(row {top + row}, col {col}); classify or round it, or mark such pixels as nodata",
                        path=info.path,
                    )
                valid = values[~missing]
                if valid.size:
                    low = float(valid.min()) if low is None else min(low, float(valid.min()))
                    high = float(valid.max()) if high is None else max(high, float(valid.max()))
    except rasterio.errors.RasterioError as error:
        raise read_error(error, info.path, "cannot read pixels (corrupt file?)") from None
    if low is None or high is None:
        return None, None, has_nan
    return int(low), int(high), has_nan
