"""STAC items as scenes: chosen assets stacked into one raster per item, items as one mosaic.

A STAC input is a JSON document, a local file or an ``http(s)://`` URL (the path ends in
``.json`` or ``.geojson``), read with pystac: an Item, an ItemCollection (a
FeatureCollection of items, what a STAC API search returns), or a Catalog or Collection
(its items, children included). Each item becomes one :class:`StacRaster`: the assets
``assets`` names, in that order, stacked as the bands of one raster (``--assets B04 B03
B02 B08`` gives red, green, blue, near infrared). Several items are several files of one
scene, read as one mosaic on the first item's grid (:mod:`geocl.data.mosaic`, and
TorchGeo's merge in ``geocl tile``), as a folder of GeoTIFFs is.

How the assets are stacked: a GDAL VRT in memory (``/vsimem/``, GDAL's in-memory file
system), which ``os.fspath(raster)`` names, so ``rasterio.open(raster)`` opens it. Chosen
over reading and stacking the arrays in Python because every reader of geocl (TorchGeo's
``RasterDataset``, the mosaic, the statistics, the previews) then reads a STAC item as it
reads a GeoTIFF, window by window, each window fetching only the byte ranges of its
assets' internal tiles (a VRT source is opened lazily, on the first read that needs it).
Over a temporary VRT file, because nothing is left on disk to clean up. A ``/vsimem/``
file lives in one process's GDAL, so the raster keeps the XML and writes it again in each
process that asks for it (a Dask worker, a DataLoader worker, after pickling or a fork). The grid is the first asset's (CRS, pixel size, origin); an asset
of another pixel size (Sentinel-2's 20 m bands beside its 10 m ones) is resampled onto it
by GDAL, nearest neighbour (the rule of ``geocl tile``), an asset in another CRS is
refused. All bands take the widest data type of the assets (numpy's promotion) and the
first asset's nodata.

Asset hrefs may be URLs (:mod:`geocl.data.remote`: ``https://``, ``s3://``, ``gs://``,
read in windows with credentials from the environment), or paths relative to the
document. A missing asset key, a STAC document or an asset that is missing, refused or
unreachable is one :class:`~geocl.errors.GeoclError` naming the item, the asset and the URL.

References:
    STAC specification 1.0 (https://github.com/radiantearth/stac-spec), items, item
    collections and catalogs; GDAL VRT format (https://gdal.org/en/stable/drivers/raster/vrt.html).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import urllib.error
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
import pystac
import rasterio
import rasterio.errors
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from geocl.data.remote import (
    RemoteAccessError,
    RemoteError,
    RemoteFile,
    RemoteNotFoundError,
    RemoteStat,
    RemoteUnreachableError,
    display_url,
    gdal_path,
    is_remote,
    remote_env,
    remote_error,
)
from geocl.errors import GeoclError, InvalidInputError, MissingInputError

__all__ = ["STAC_SUFFIXES", "StacRaster", "is_stac", "read_items", "select_assets", "stac_rasters", "stack_item"]

#: Path endings of a STAC document given as a scene.
STAC_SUFFIXES = (".json", ".geojson")
#: Media types of raster assets geocl reads when no ``--assets`` picks them.
_RASTER_TYPES = ("image/tiff", "image/jp2", "application/x-hdf", "image/vnd.stac.geotiff")
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")
#: GDAL's names of the numpy data types (``VRTRasterBand dataType``).
_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}
#: A pixel size or grid position within this fraction of a pixel counts as the same.
_SAME = 1e-6


def is_stac(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is a STAC document: its path (without query) ends in ``.json`` or ``.geojson``."""
    text = source.url if isinstance(source, RemoteFile) else os.fspath(source)
    path = urlsplit(text).path if "://" in text else text
    return path.lower().endswith(STAC_SUFFIXES)


def _document_error(error: BaseException, href: str) -> GeoclError | None:
    """The one-line error for a STAC document that cannot be fetched (pystac wraps urllib's errors)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        if isinstance(item, urllib.error.HTTPError):
            if item.code == 404:
                return RemoteNotFoundError(href, "STAC document not found (HTTP 404)")
            if item.code in (401, 403):
                return RemoteAccessError(
                    href,
                    f"access to the STAC document denied (HTTP {item.code}); geocl takes credentials from "
                    "the environment only (a pre-signed URL, or GDAL_HTTP_HEADERS for the assets)",
                )
            return RemoteError(href, f"STAC document refused by the server (HTTP {item.code})")
    if not is_remote(href):
        for item in chain:
            if isinstance(item, FileNotFoundError):
                return MissingInputError("STAC document not found", path=href)
        return None
    for item in chain:
        name = type(item).__module__.split(".")[0]
        if isinstance(item, (urllib.error.URLError, ConnectionError, TimeoutError)) or name == "urllib3":
            reason = str(getattr(item, "reason", None) or item).split(": ")[-1]
            return RemoteUnreachableError(href, f"unreachable ({reason})")
    return None


def _href(source: str | os.PathLike[str]) -> str:
    """The document's href for pystac: a URL as given, a local path absolute."""
    text = source.url if isinstance(source, RemoteFile) else os.fspath(source)
    if "://" in text:
        scheme = urlsplit(text).scheme.lower()
        if scheme not in ("http", "https", "file"):
            raise InvalidInputError(
                f"STAC documents are read from local files or http(s) URLs, not {scheme}:// (their assets may "
                "be anywhere: s3://, gs://, https://)",
                path=display_url(text),
            )
        return text
    return str(Path(text).resolve())


def _items(stac: Any) -> Iterator[pystac.Item]:
    if isinstance(stac, pystac.Item):
        yield stac
    elif isinstance(stac, pystac.ItemCollection):
        yield from stac.items
    elif isinstance(stac, pystac.Catalog):  # a Collection is a Catalog too
        yield from stac.get_items(recursive=True)


def read_items(source: str | os.PathLike[str]) -> list[pystac.Item]:
    """The items of a STAC Item, ItemCollection, Catalog or Collection (children included), in document order.

    Raises:
        GeoclError: naming the document (or the child document) that is missing,
            refused, unreachable, not JSON or not STAC, or that holds no item.
    """
    href = _href(source)
    io = pystac.StacIO.default()
    try:
        data = io.read_json(href)
        if not isinstance(data, dict):
            raise InvalidInputError("is not a STAC document (a JSON object)", path=display_url(href))
        if data.get("type") == "FeatureCollection":
            stac: Any = pystac.ItemCollection.from_dict(data, preserve_dict=False, root=None)
        else:
            stac = pystac.read_dict(data, href=href, stac_io=io)
        items = list(_items(stac))
    except GeoclError:
        raise
    except ValueError as error:  # JSONDecodeError, or not an object pystac knows
        mapped = _document_error(error, href)
        if mapped is not None:
            raise mapped from None
        raise InvalidInputError(
            f"is not a STAC Item, ItemCollection, Catalog or Collection ({error})", path=display_url(href)
        ) from None
    except Exception as error:  # pystac wraps urllib's HTTPError in a bare Exception
        mapped = _document_error(error, href)
        if mapped is None:
            raise
        raise mapped from None
    if not items:
        raise InvalidInputError("STAC document holds no item", path=display_url(href))
    return items


def _where(item: pystac.Item, document: str) -> str:
    """Where ``item`` was read from: its own href, else the document holding it."""
    return display_url(item.get_self_href() or document)


def _absolute(asset: pystac.Asset, item: pystac.Item, document: str) -> str:
    """The asset's href, absolute: as given when it is a URL or an absolute path, else joined to the
    item's href (an item of an ItemCollection without one: the collection's)."""
    href = asset.href
    if "://" in href or href.startswith("/"):
        return href
    base = item.get_self_href() or document
    return urljoin(base, href) if "://" in base else str(Path(base).parent / href)


def _is_raster(asset: pystac.Asset) -> bool:
    roles = asset.roles or ["data"]
    kind = (asset.media_type or "").lower()
    suffix = PurePosixPath(urlsplit(asset.href).path).suffix.lower()
    return "data" in roles and (any(kind.startswith(t) for t in _RASTER_TYPES) or suffix in _RASTER_SUFFIXES)


def select_assets(item: pystac.Item, assets: Sequence[str] | None, document: str = "") -> list[tuple[str, str]]:
    """``(key, absolute href)`` of the assets of ``item`` to stack, in the order asked.

    Without ``assets``, the item's one raster data asset (role ``data`` or none, a
    GeoTIFF/JPEG 2000 media type or suffix); an item with several must be told which.
    ``document`` is where the item was read from (relative hrefs, messages).

    Raises:
        GeoclError: naming the item and the asset that is not in it (with the keys it
            has), or asking for ``--assets`` (with the raster assets it has).
    """
    if assets:
        missing = [key for key in assets if key not in item.assets]
        if missing:
            raise InvalidInputError(
                f"item {item.id}, asset {missing[0]}: not in the item (it has {', '.join(item.assets) or 'none'})",
                path=_where(item, document),
                key="assets",
            )
        return [(key, _absolute(item.assets[key], item, document)) for key in assets]
    rasters = [key for key, asset in item.assets.items() if _is_raster(asset)]
    if len(rasters) == 1:
        return [(rasters[0], _absolute(item.assets[rasters[0]], item, document))]
    if not rasters:
        raise InvalidInputError(
            f"item {item.id}: no GeoTIFF data asset (it has {', '.join(item.assets) or 'none'})",
            path=_where(item, document),
            key="assets",
        )
    raise InvalidInputError(
        f"item {item.id} has {len(rasters)} raster assets ({', '.join(rasters)}): pick and order the bands with "
        f"--assets, e.g. --assets {' '.join(rasters[:3])}",
        path=_where(item, document),
        key="assets",
    )


@dataclass(frozen=True)
class _Asset:
    """The header of one asset's raster (what the VRT needs to place it without opening it)."""

    key: str
    href: str
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    crs: CRS
    transform: Affine
    block: tuple[int, int]


def _open_asset(item: pystac.Item, key: str, href: str) -> _Asset:
    where = f"item {item.id}, asset {key}"
    try:
        with remote_env(), rasterio.open(gdal_path(href)) as src:
            block = src.block_shapes[0] if src.block_shapes else (1, src.width)
            return _Asset(
                key,
                href,
                src.width,
                src.height,
                src.count,
                src.dtypes[0],
                src.nodata,
                src.crs,
                src.transform,
                (int(block[1]), int(block[0])),
            )
    except rasterio.errors.RasterioError as error:
        mapped = remote_error(error, href, where)
        if mapped is not None:
            raise mapped from None
        if not is_remote(href) and not Path(href).exists():
            raise MissingInputError(f"{where}: file not found", path=href) from None
        raise InvalidInputError(f"{where}: not a readable raster ({error})", path=display_url(href)) from None


def _vrt(assets: Sequence[_Asset]) -> str:
    """The VRT XML stacking every band of ``assets`` on the first one's grid."""
    grid = assets[0]
    dtype = np.result_type(*[np.dtype(asset.dtype) for asset in assets]).name
    root = ET.Element("VRTDataset", rasterXSize=str(grid.width), rasterYSize=str(grid.height))
    ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = grid.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in grid.transform.to_gdal())
    to_grid = ~grid.transform
    number = 0
    for asset in assets:
        col, row = to_grid @ (asset.transform.c, asset.transform.f)
        width = asset.width * asset.transform.a / grid.transform.a
        height = asset.height * asset.transform.e / grid.transform.e
        for band in range(1, asset.count + 1):
            number += 1
            element = ET.SubElement(
                root,
                "VRTRasterBand",
                dataType=_GDAL_TYPES[dtype],
                band=str(number),
                blockXSize=str(min(grid.block[0], grid.width)),
                blockYSize=str(min(grid.block[1], grid.height)),
            )
            ET.SubElement(element, "Description").text = asset.key if asset.count == 1 else f"{asset.key}:{band}"
            if grid.nodata is not None:
                ET.SubElement(element, "NoDataValue").text = repr(float(grid.nodata))
            source = ET.SubElement(element, "SimpleSource", resampling="nearest")
            ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = gdal_path(asset.href)
            ET.SubElement(source, "SourceBand").text = str(band)
            ET.SubElement(
                source,
                "SourceProperties",
                RasterXSize=str(asset.width),
                RasterYSize=str(asset.height),
                DataType=_GDAL_TYPES[asset.dtype],
                BlockXSize=str(asset.block[0]),
                BlockYSize=str(asset.block[1]),
            )
            ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(asset.width), ySize=str(asset.height))
            ET.SubElement(source, "DstRect", xOff=repr(col), yOff=repr(row), xSize=repr(width), ySize=repr(height))
    return ET.tostring(root, encoding="unicode")


def _check_grid(item: pystac.Item, assets: Sequence[_Asset]) -> None:
    """Refuse assets that cannot be placed on the first one's grid by scaling and shifting."""
    grid = assets[0]
    for asset in assets:
        where = f"item {item.id}, asset {asset.key}"
        if asset.dtype not in _GDAL_TYPES:
            raise InvalidInputError(f"{where}: data type {asset.dtype} is not supported", path=display_url(asset.href))
        if asset.crs != grid.crs:
            raise InvalidInputError(
                f"{where}: in {asset.crs.to_string()}, but asset {grid.key} (the grid) in {grid.crs.to_string()}; "
                "stack assets of one CRS",
                path=display_url(asset.href),
                key="assets",
            )
        if asset.transform.b or asset.transform.d:
            raise InvalidInputError(f"{where}: rotated grids are not supported", path=display_url(asset.href))


class StacRaster(os.PathLike[str]):
    """One STAC item's chosen assets as one raster, with the part of :class:`pathlib.Path` geocl uses.

    ``os.fspath()`` (and so ``rasterio.open``, and ``Path()``) gives the ``/vsimem/`` VRT
    file of this process (written on first use in each process); ``str()`` gives
    ``DOCUMENT#ITEM[ASSET,...]`` (signatures hidden), what messages and ``tiles.json``
    show; :attr:`name` is the item id. Picklable (the XML travels, not the memory file).

    Args:
        item: the item's id.
        document: the STAC document it was read from.
        assets: the stacked assets' keys, in band order.
        hrefs: their absolute hrefs.
        vrt: the VRT XML.
    """

    def __init__(self, item: str, document: str, assets: Sequence[str], hrefs: Sequence[str], vrt: str) -> None:
        self.item = item
        self.document = document
        self.assets = tuple(assets)
        self.hrefs = tuple(hrefs)
        self.vrt = vrt
        self._memory: MemoryFile | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def __fspath__(self) -> str:
        with self._lock:
            if self._memory is None or self._pid != os.getpid():
                name = re.sub(r"[^A-Za-z0-9_.-]", "_", self.item) + ".vrt"
                self._memory = MemoryFile(self.vrt.encode(), filename=name)
                self._pid = os.getpid()
            return str(self._memory.name)

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in ("_memory", "_lock", "_pid")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _memory=None, _pid=0, _lock=threading.Lock())

    def __str__(self) -> str:
        return f"{display_url(self.document)}#{self.item}[{','.join(self.assets)}]"

    def __repr__(self) -> str:
        return f"StacRaster({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StacRaster) and other.vrt == self.vrt

    def __hash__(self) -> int:
        return hash(self.vrt)

    @property
    def name(self) -> str:
        """The item's id."""
        return self.item

    @property
    def stem(self) -> str:
        """The item's id."""
        return self.item

    @property
    def suffix(self) -> str:
        """'' (a VRT in memory)."""
        return ""

    def resolve(self) -> StacRaster:
        """Itself."""
        return self

    def stat(self) -> RemoteStat:
        """Total size and a time that changes with any asset (their own :func:`os.stat` or HTTP headers)."""
        size, key = 0, hashlib.sha256()
        for href in self.hrefs:
            stat = RemoteFile(href).stat() if is_remote(href) else os.stat(href)
            size += stat.st_size
            key.update(f"{href}|{stat.st_size}|{stat.st_mtime_ns}|{getattr(stat, 'etag', '')}\n".encode())
        return RemoteStat(size, int.from_bytes(key.digest()[:7], "big"))


def stack_item(item: pystac.Item, assets: Sequence[str] | None, document: str) -> StacRaster:
    """One item's assets (:func:`select_assets`) stacked as one :class:`StacRaster`.

    Each asset's header is read (a request or two for a remote one), so a missing or
    refused asset is named now, before any output.

    Raises:
        GeoclError: naming the item, asset and URL (see :func:`select_assets`,
            :func:`~geocl.data.remote.remote_error`), or an asset in another CRS.
    """
    chosen = [_open_asset(item, key, href) for key, href in select_assets(item, assets, document)]
    _check_grid(item, chosen)
    return StacRaster(item.id, document, [a.key for a in chosen], [a.href for a in chosen], _vrt(chosen))


def stac_rasters(source: str | os.PathLike[str], assets: Sequence[str] | None = None) -> list[StacRaster]:
    """Every item of a STAC document as a :class:`StacRaster` of ``assets``, in document order.

    Raises:
        GeoclError: as :func:`read_items` and :func:`stack_item`.
    """
    document = _href(source)
    return [stack_item(item, assets, document) for item in read_items(source)]
