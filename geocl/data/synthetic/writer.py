"""``make_scene``: the synthetic scenes' kinds, parameters, cache and GeoTIFF files."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioIOError
from rasterio.transform import Affine

from geocl.data.rasters import geotiff_profile
from geocl.data.synthetic.classes import (
    CLASS_COLORS_BY_KIND,
    CLASS_NAMES_BY_KIND,
    IMAGE_NODATA,
    MASK_NODATA,
    SCENE_KINDS,
)
from geocl.data.synthetic.render import generate
from geocl.data.synthetic.spectra import band_names
from geocl.data.synthetic.urban import URBAN_GSD, generate_urban
from geocl.errors import GeoclError, InputPermissionError, InvalidInputError, OutputExistsError
from geocl.io import atomic_path

#: The kinds of synthetic scene (see :func:`make_scene`).
SceneKind = Literal["rural", "urban"]
assert get_args(SceneKind) == SCENE_KINDS

#: Per kind, bumped whenever the same parameters would give different files; part of the cache key.
GENERATOR_VERSIONS: dict[str, int] = {"rural": 1, "urban": 1}
#: The rural (default) scene's generator version.
GENERATOR_VERSION: int = GENERATOR_VERSIONS["rural"]
#: Default pixel size per kind, CRS units (metres for the default UTM CRS).
DEFAULT_RESOLUTION: dict[str, float] = {"rural": 1.0, "urban": URBAN_GSD}
_GENERATORS = {"rural": generate, "urban": generate_urban}

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
            :data:`CLASS_NAMES_BY_KIND`), shape (1, size, size), nodata 255.
        metadata: ``scene.json`` with the kind, the generation parameters, the
            generator version, class and band names.
    """

    image: Path
    mask: Path
    metadata: Path


def make_scene(
    out_dir: str | os.PathLike[str],
    *,
    kind: SceneKind = "rural",
    size: int = 4096,
    seed: int = 0,
    bands: int = 4,
    resolution: float | None = None,
    epsg: int = 32633,
    overwrite: bool = False,
) -> SceneFiles:
    """Write (or reuse) a seeded, labelled synthetic scene in *out_dir*.

    Two kinds of scene:

    * ``"rural"`` (the default): a landscape at 1 m with the classes of
      :data:`~geocl.data.synthetic.classes.CLASS_NAMES` (water, forest, cropland,
      grassland, buildings, roads, bare soil; see :mod:`geocl.data.synthetic`). Object
      sizes are defined in pixels (a house is 6-20 px wide whatever the resolution);
      landscape-scale features (forests, farm blocks, settlements, lakes) shrink with
      ``size`` so that small scenes still hold most classes. A nodata strip along one
      edge and a nodata triangle in a corner (together about 3-8 % of the pixels)
      mimic the edge of an image swath.
    * ``"urban"``: a city at 0.2 m with the ISPRS Potsdam/Vaihingen classes of
      :data:`~geocl.data.synthetic.classes.URBAN_CLASS_NAMES` (impervious surfaces,
      building, low vegetation, tree, car, clutter), many objects smaller than a
      64-128 px view and classes that per-pixel spectra do not separate (see
      :mod:`geocl.data.synthetic.urban`). Objects are drawn for 0.2 m pixels (a car
      is about 22 x 9 px); another ``resolution`` only changes the georeferencing.
      No nodata.

    The scene is square, ``size`` x ``size`` pixels of ``resolution`` CRS units
    (metres for the default UTM zone 33N), with its top-left corner at
    x = 500 000, y = 5 100 000.

    Files, all written to a temporary name in *out_dir* and moved into place:

    * ``image.tif``: ``uint16``, shape (bands, size, size), reflectance x 10000
      (water ~100-900, vegetation NIR ~2500-5000); bands blue, green, red, nir,
      then swir1, swir2, then red-edge-like mixtures; nodata 0 in every band, valid
      pixels are >= 1 in every band; tiled 256 x 256, ZSTD with predictor 2.
    * ``mask.tif``: ``uint8``, shape (1, size, size), class index into the kind's
      class names (:data:`CLASS_NAMES_BY_KIND`), 255 exactly where the image is
      nodata; same grid; the kind's class colours as its colour map.
    * ``scene.json``: the kind, the parameters, the kind's generator version
      (:data:`GENERATOR_VERSIONS`), class and band names and the class pixel counts;
      written last, it marks the scene as complete.

    If ``scene.json`` records the same kind, parameters and generator version and both
    GeoTIFFs exist, nothing is written and the existing paths are returned. A folder
    that holds a synthetic scene of the other kind is refused unless *overwrite*.

    Args:
        out_dir: folder for the three files; created if missing.
        kind: ``"rural"`` or ``"urban"``.
        size: width and height in pixels, 64-8192 (peak memory about 0.85 GB at
            4096 and 3.1 GB at 8192).
        seed: seed of the random generator, >= 0.
        bands: number of image bands, 4-32.
        resolution: pixel size in CRS units, > 0; None = the kind's default
            (:data:`DEFAULT_RESOLUTION`: 1.0 rural, 0.2 urban).
        epsg: EPSG code of a projected CRS.
        overwrite: regenerate even if a matching scene exists, and replace a scene
            of the other kind.

    Returns:
        the paths of the image, the mask and ``scene.json``.

    Raises:
        GeoclError: if an argument is out of range, *out_dir* holds a scene of the
            other kind (and not *overwrite*) or cannot be written.
    """
    if not isinstance(kind, str) or kind not in SCENE_KINDS:
        raise InvalidInputError(f"must be one of {', '.join(SCENE_KINDS)}, got {kind!r}", key="kind")
    if resolution is None:
        resolution = DEFAULT_RESOLUTION[kind]
    params = _check_params(size=size, seed=seed, bands=bands, resolution=resolution, epsg=epsg)
    folder = Path(out_dir)
    files = SceneFiles(folder / "image.tif", folder / "mask.tif", folder / "scene.json")
    if not overwrite:
        held = _held_kind(files)
        if held is not None and held != kind:
            raise OutputExistsError(
                f"holds a synthetic {held} scene, asked for kind {kind!r}: "
                "use another folder, or overwrite to replace it",
                path=folder,
            )
        if _is_cached(files, kind, params):
            return files
    _prepare_folder(folder)
    # The old sidecar goes first: an interrupted run must not look complete.
    try:
        files.metadata.unlink(missing_ok=True)
    except OSError as err:
        raise GeoclError(f"cannot remove the old scene.json: {err.strerror}", path=files.metadata) from err

    image, mask = _GENERATORS[kind](size=size, seed=seed, bands=bands)
    crs = CRS.from_epsg(epsg)
    transform = Affine(params["resolution"], 0.0, _ORIGIN[0], 0.0, -params["resolution"], _ORIGIN[1])
    names = band_names(bands)
    class_names = CLASS_NAMES_BY_KIND[kind]
    version = GENERATOR_VERSIONS[kind]
    _write_tif(files.mask, mask[None], crs=crs, transform=transform, nodata=MASK_NODATA, kind="mask", scene_kind=kind)
    _write_tif(
        files.image,
        image,
        crs=crs,
        transform=transform,
        nodata=IMAGE_NODATA,
        kind="image",
        scene_kind=kind,
        band_names=names,
    )
    counts = np.bincount(mask.ravel(), minlength=256)
    meta: dict[str, Any] = {
        "generator": "geocl.data.synthetic",
        "kind": kind,
        "generator_version": version,
        "params": params,
        "class_names": list(class_names),
        "band_names": list(names),
        "image_nodata": IMAGE_NODATA,
        "mask_nodata": MASK_NODATA,
        "class_pixels": {name: int(counts[i]) for i, name in enumerate(class_names)},
        "nodata_pixels": int(counts[MASK_NODATA]),
    }
    _atomic_write_bytes(files.metadata, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return files


def _check_params(*, size: int, seed: int, bands: int, resolution: float, epsg: int) -> dict[str, Any]:
    """Validate the arguments of :func:`make_scene` and return them as plain JSON values."""

    def is_int(value: object) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(size) or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise InvalidInputError(f"must be an integer from {_MIN_SIZE} to {_MAX_SIZE} pixels, got {size!r}", key="size")
    if not is_int(seed) or seed < 0:
        raise InvalidInputError(f"must be a non-negative integer, got {seed!r}", key="seed")
    if not is_int(bands) or not _MIN_BANDS <= bands <= _MAX_BANDS:
        raise InvalidInputError(
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
        raise InvalidInputError(f"must be a positive number of CRS units, got {resolution!r}", key="resolution")
    if not is_int(epsg):
        raise InvalidInputError(f"must be an integer EPSG code, got {epsg!r}", key="epsg")
    try:
        crs = CRS.from_epsg(int(epsg))
    except CRSError as err:
        raise InvalidInputError(f"unknown EPSG code {epsg}: {err}", key="epsg") from err
    if not crs.is_projected:
        raise InvalidInputError(f"EPSG:{epsg} is not a projected CRS; the scene needs metric pixels", key="epsg")
    return {
        "size": int(size),
        "seed": int(seed),
        "bands": int(bands),
        "resolution": float(resolution),
        "epsg": int(epsg),
    }


def _read_metadata(files: SceneFiles) -> dict[str, Any] | None:
    """The parsed ``scene.json`` of *files*, or None if missing or unreadable."""
    try:
        meta = json.loads(files.metadata.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _held_kind(files: SceneFiles) -> str | None:
    """The kind of the synthetic scene whose ``scene.json`` is in the folder, if any (none recorded = rural)."""
    meta = _read_metadata(files) if files.metadata.is_file() else None
    if meta is None or meta.get("generator") != "geocl.data.synthetic":
        return None
    held = meta.get("kind", "rural")
    return held if isinstance(held, str) else None


def _is_cached(files: SceneFiles, kind: str, params: dict[str, Any]) -> bool:
    """Whether *files* hold a complete scene of *kind* made with *params* by this generator version."""
    if not (files.metadata.is_file() and files.image.is_file() and files.mask.is_file()):
        return False
    meta = _read_metadata(files)
    return (
        meta is not None
        and meta.get("kind", "rural") == kind
        and meta.get("generator_version") == GENERATOR_VERSIONS[kind]
        and meta.get("params") == params
    )


def _prepare_folder(folder: Path) -> None:
    """Create *folder* if needed and check that files can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise OutputExistsError("exists and is not a folder", path=folder) from err
    except OSError as err:
        raise GeoclError(f"cannot create the scene folder: {err.strerror}", path=folder) from err
    if not folder.is_dir():
        raise OutputExistsError("exists and is not a folder", path=folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputPermissionError("the scene folder is not writable", path=folder)


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
    scene_kind: str,
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
        scene_kind: the scene's kind (its class names, colours and generator version).
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
                dst.update_tags(generator="geocl.data.synthetic", generator_version=str(GENERATOR_VERSIONS[scene_kind]))
            else:
                dst.set_band_description(1, "class")
                dst.update_tags(1, class_names=",".join(CLASS_NAMES_BY_KIND[scene_kind]))
                colormap = {i: (*rgb, 255) for i, rgb in enumerate(CLASS_COLORS_BY_KIND[scene_kind])}
                colormap[MASK_NODATA] = (0, 0, 0, 0)
                dst.write_colormap(1, colormap)
    except (OSError, RasterioIOError) as err:
        raise GeoclError(f"cannot write the {kind}: {err}", path=target) from err
