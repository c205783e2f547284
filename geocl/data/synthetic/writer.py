"""``make_scene``: the synthetic scene's parameters, cache and GeoTIFF files."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioIOError
from rasterio.transform import Affine

from geocl.data.rasters import geotiff_profile
from geocl.data.synthetic.classes import CLASS_COLORS, CLASS_NAMES, IMAGE_NODATA, MASK_NODATA
from geocl.data.synthetic.render import generate
from geocl.data.synthetic.spectra import band_names
from geocl.errors import GeoclError
from geocl.io import atomic_path

#: Bumped whenever the same parameters would give different files; part of the cache key.
GENERATOR_VERSION: int = 1

_MIN_BANDS = 4
_MAX_BANDS = 32
_MIN_SIZE = 64
_MAX_SIZE = 8192  # memory grows with size**2: ~0.85 GB at 4096 px, ~3.1 GB at 8192 px
_BLOCK = 256
_ORIGIN = (500_000.0, 5_100_000.0)  # x of the left edge, y of the top edge, CRS units


@dataclass(frozen=True)
class SceneFiles:
    """Paths of a complete synthetic scene.

    Attributes:
        image: multispectral GeoTIFF, ``uint16`` reflectance x 10000, shape
            (bands, size, size), nodata 0.
        mask: land-cover GeoTIFF, ``uint8`` class index per pixel (see
            :data:`CLASS_NAMES`), shape (1, size, size), nodata 255.
        metadata: ``scene.json`` with the generation parameters, the generator
            version, class and band names.
    """

    image: Path
    mask: Path
    metadata: Path


def make_scene(
    out_dir: str | os.PathLike[str],
    *,
    size: int = 4096,
    seed: int = 0,
    bands: int = 4,
    resolution: float = 1.0,
    epsg: int = 32633,
    overwrite: bool = False,
) -> SceneFiles:
    """Write (or reuse) a seeded, labelled synthetic scene in *out_dir*.

    The scene is square, ``size`` x ``size`` pixels of ``resolution`` CRS units
    (metres for the default UTM zone 33N), with its top-left corner at
    x = 500 000, y = 5 100 000. Object sizes are defined in pixels (a house is
    6-20 px wide whatever the resolution); landscape-scale features (forests, farm
    blocks, settlements, lakes) shrink with ``size`` so that small scenes still hold
    most classes. A nodata strip along one edge and a nodata triangle in a corner
    (together about 3-8 % of the pixels) mimic the edge of an image swath.

    Files, all written to a temporary name in *out_dir* and moved into place:

    * ``image.tif``: ``uint16``, shape (bands, size, size), reflectance x 10000
      (water ~100-900, vegetation NIR ~2500-5000); bands blue, green, red, nir,
      then swir1, swir2, then red-edge-like mixtures; nodata 0 in every band, valid
      pixels are >= 1 in every band; tiled 256 x 256, ZSTD with predictor 2.
    * ``mask.tif``: ``uint8``, shape (1, size, size), class index into
      :data:`CLASS_NAMES`, 255 exactly where the image is nodata; same grid.
    * ``scene.json``: parameters, :data:`GENERATOR_VERSION`, class and band names and
      the class pixel counts; written last, it marks the scene as complete.

    If ``scene.json`` records the same parameters and generator version and both
    GeoTIFFs exist, nothing is written and the existing paths are returned.

    Args:
        out_dir: folder for the three files; created if missing.
        size: width and height in pixels, 64-8192 (peak memory about 0.85 GB at
            4096 and 3.1 GB at 8192).
        seed: seed of the random generator, >= 0.
        bands: number of image bands, 4-32.
        resolution: pixel size in CRS units, > 0.
        epsg: EPSG code of a projected CRS.
        overwrite: regenerate even if a matching scene exists.

    Returns:
        the paths of the image, the mask and ``scene.json``.

    Raises:
        GeoclError: if an argument is out of range or *out_dir* cannot be written.
    """
    params = _check_params(size=size, seed=seed, bands=bands, resolution=resolution, epsg=epsg)
    folder = Path(out_dir)
    files = SceneFiles(folder / "image.tif", folder / "mask.tif", folder / "scene.json")
    if not overwrite and _is_cached(files, params):
        return files
    _prepare_folder(folder)
    # The old sidecar goes first: an interrupted run must not look complete.
    try:
        files.metadata.unlink(missing_ok=True)
    except OSError as err:
        raise GeoclError(f"cannot remove the old scene.json: {err.strerror}", path=files.metadata) from err

    image, mask = generate(size=size, seed=seed, bands=bands)
    crs = CRS.from_epsg(epsg)
    transform = Affine(resolution, 0.0, _ORIGIN[0], 0.0, -resolution, _ORIGIN[1])
    names = band_names(bands)
    _write_tif(files.mask, mask[None], crs=crs, transform=transform, nodata=MASK_NODATA, kind="mask")
    _write_tif(
        files.image,
        image,
        crs=crs,
        transform=transform,
        nodata=IMAGE_NODATA,
        kind="image",
        band_names=names,
    )
    counts = np.bincount(mask.ravel(), minlength=256)
    meta: dict[str, Any] = {
        "generator": "geocl.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "params": params,
        "class_names": list(CLASS_NAMES),
        "band_names": list(names),
        "image_nodata": IMAGE_NODATA,
        "mask_nodata": MASK_NODATA,
        "class_pixels": {name: int(counts[i]) for i, name in enumerate(CLASS_NAMES)},
        "nodata_pixels": int(counts[MASK_NODATA]),
    }
    _atomic_write_bytes(files.metadata, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return files


def _check_params(*, size: int, seed: int, bands: int, resolution: float, epsg: int) -> dict[str, Any]:
    """Validate the arguments of :func:`make_scene` and return them as plain JSON values."""

    def is_int(value: object) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(size) or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise GeoclError(f"must be an integer from {_MIN_SIZE} to {_MAX_SIZE} pixels, got {size!r}", key="size")
    if not is_int(seed) or seed < 0:
        raise GeoclError(f"must be a non-negative integer, got {seed!r}", key="seed")
    if not is_int(bands) or not _MIN_BANDS <= bands <= _MAX_BANDS:
        raise GeoclError(
            f"must be an integer from {_MIN_BANDS} to {_MAX_BANDS}, got {bands!r}: the class signatures "
            "need at least blue, green, red and near-infrared",
            key="bands",
        )
    if (
        not isinstance(resolution, (int, float, np.floating, np.integer))
        or isinstance(resolution, bool)
        or not math.isfinite(resolution)
        or resolution <= 0
    ):
        raise GeoclError(f"must be a positive number of CRS units, got {resolution!r}", key="resolution")
    if not is_int(epsg):
        raise GeoclError(f"must be an integer EPSG code, got {epsg!r}", key="epsg")
    try:
        crs = CRS.from_epsg(int(epsg))
    except CRSError as err:
        raise GeoclError(f"unknown EPSG code {epsg}: {err}", key="epsg") from err
    if not crs.is_projected:
        raise GeoclError(f"EPSG:{epsg} is not a projected CRS; the scene needs metric pixels", key="epsg")
    return {
        "size": int(size),
        "seed": int(seed),
        "bands": int(bands),
        "resolution": float(resolution),
        "epsg": int(epsg),
    }


def _is_cached(files: SceneFiles, params: dict[str, Any]) -> bool:
    """Whether *files* hold a complete scene made with *params* by this generator version."""
    if not (files.metadata.is_file() and files.image.is_file() and files.mask.is_file()):
        return False
    try:
        meta = json.loads(files.metadata.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and meta.get("generator_version") == GENERATOR_VERSION
        and meta.get("params") == params
    )


def _prepare_folder(folder: Path) -> None:
    """Create *folder* if needed and check that files can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise GeoclError("exists and is not a folder", path=folder) from err
    except OSError as err:
        raise GeoclError(f"cannot create the scene folder: {err.strerror}", path=folder) from err
    if not folder.is_dir():
        raise GeoclError("exists and is not a folder", path=folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GeoclError("the scene folder is not writable", path=folder)


def _atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write *data* to *target* atomically."""
    try:
        with atomic_path(target) as temp:
            temp.write_bytes(data)
    except OSError as err:
        raise GeoclError(f"cannot write: {err.strerror}", path=target) from err


def _write_tif(
    target: Path,
    data: np.ndarray,
    *,
    crs: CRS,
    transform: Affine,
    nodata: int,
    kind: str,
    band_names: tuple[str, ...] = (),
) -> None:
    """Write a tiled, compressed GeoTIFF atomically.

    Args:
        target: final path.
        data: array of shape (bands, H, W), ``uint16`` (image) or ``uint8`` (mask).
        crs: coordinate reference system.
        transform: pixel-to-CRS affine transform.
        nodata: nodata value recorded in the profile.
        kind: ``"image"`` or ``"mask"``.
        band_names: band descriptions (image only).
    """
    creation: dict[str, Any] = {"compress": "zstd", "zstd_level": 1 if kind == "image" else 3}
    if kind == "image":
        creation["predictor"] = 2
    profile = geotiff_profile(
        data.shape, data.dtype.name, crs=crs, transform=transform, nodata=nodata, block=_BLOCK, **creation
    )
    try:
        with atomic_path(target) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            if kind == "image":
                dst.descriptions = band_names
                dst.update_tags(generator="geocl.data.synthetic", generator_version=str(GENERATOR_VERSION))
            else:
                dst.set_band_description(1, "class")
                dst.update_tags(1, class_names=",".join(CLASS_NAMES))
                colormap = {i: (*rgb, 255) for i, rgb in enumerate(CLASS_COLORS)}
                colormap[MASK_NODATA] = (0, 0, 0, 0)
                dst.write_colormap(1, colormap)
    except (OSError, RasterioIOError) as err:
        raise GeoclError(f"cannot write the {kind}: {err}", path=target) from err
