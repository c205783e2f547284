"""The embedded, labelled default scene: a seeded synthetic landscape as GeoTIFFs.

:func:`make_scene` writes ``DIR/image.tif`` (a multispectral, reflectance-like
``uint16`` image), ``DIR/mask.tif`` (a ``uint8`` land-cover mask with the classes in
:data:`CLASS_NAMES`) and, last, ``DIR/scene.json`` (the parameters that made it). A
scene is complete only once ``scene.json`` exists; a later call with the same
parameters returns at once without touching the files.

The landscape is built from spatially coherent objects whose sizes range from a few
pixels to hundreds of thousands of pixels:

* **water**: a meandering river with a tributary, lakes and small ponds;
* **forest**: patches from thresholded smooth noise, denser on high ground, plus woodlots;
* **cropland**: rotated rectangular field parcels inside Voronoi farm blocks, each parcel
  with its own crop stage (bare, green or ripe), hence its own spectrum and row texture;
* **grassland**: the background, pastures, field margins and gardens;
* **buildings**: villages and a town of rectangular houses along a street grid, large
  sheds, and isolated farmsteads;
* **roads**: main roads between settlements and to the scene edge (7-12 px), streets
  (3-5 px) and gravel farm and forest tracks (2-3 px);
* **bare_soil**: fallow parcels, quarries and construction sites, and dry patches.

The spectra are per-class mean vectors with deliberate overlap (grassland/cropland and
buildings/roads/bare soil), per-object offsets, multi-scale texture, terrain shading
from a smooth random elevation model and per-pixel sensor noise, so that a per-pixel
spectral classifier is far from perfect (see :func:`nearest_class_mean_miou`) while the
classes stay separable with spatial context.

Everything is drawn from one ``numpy.random.default_rng(seed)``: the same parameters
give byte-identical files (on one platform; float32 transcendental functions may
differ in the last bit between CPU families, which can flip a few pixel values).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioIOError
from rasterio.features import rasterize
from rasterio.transform import Affine

from geocl.data.rasters import geotiff_profile
from geocl.errors import GeoclError
from geocl.io import atomic_path

__all__ = [
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "IMAGE_NODATA",
    "MASK_NODATA",
    "CLASS_COLORS",
    "SceneFiles",
    "make_scene",
    "nearest_class_mean_miou",
]

#: Bumped whenever the same parameters would give different files; part of the cache key.
GENERATOR_VERSION: int = 1

#: Land-cover classes; the mask value of a class is its index here.
CLASS_NAMES: tuple[str, ...] = (
    "water",
    "forest",
    "cropland",
    "grassland",
    "buildings",
    "roads",
    "bare_soil",
)

#: Mask value of pixels outside the image footprint.
MASK_NODATA: int = 255

#: Image value (in every band) of pixels outside the image footprint.
IMAGE_NODATA: int = 0

WATER, FOREST, CROPLAND, GRASSLAND, BUILDINGS, ROADS, BARE_SOIL = range(7)
_N_CLASSES = len(CLASS_NAMES)

#: The first six bands; further bands are red-edge-like mixtures of red and NIR.
_BASE_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir1", "swir2")
_MIN_BANDS = 4
_MAX_BANDS = 32
_MIN_SIZE = 64
_MAX_SIZE = 8192  # memory grows with size**2: ~0.85 GB at 4096 px, ~3.1 GB at 8192 px
_BLOCK = 256
_ORIGIN = (500_000.0, 5_100_000.0)  # x of the left edge, y of the top edge, CRS units

# Class mean spectra in reflectance x 10000 (blue, green, red, nir, swir1, swir2).
_SIGNATURES = np.array(
    [
        [620, 680, 430, 260, 140, 90],  # water
        [290, 540, 330, 3300, 1550, 680],  # forest
        [360, 740, 430, 4300, 2000, 930],  # cropland, green canopy
        [470, 830, 660, 2900, 2300, 1250],  # grassland
        [1150, 1200, 1250, 1450, 1750, 1600],  # buildings
        [1000, 1050, 1100, 1250, 1550, 1400],  # roads
        [950, 1180, 1480, 2000, 2800, 2350],  # bare soil
    ],
    dtype=np.float32,
)
_CROP_SOIL = np.array([820, 1020, 1260, 1750, 2550, 2150], dtype=np.float32)
_CROP_RIPE = np.array([650, 950, 1150, 2700, 2700, 1800], dtype=np.float32)
_DRY_GRASS = np.array([640, 900, 1000, 2500, 2800, 1800], dtype=np.float32)
_CONIFER = np.array([240, 430, 260, 2300, 1050, 430], dtype=np.float32)
_ROOFS = np.array(
    [
        [1300, 1350, 1400, 1550, 1850, 1700],  # concrete / grey
        [700, 850, 1500, 1900, 2300, 2000],  # red tiles
        [550, 600, 620, 700, 900, 850],  # dark slate / tar
        [2300, 2400, 2450, 2600, 2500, 2250],  # bright metal
    ],
    dtype=np.float32,
)
_ROOF_P = np.array([0.35, 0.35, 0.2, 0.1])
_ASPHALT = np.array([800, 850, 900, 1050, 1350, 1250], dtype=np.float32)
_GRAVEL = np.array([1100, 1250, 1450, 1800, 2400, 2100], dtype=np.float32)
_CLEAR_WATER = np.array([500, 560, 300, 150, 80, 50], dtype=np.float32)
_TURBID_WATER = np.array([800, 950, 820, 450, 200, 120], dtype=np.float32)

# Texture amplitudes (relative) per class: fine (crowns, clods) and mid-scale (vigour,
# moisture) texture, and how strongly the mid-scale texture acts as "vigour" (NIR up,
# visible and SWIR down) rather than brightness.
_FINE_AMP = np.array([0.03, 0.16, 0.05, 0.07, 0.05, 0.05, 0.07], dtype=np.float32)
_MID_AMP = np.array([0.07, 0.09, 0.06, 0.10, 0.02, 0.03, 0.12], dtype=np.float32)
_VIGOUR = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=np.float32)
_VIGOUR_BANDS = np.array([-0.5, -0.4, -0.6, 1.0, -0.3, -0.4], dtype=np.float32)
_ROW_BANDS = np.array([-0.5, -0.4, -0.7, 1.0, -0.4, -0.5], dtype=np.float32)

#: RGB colour per class, written as the mask's colour map (for GIS viewers and previews).
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (30, 90, 200),
    (20, 100, 40),
    (230, 200, 60),
    (140, 210, 110),
    (200, 40, 40),
    (90, 90, 90),
    (160, 110, 60),
)

_STANDS = 16  # quantisation levels of the natural "stand" field per class
_PARCEL_K = 64  # parcel index modulus per farm block


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


# --------------------------------------------------------------------------- API


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

    image, mask = _generate(size=size, seed=seed, bands=bands)
    crs = CRS.from_epsg(epsg)
    transform = Affine(resolution, 0.0, _ORIGIN[0], 0.0, -resolution, _ORIGIN[1])
    band_names = _band_names(bands)
    _write_tif(files.mask, mask[None], crs=crs, transform=transform, nodata=MASK_NODATA, kind="mask")
    _write_tif(
        files.image,
        image,
        crs=crs,
        transform=transform,
        nodata=IMAGE_NODATA,
        kind="image",
        band_names=band_names,
    )
    counts = np.bincount(mask.ravel(), minlength=256)
    meta: dict[str, Any] = {
        "generator": "geocl.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "params": params,
        "class_names": list(CLASS_NAMES),
        "band_names": list(band_names),
        "image_nodata": IMAGE_NODATA,
        "mask_nodata": MASK_NODATA,
        "class_pixels": {name: int(counts[i]) for i, name in enumerate(CLASS_NAMES)},
        "nodata_pixels": int(counts[MASK_NODATA]),
    }
    _atomic_write_bytes(files.metadata, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return files


def nearest_class_mean_miou(
    image_path: str | os.PathLike[str],
    mask_path: str | os.PathLike[str],
    *,
    sample_pixels: int = 1_000_000,
    seed: int = 0,
) -> float:
    """mIoU of a per-pixel spectral nearest-class-mean classifier.

    A baseline that measures how separable the classes are from the spectrum of a
    single pixel. Up to ``sample_pixels`` valid pixels (mask != 255 and image not
    nodata, by its profile or 0, in every band) are drawn at random and split in two halves: class mean
    vectors are fitted on one half, and the other half is labelled with the class
    whose mean is nearest (Euclidean distance on the raw band values). The score is
    torchmetrics' multiclass Jaccard index (``average="macro"``,
    ``ignore_index=255``); classes absent from both truth and prediction do not count.

    Args:
        image_path: GeoTIFF of shape (bands, H, W).
        mask_path: single-band class GeoTIFF of shape (1, H, W), 255 = nodata.
        sample_pixels: number of valid pixels to draw (all if fewer), >= 2.
        seed: seed of the pixel draw.

    Returns:
        the mean intersection over union in [0, 1].

    Raises:
        GeoclError: if the files cannot be read, their shapes differ, or there are
            fewer than two valid pixels.
    """
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    if sample_pixels < 2:
        raise GeoclError("must be at least 2", key="sample_pixels")
    image, image_nodata = _read(image_path)
    mask, _ = _read(mask_path)
    if mask.shape[0] != 1 or mask.shape[1:] != image.shape[1:]:
        raise GeoclError(
            f"mask shape {mask.shape} does not match image shape {image.shape} (expected one band, same size)",
            path=mask_path,
        )
    target, pred, num_classes = _ncm_predict(
        image,
        mask[0],
        sample_pixels=sample_pixels,
        seed=seed,
        image_nodata=IMAGE_NODATA if image_nodata is None else image_nodata,
    )
    if target.size == 0:
        raise GeoclError("fewer than two valid pixels", path=mask_path)
    metric = MulticlassJaccardIndex(num_classes=num_classes, average="macro", ignore_index=MASK_NODATA)
    score = metric(torch.from_numpy(pred), torch.from_numpy(target))
    return float(score)


def _ncm_predict(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    sample_pixels: int,
    seed: int,
    image_nodata: float = IMAGE_NODATA,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fit class means on a random half of the valid pixels and label the other half.

    Args:
        image: array of shape (bands, H, W).
        mask: class array of shape (H, W), :data:`MASK_NODATA` = nodata.
        sample_pixels: number of valid pixels to draw (all if fewer).
        seed: seed of the draw and of the split.
        image_nodata: image value that marks nodata when found in every band.

    Returns:
        ``(target, pred, num_classes)``: true and predicted classes of the evaluation
        half, int64 arrays of shape (N,) (empty if there are fewer than two valid
        pixels), and the number of classes to score.
    """
    labels = mask.ravel()
    pixels = image.reshape(image.shape[0], -1)
    valid = labels != MASK_NODATA
    valid &= np.any(pixels != image_nodata, axis=0)
    index = np.flatnonzero(valid)
    if index.size < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, _N_CLASSES
    rng = np.random.default_rng(seed)
    if index.size > sample_pixels:
        index = np.sort(rng.choice(index, size=sample_pixels, replace=False))
    index = rng.permutation(index)
    half = index.size // 2
    fit, test = index[:half], index[half:]
    num_classes = max(_N_CLASSES, int(labels[index].max()) + 1)
    y_fit = labels[fit].astype(np.int64)
    counts = np.bincount(y_fit, minlength=num_classes)
    sums = np.stack(
        [np.bincount(y_fit, weights=pixels[b, fit].astype(np.float64), minlength=num_classes) for b in range(len(pixels))],
        axis=1,
    )
    present = counts > 0
    means = sums[present] / counts[present, None]
    classes = np.flatnonzero(present)
    pred = np.empty(test.size, dtype=np.int64)
    chunk = 1 << 16
    for start in range(0, test.size, chunk):
        x = pixels[:, test[start : start + chunk]].T.astype(np.float64)
        dist = ((x[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
        pred[start : start + chunk] = classes[np.argmin(dist, axis=1)]
    return labels[test].astype(np.int64), pred, num_classes


# ------------------------------------------------------------- checks and files


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


def _read(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """Read all bands of a raster: an array of shape (bands, H, W) and the nodata value."""
    try:
        with rasterio.open(path) as src:
            return src.read(), src.nodata
    except RasterioIOError as err:
        raise GeoclError(f"cannot read the raster: {err}", path=path) from err


def _band_names(bands: int) -> tuple[str, ...]:
    """Names of the *bands* image bands: the base bands, then ``red_edge1``, ..."""
    names = list(_BASE_BANDS[:bands])
    names += [f"red_edge{i + 1}" for i in range(bands - len(names))]
    return tuple(names)


def _band_mixing(bands: int) -> np.ndarray:
    """Matrix of shape (bands, 6) mapping the six base bands to the output bands."""
    mix = np.zeros((bands, len(_BASE_BANDS)), dtype=np.float32)
    for b in range(min(bands, len(_BASE_BANDS))):
        mix[b, b] = 1.0
    extra = bands - len(_BASE_BANDS)
    for i in range(max(extra, 0)):
        alpha = (i + 1) / (extra + 1)
        mix[len(_BASE_BANDS) + i, 2] = 1.0 - alpha
        mix[len(_BASE_BANDS) + i, 3] = alpha
    return mix


def _mix(values: np.ndarray, mixing: np.ndarray) -> np.ndarray:
    """Map values of shape (k, 6) on the base bands to shape (k, bands).

    Element-wise products and sums rather than a BLAS product, so that the result does
    not depend on the BLAS build or its threading.
    """
    return (values[:, None, :] * mixing[None, :, :]).sum(axis=2, dtype=np.float32)


# ------------------------------------------------------------------ noise fields


def _bspline_weights(factor: int) -> np.ndarray:
    """Cubic B-spline weights of shape (4, factor) for upsampling by *factor*."""
    t = (np.arange(factor, dtype=np.float64) + 0.5) / factor
    w = np.stack(
        [
            (1 - t) ** 3 / 6,
            (3 * t**3 - 6 * t**2 + 4) / 6,
            (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
            t**3 / 6,
        ]
    )
    return w.astype(np.float32)


def _upsample(grid: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Smoothly upsample a 2-D grid by an integer *factor* along *axis*.

    A grid of length g along *axis* becomes (g - 3) * factor long (cubic B-spline).
    """
    if factor == 1:
        return grid
    w = _bspline_weights(factor)
    g = grid.shape[axis]
    n = g - 3
    if axis == 0:
        out = w[0][None, :, None] * grid[0:n, None, :]
        for j in range(1, 4):
            out += w[j][None, :, None] * grid[j : j + n, None, :]
        return out.reshape(n * factor, grid.shape[1])
    out = grid[:, 0:n, None] * w[0][None, None, :]
    for j in range(1, 4):
        out += grid[:, j : j + n, None] * w[j][None, None, :]
    return out.reshape(grid.shape[0], n * factor)


def _fbm(rng: np.random.Generator, size: int, coarse: int, fine: int, decay: float = 0.5) -> np.ndarray:
    """Fractal smooth noise, shape (size, size), float32, about zero mean and unit std.

    Octaves have cell sizes coarse, coarse/2, ..., fine pixels (powers of two); each
    octave's amplitude is *decay* times the previous one. Built as a pyramid: the
    running sum is upsampled by 2 and a new white-noise octave added, then the
    finest level is upsampled by *fine* to full size.
    """
    fine = max(1, fine)
    coarse = max(fine, coarse)
    cells = [coarse]
    while cells[-1] > fine:
        cells.append(cells[-1] // 2)
    need = [0] * len(cells)
    need[-1] = -(-size // cells[-1]) + 3
    for i in range(len(cells) - 2, -1, -1):
        need[i] = -(-need[i + 1] // 2) + 3
    grid = rng.standard_normal((need[0], need[0]), dtype=np.float32)
    amp = 1.0
    for i in range(1, len(cells)):
        grid = _upsample(_upsample(grid, 2, 0), 2, 1)[: need[i], : need[i]]
        amp *= decay
        grid += np.float32(amp * 2.0) * rng.standard_normal(grid.shape, dtype=np.float32)
    field = _upsample(_upsample(grid, cells[-1], 0)[:size], cells[-1], 1)[:, :size]
    field = np.ascontiguousarray(field)
    sample = field[::4, ::4]
    field -= np.float32(sample.mean())
    field *= np.float32(1.0 / max(float(sample.std()), 1e-6))
    return field


def _pow2(value: float, lo: int = 4) -> int:
    """The power of two nearest to *value* (in log scale), at least *lo*."""
    return max(lo, 2 ** round(math.log2(max(value, 1.0))))


def _quantile(field: np.ndarray, q: float, where: np.ndarray | None = None) -> float:
    """Approximate quantile of a full-size field from a 1-in-16 subsample."""
    sample = field[::4, ::4]
    if where is not None:
        sample = sample[where[::4, ::4]]
    if sample.size == 0:
        return float("inf")
    return float(np.quantile(sample, q))


# -------------------------------------------------------------------- geometry


def _voronoi(points: np.ndarray, size: int, cell: int = 8) -> np.ndarray:
    """Nearest-point labels of shape (size, size), int32, for points (k, 2) as (x, y).

    Labels are computed on a grid of *cell*-pixel cells, then refined pixel by pixel
    in the cells on a boundary, among the labels of the 3 x 3 neighbouring cells.
    """
    gc = -(-size // cell)
    centres = (np.arange(gc, dtype=np.float32) + 0.5) * cell
    px = points[:, 0].astype(np.float32)
    py = points[:, 1].astype(np.float32)
    d2 = (centres[None, None, :] - px[:, None, None]) ** 2 + (centres[None, :, None] - py[:, None, None]) ** 2
    coarse = np.argmin(d2, axis=0).astype(np.int32)
    full = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)
    pad = np.pad(coarse, 1, mode="edge")
    neigh = np.stack([pad[dy : dy + gc, dx : dx + gc] for dy in range(3) for dx in range(3)])
    by, bx = np.nonzero(np.any(neigh != coarse[None], axis=0))
    if by.size:
        cand = neigh[:, by, bx].T  # (nb, 9)
        offs = np.arange(cell, dtype=np.float32) + 0.5
        yy = by[:, None].astype(np.float32) * cell + offs  # (nb, cell)
        xx = bx[:, None].astype(np.float32) * cell + offs
        d = (xx[:, None, :, None] - px[cand][:, None, None, :]) ** 2 + (
            yy[:, :, None, None] - py[cand][:, None, None, :]
        ) ** 2
        best = np.take_along_axis(cand[:, None, None, :], np.argmin(d, axis=3)[..., None], axis=3)[..., 0]
        full.reshape(gc, cell, gc, cell)[by, :, bx, :] = best
    return np.ascontiguousarray(full[:size, :size])


def _wander(
    rng: np.random.Generator,
    start: np.ndarray,
    target: np.ndarray,
    *,
    step: float,
    swing: float,
    bend: int,
    size: int,
    max_steps: int = 4000,
) -> np.ndarray:
    """A smoothly curving path from *start* to *target*, shape (m, 2) as (x, y).

    Each step heads towards the target plus a deviation: smooth 1-D noise with a
    typical amplitude of *swing* radians (capped at 75 degrees, so the path always
    gets closer) and bends every ~*bend* steps. The path ends with a straight piece
    once it is within 12 steps of the target, or once it has entered and then left
    the scene, or after *max_steps*.
    """
    knots = rng.standard_normal(max_steps // max(bend, 1) + 5).astype(np.float32)
    dev = _upsample(knots[:, None] * np.ones((1, 4), dtype=np.float32), max(bend, 1), 0)[:, 0]
    dev = np.clip(dev * (swing / max(float(dev.std()), 1e-6)), -1.3, 1.3)
    pos = np.asarray(start, dtype=np.float64).copy()
    margin = 4 * step + 32
    pts = [pos.copy()]
    entered = False
    for k in range(min(max_steps, len(dev))):
        if math.hypot(target[0] - pos[0], target[1] - pos[1]) < 12 * step:
            pts.append(np.asarray(target, dtype=np.float64))
            break
        heading = math.atan2(target[1] - pos[1], target[0] - pos[0]) + float(dev[k])
        pos = pos + step * np.array([math.cos(heading), math.sin(heading)])
        pts.append(pos.copy())
        inside = -margin <= pos[0] <= size + margin and -margin <= pos[1] <= size + margin
        if entered and not inside:
            break
        entered |= inside
    return np.array(pts)


def _polygon(ring: np.ndarray) -> dict[str, Any]:
    """GeoJSON polygon from a ring of shape (m, 2) (closed here)."""
    coords = ring.tolist()
    coords.append(coords[0])
    return {"type": "Polygon", "coordinates": [coords]}


def _thick_line(points: np.ndarray, widths: np.ndarray | float) -> Iterator[dict[str, Any]]:
    """Polygons covering a polyline (m, 2) of per-vertex *widths*: segment quads and joint octagons."""
    pts = np.asarray(points, dtype=np.float64)
    half = np.broadcast_to(np.asarray(widths, dtype=np.float64), (len(pts),)) / 2.0
    seg = np.diff(pts, axis=0)
    length = np.hypot(seg[:, 0], seg[:, 1])
    keep = length > 1e-9
    normal = np.zeros_like(seg)
    normal[keep] = np.stack([-seg[keep, 1], seg[keep, 0]], axis=1) / length[keep, None]
    angles = np.arange(8) * (np.pi / 4) + np.pi / 8
    octagon = np.stack([np.cos(angles), np.sin(angles)], axis=1) / math.cos(np.pi / 8)
    for i in np.flatnonzero(keep):
        p0, p1, n = pts[i], pts[i + 1], normal[i]
        h0, h1 = half[i], half[i + 1]
        yield _polygon(np.array([p0 + n * h0, p1 + n * h1, p1 - n * h1, p0 - n * h0]))
        if i > 0 and half[i] >= 1.0:
            yield _polygon(p0 + octagon * half[i])


def _rectangle(cx: float, cy: float, length: float, depth: float, angle: float) -> dict[str, Any]:
    """GeoJSON rotated rectangle centred on (cx, cy), *length* along *angle*."""
    c, s = math.cos(angle), math.sin(angle)
    a = np.array([c, s]) * length / 2
    b = np.array([-s, c]) * depth / 2
    ctr = np.array([cx, cy])
    return _polygon(np.array([ctr + a + b, ctr + a - b, ctr - a - b, ctr - a + b]))


def _burn(shapes: list[tuple[dict[str, Any], int]], size: int, dtype: str = "int32") -> np.ndarray:
    """Rasterise (geometry, value) pairs in pixel coordinates; later shapes win; 0 = none."""
    if not shapes:
        return np.zeros((size, size), dtype=dtype)
    return rasterize(shapes, out_shape=(size, size), fill=0, dtype=dtype)


def _edge_point(rng: np.random.Generator, size: int, side: int) -> np.ndarray:
    """A random point just outside edge *side* (0 left, 1 top, 2 right, 3 bottom)."""
    t = rng.uniform(0.15, 0.85) * size
    out = -0.02 * size - 8
    return np.array(
        [
            [out, t],
            [t, out],
            [size - out, t],
            [t, size - out],
        ][side]
    )


def _min_dist(point: np.ndarray, path: np.ndarray) -> float:
    """Distance from *point* (2,) to the nearest vertex of *path* (m, 2)."""
    if path.size == 0:
        return float("inf")
    return float(np.min(np.hypot(path[:, 0] - point[0], path[:, 1] - point[1])))


# -------------------------------------------------------------------- the scene


@dataclass
class _Canvas:
    """The scene while it is painted.

    Attributes:
        rng: the one random generator of the scene.
        n: width and height in pixels.
        f: object-size scale (1 for the default 4096 px scene, down to 0.35).
        area: scene area relative to the default scene.
        xs: pixel-centre coordinates 0.5 ... n - 0.5, shape (n,), float32.
        cls: class per pixel, shape (n, n), uint8.
        obj: object id per pixel (row of the spectra table), shape (n, n), int32;
            -1 until the end for pixels without an object of their own.
        spectra: object spectra on the 6 base bands, blocks of shape (k, 6).
        count: number of objects so far.
    """

    rng: np.random.Generator
    n: int
    f: float
    area: float
    xs: np.ndarray
    cls: np.ndarray
    obj: np.ndarray
    spectra: list[np.ndarray] = field(default_factory=list)
    count: int = 0

    def add(self, spectra: np.ndarray) -> int:
        """Register object spectra of shape (k, 6); return the id of the first."""
        spectra = np.atleast_2d(np.asarray(spectra, dtype=np.float32))
        first = self.count
        self.spectra.append(spectra)
        self.count += len(spectra)
        return first

    def paint(self, where: np.ndarray, cls: int, obj: int | np.ndarray = -1) -> None:
        """Set the class (and object id, -1 = natural stand) of the pixels in *where*."""
        self.cls[where] = cls
        self.obj[where] = obj

    def window(self, cx: float, cy: float, half: float) -> tuple[slice, slice] | None:
        """Row and column slices of the square of half-side *half* around (cx, cy), clipped."""
        y0, y1 = max(0, int(cy - half)), min(self.n, int(cy + half) + 1)
        x0, x1 = max(0, int(cx - half)), min(self.n, int(cx + half) + 1)
        if y0 >= y1 or x0 >= x1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def blob(
        self,
        cx: float,
        cy: float,
        radius: float,
        shape: np.ndarray,
        *,
        wobble: float,
        aspect: float = 1.0,
        angle: float = 0.0,
    ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """An irregular ellipse: window slices and the boolean mask inside them.

        The boundary is the ellipse of semi-axes *radius* and *radius* x *aspect*
        (rotated by *angle*), pushed in and out by *wobble* times the smooth field
        *shape* (n, n).
        """
        win = self.window(cx, cy, 2 * radius + 2)
        if win is None:
            return None
        dx = self.xs[None, win[1]] - np.float32(cx)
        dy = self.xs[win[0], None] - np.float32(cy)
        c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        a = (dx * c + dy * s) / np.float32(radius)
        b = (dy * c - dx * s) / np.float32(radius * aspect)
        return win, np.hypot(a, b) < 1.0 + wobble * shape[win]


def _brightness(rng: np.random.Generator, k: int, sd: float, band_sd: float) -> np.ndarray:
    """Per-object multiplicative offsets of shape (k, 6): overall brightness and band jitter."""
    overall = rng.normal(1.0, sd, size=(k, 1))
    per_band = rng.normal(1.0, band_sd, size=(k, 6))
    return np.clip(overall * per_band, 0.4, 1.8).astype(np.float32)


def _add_natural_stands(cv: _Canvas) -> None:
    """Objects 0 .. 7 x 16 - 1: 16 spectra per class for areas without objects of their own."""
    rng = cv.rng
    natural = np.empty((_N_CLASSES, _STANDS, 6), dtype=np.float32)
    for c in range(_N_CLASSES):
        natural[c] = _SIGNATURES[c] * _brightness(rng, _STANDS, 0.07, 0.03)
    conifer = rng.uniform(0.0, 1.0, size=(_STANDS, 1)).astype(np.float32) ** 2
    natural[FOREST] = natural[FOREST] * (1 - conifer) + _CONIFER * conifer * _brightness(rng, _STANDS, 0.05, 0.02)
    dry = rng.uniform(0.0, 0.6, size=(_STANDS, 1)).astype(np.float32) ** 2
    natural[GRASSLAND] = natural[GRASSLAND] * (1 - dry) + _DRY_GRASS * dry
    first = cv.add(natural.reshape(-1, 6))
    assert first == 0


def _parcel_spectra(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random parcels: class, spectrum and row-texture amplitude.

    Cropland parcels are bare (just sown), green (vigour varies) or ripe; pastures
    are more or less dry grass; fallow parcels are bare soil.

    Returns:
        ``(classes, spectra, row_amplitude)`` of shapes (count,), (count, 6), (count,).
    """
    ptype = rng.choice(np.array([CROPLAND, GRASSLAND, BARE_SOIL], dtype=np.uint8), size=count, p=[0.7, 0.22, 0.08])
    stage = rng.choice(3, size=count, p=[0.1, 0.72, 0.18])[:, None]  # 0 bare, 1 green, 2 ripe
    vigour = rng.beta(4.0, 1.4, size=(count, 1)).astype(np.float32)
    early = rng.uniform(0.0, 0.45, size=(count, 1)).astype(np.float32)
    ripe = rng.uniform(0.5, 1.0, size=(count, 1)).astype(np.float32)
    crop = np.where(
        stage == 0,
        _CROP_SOIL * (1 - early) + _SIGNATURES[CROPLAND] * early,
        np.where(
            stage == 1,
            _CROP_SOIL * (1 - vigour) + _SIGNATURES[CROPLAND] * vigour,
            _CROP_RIPE * ripe + _SIGNATURES[CROPLAND] * (1 - ripe),
        ),
    )
    dry = rng.uniform(0.0, 0.7, size=(count, 1)).astype(np.float32) ** 2
    pasture = _SIGNATURES[GRASSLAND] * (1 - dry) + _DRY_GRASS * dry
    fallow = _SIGNATURES[BARE_SOIL] * rng.uniform(0.75, 1.1, size=(count, 1)).astype(np.float32)
    spectra = np.where((ptype == CROPLAND)[:, None], crop, np.where((ptype == GRASSLAND)[:, None], pasture, fallow))
    spectra *= _brightness(rng, count, 0.05, 0.03)
    row_amp = np.where(ptype == CROPLAND, rng.uniform(0.03, 0.14, count), 0.0).astype(np.float32)
    row_amp *= np.where(stage[:, 0] == 1, 1.0, 0.5).astype(np.float32)
    return ptype, spectra.astype(np.float32), row_amp


def _paint_farmland(cv: _Canvas, elevation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint the agricultural zone: Voronoi farm blocks cut into rotated parcels.

    Each farm block has its own parcel orientation, width and length; strips of
    parcels are staggered, and parcels are separated by 1-2.5 px grass margins.

    Returns:
        ``(agri, tracks, rows)``: the agricultural zone (n, n) bool; the farm-block
        boundaries inside it (n, n) bool, to become tracks; the crop-row texture
        (n, n) float32, a signed relative amplitude.
    """
    rng, n, xs, f = cv.rng, cv.n, cv.xs, cv.f
    agri_field = _fbm(rng, n, _pow2(n / 3), _pow2(n / 64), decay=0.5)
    agri_field -= 0.5 * elevation
    agri = agri_field > _quantile(agri_field, 0.42)
    del agri_field

    n_blocks = max(3, round(26 * cv.area))
    block = _voronoi(rng.uniform(0, n, size=(n_blocks, 2)), n)
    theta = rng.uniform(0, np.pi, n_blocks).astype(np.float32)
    width = (rng.uniform(30, 110, n_blocks) * f).astype(np.float32)
    length = (rng.uniform(90, 320, n_blocks) * f).astype(np.float32)
    margin = rng.uniform(1.0, 2.5, n_blocks).astype(np.float32)
    offset = rng.uniform(0, 1000, size=(2, n_blocks)).astype(np.float32)
    stagger = rng.uniform(0, 1, size=(n_blocks, _PARCEL_K)).astype(np.float32)

    # (u, v): pixel coordinates in the block's rotated frame, px
    cos_t, sin_t = np.cos(theta)[block], np.sin(theta)[block]
    u = xs[None, :] * cos_t
    u += xs[:, None] * sin_t
    u += offset[0][block]
    v = xs[:, None] * cos_t
    v -= xs[None, :] * sin_t
    del cos_t, sin_t
    w_pix = width[block]
    cell = np.floor(u / w_pix)
    fu = u - cell * w_pix  # position across the strip of parcels, px
    del w_pix
    iu = cell.astype(np.int32)
    iu %= _PARCEL_K
    h_pix = length[block]
    v += offset[1][block]
    v += stagger.ravel()[block * _PARCEL_K + iu] * h_pix
    np.floor(v / h_pix, out=cell)
    fv = v - cell * h_pix  # position along the strip, px
    del h_pix
    jv = cell.astype(np.int32)
    jv %= _PARCEL_K
    del cell
    m_pix = margin[block]
    in_parcel = (fu >= m_pix) & (fv >= m_pix)
    in_parcel &= agri
    del fu, fv, m_pix
    key = (block * _PARCEL_K + iu) * _PARCEL_K + jv  # parcel id within the parcel tables
    del iu, jv

    n_parcels = n_blocks * _PARCEL_K * _PARCEL_K
    ptype, spectra, row_amp = _parcel_spectra(rng, n_parcels)
    parcel_base = cv.add(spectra)
    row_dir = rng.integers(0, 2, n_parcels).astype(bool)
    row_freq = (2 * np.pi / rng.uniform(3.0, 9.0, n_parcels)).astype(np.float32)
    cv.paint(in_parcel, 0, (parcel_base + key)[in_parcel])
    cv.cls[in_parcel] = ptype[key][in_parcel]
    rows = np.where(row_dir[key], u, v)
    del u, v
    rows *= row_freq[key]
    np.sin(rows, out=rows)
    rows *= row_amp[key]
    del key, in_parcel

    edge = np.zeros((n, n), dtype=bool)
    edge[:, 1:] |= block[:, 1:] != block[:, :-1]
    edge[1:, :] |= block[1:, :] != block[:-1, :]
    edge[:, :-1] |= edge[:, 1:].copy()  # 2-3 px wide
    edge[:-1, :] |= edge[1:, :].copy()
    edge &= agri
    return agri, edge, rows


def _paint_forest_and_soil(cv: _Canvas, elevation: np.ndarray, agri: np.ndarray) -> None:
    """Forest on high ground outside the fields plus woodlots, and dry bare-soil patches."""
    rng, n = cv.rng, cv.n
    forest_field = _fbm(rng, n, _pow2(n / 4), 8, decay=0.62)
    forest_field += 0.45 * elevation
    forest = forest_field > _quantile(forest_field, 0.45, ~agri)
    forest &= ~agri
    forest |= forest_field > _quantile(forest_field, 0.985)
    del forest_field
    cv.paint(forest, FOREST)
    bare_field = _fbm(rng, n, _pow2(n / 16), 8, decay=0.6)
    bare = bare_field > _quantile(bare_field, 0.965)
    bare &= ~agri
    bare &= ~forest
    cv.paint(bare, BARE_SOIL)


@dataclass
class _WaterLayout:
    """Water bodies before rasterisation.

    Attributes:
        river: river centre line, shape (m, 2) as (x, y) px.
        river_width: width at each vertex, shape (m,), px.
        tributary: tributary centre line, shape (k, 2).
        tributary_width: shape (k,), px.
        lakes: (cx, cy, radius, aspect, angle) per lake, the big lakes first.
        n_big: number of big lakes (the rest are ponds).
    """

    river: np.ndarray
    river_width: np.ndarray
    tributary: np.ndarray
    tributary_width: np.ndarray
    lakes: list[tuple[float, float, float, float, float]]
    n_big: int


def _lay_out_water(cv: _Canvas) -> _WaterLayout:
    """A meandering river across the scene, a tributary joining it, lakes and ponds."""
    rng, n, f = cv.rng, cv.n, cv.f
    side = int(rng.integers(0, 4))
    src = _edge_point(rng, n, side)
    dst = _edge_point(rng, n, (side + 2) % 4)
    river = _wander(rng, src, dst, step=6.0 * f, swing=0.75, bend=14, size=n)
    phase = np.linspace(0, rng.uniform(3, 8), len(river)) + rng.uniform(0, 6)
    river_width = 30.0 * f * (1 + 0.25 * np.sin(phase))
    start = _edge_point(rng, n, (side + int(rng.choice([1, 3]))) % 4)
    end = river[rng.integers(len(river) // 4, max(len(river) // 4 + 1, 3 * len(river) // 4))]
    tributary = _wander(rng, start, end, step=5.0 * f, swing=0.6, bend=10, size=n)
    tributary_width = np.linspace(5.0, 11.0, len(tributary)) * f
    lakes: list[tuple[float, float, float, float, float]] = []
    n_big = max(1, round(6 * cv.area))
    for _ in range(n_big):
        r = min(float(rng.lognormal(math.log(110 * f), 0.45)), 0.2 * n)
        cx, cy = rng.uniform(0.1, 0.9, 2) * n
        lakes.append((float(cx), float(cy), r, float(rng.uniform(0.5, 1.0)), float(rng.uniform(0, np.pi))))
    for _ in range(round(25 * cv.area) + 1):
        cx, cy = rng.uniform(0.05, 0.95, 2) * n
        r = float(rng.uniform(4, 14))
        lakes.append((float(cx), float(cy), r, float(rng.uniform(0.6, 1.0)), float(rng.uniform(0, np.pi))))
    return _WaterLayout(river, river_width, tributary, tributary_width, lakes, n_big)


def _place_settlements(cv: _Canvas, water: _WaterLayout) -> list[tuple[float, float, float, float]]:
    """Settlement centres away from water and each other, a town first.

    Returns:
        (cx, cy, radius, street angle) per settlement, px and radians.
    """
    rng, n, f = cv.rng, cv.n, cv.f
    wanted = max(2, round(7 * cv.area))
    settlements: list[tuple[float, float, float, float]] = []
    channel = np.concatenate([water.river, water.tributary])
    for _ in range(200):
        if len(settlements) == wanted:
            break
        radius = min((380.0 if not settlements else float(rng.uniform(110, 230))) * f, 0.3 * n)
        c = rng.uniform(0.12, 0.88, 2) * n
        if _min_dist(c, channel) < 0.6 * radius + 30 * f:
            continue
        if any(math.hypot(c[0] - lx, c[1] - ly) < lr + 0.8 * radius for lx, ly, lr, _, _ in water.lakes[: water.n_big]):
            continue
        if any(math.hypot(c[0] - sx, c[1] - sy) < 1.2 * (sr + radius) for sx, sy, sr, _ in settlements):
            continue
        settlements.append((float(c[0]), float(c[1]), radius, float(rng.uniform(0, np.pi / 2))))
    return settlements


def _paint_open_land(
    cv: _Canvas, settlements: list[tuple[float, float, float, float]], shape: np.ndarray
) -> None:
    """Gardens (grassland) and yards or building sites (bare soil) in the settlements; quarries."""
    rng, n, f = cv.rng, cv.n, cv.f
    urban = np.zeros((n, n), dtype=bool)
    for cx, cy, radius, _ in settlements:
        found = cv.blob(cx, cy, radius, shape, wobble=0.3)
        if found is not None:
            win, inside = found
            urban[win] |= inside
    cv.paint(urban, GRASSLAND)
    urban &= shape > _quantile(shape, 0.93)
    cv.paint(urban, BARE_SOIL)
    for _ in range(round(6 * cv.area) + 1):
        r = float(rng.uniform(15, 70)) * f
        cx, cy = rng.uniform(0.05, 0.95, 2) * n
        quarry = cv.add(_SIGNATURES[BARE_SOIL] * _brightness(rng, 1, 0.12, 0.04))
        found = cv.blob(float(cx), float(cy), r, shape, wobble=0.35)
        if found is not None:
            win, inside = found
            cv.cls[win][inside] = BARE_SOIL
            cv.obj[win][inside] = quarry


def _paint_water(cv: _Canvas, layout: _WaterLayout, shape: np.ndarray) -> np.ndarray:
    """Rasterise lakes, ponds, river and tributary; return the water mask (n, n)."""
    rng, n = cv.rng, cv.n
    water = np.zeros((n, n), dtype=bool)
    for cx, cy, r, aspect, angle in layout.lakes:
        turbidity = float(rng.uniform(0.0, 1.0)) ** 1.5
        spectrum = _CLEAR_WATER * (1 - turbidity) + _TURBID_WATER * turbidity
        lake = cv.add(spectrum * _brightness(rng, 1, 0.06, 0.04))
        found = cv.blob(cx, cy, r, shape, wobble=0.3, aspect=aspect, angle=angle)
        if found is not None:
            win, inside = found
            cv.cls[win][inside] = WATER
            cv.obj[win][inside] = lake
            water[win] |= inside
    river = cv.add((_CLEAR_WATER * 0.4 + _TURBID_WATER * 0.6) * _brightness(rng, 2, 0.05, 0.03))
    shapes = [(g, 1) for g in _thick_line(layout.river, layout.river_width)]
    shapes += [(g, 2) for g in _thick_line(layout.tributary, layout.tributary_width)]
    flow = _burn(shapes, n, dtype="uint8")
    channel = flow > 0
    cv.paint(channel, WATER, river - 1 + flow[channel].astype(np.int32))
    water |= channel
    return water


def _lay_out_built(
    cv: _Canvas, settlements: list[tuple[float, float, float, float]]
) -> tuple[list[tuple[dict[str, Any], int]], list[tuple[dict[str, Any], int]]]:
    """Roads and buildings as polygons.

    Main roads (6-12 px) join the settlements along a minimum spanning tree and lead
    out of the scene; gravel tracks (2-3.5 px) cross the countryside; each settlement
    has a street grid (3-5 px) with houses (6-18 px) and some large buildings (up to
    55 px) along the streets, denser towards the centre; farmsteads of 1-4
    buildings are scattered over the scene.

    Returns:
        ``(roads, buildings)``: (GeoJSON polygon, object id + 1) pairs in pixel
        coordinates, ready for :func:`_burn`.
    """
    rng, n, f = cv.rng, cv.n, cv.f
    roads: list[tuple[dict[str, Any], int]] = []
    buildings: list[tuple[dict[str, Any], int]] = []

    def road(path: np.ndarray, width: float, spectrum: np.ndarray) -> None:
        rid = cv.add(spectrum * _brightness(rng, 1, 0.08, 0.03))
        roads.extend((g, rid + 1) for g in _thick_line(path, width))

    def building(cx: float, cy: float, length: float, depth: float, angle: float) -> None:
        roof = _ROOFS[rng.choice(len(_ROOFS), p=_ROOF_P)]
        bid = cv.add(roof * _brightness(rng, 1, 0.12, 0.05))
        buildings.append((_rectangle(cx, cy, length, depth, angle), bid + 1))

    centres = np.array([[sx, sy] for sx, sy, _, _ in settlements], dtype=np.float64).reshape(-1, 2)
    road_scale = max(f, 0.6)
    if len(centres) > 1:  # Prim's minimum spanning tree
        linked = np.zeros(len(centres), dtype=bool)
        linked[0] = True
        best_d = np.hypot(*(centres - centres[0]).T)
        best_i = np.zeros(len(centres), dtype=np.int64)
        for _ in range(len(centres) - 1):
            j = int(np.argmin(np.where(linked, np.inf, best_d)))
            i = int(best_i[j])
            linked[j] = True
            d_new = np.hypot(*(centres - centres[j]).T)
            closer = d_new < best_d
            best_d = np.where(closer, d_new, best_d)
            best_i = np.where(closer, j, best_i)
            path = _wander(rng, centres[i], centres[j], step=8.0, swing=0.25, bend=30, size=n)
            road(path, float(rng.uniform(6, 10)) * road_scale, _ASPHALT)
    for k in range(min(len(centres), 2)):
        exit_point = _edge_point(rng, n, int(rng.integers(0, 4)))
        path = _wander(rng, centres[k], exit_point, step=8.0, swing=0.25, bend=30, size=n)
        road(path, float(rng.uniform(8, 12)) * road_scale, _ASPHALT)
    for _ in range(round(5 * cv.area) + 1):
        a, b = rng.choice(4, size=2, replace=False)
        path = _wander(
            rng, _edge_point(rng, n, int(a)), _edge_point(rng, n, int(b)), step=6.0, swing=0.35, bend=20, size=n
        )
        road(path, float(rng.uniform(2, 3.5)), _GRAVEL)

    for si, (cx, cy, radius, angle) in enumerate(settlements):
        spacing = float(rng.uniform(38, 60)) * max(f, 0.7)
        street_w = float(rng.uniform(3, 5))
        along = np.array([math.cos(angle), math.sin(angle)])
        across = np.array([-along[1], along[0]])
        centre = np.array([cx, cy])
        big_p = 0.15 if si == 0 else 0.06
        for direction in range(2):
            d_along, d_across = (along, across) if direction == 0 else (across, along)
            gap = spacing if direction == 0 else spacing * float(rng.uniform(2.0, 3.5))
            k_max = int(radius / gap)
            for k in range(-k_max, k_max + 1):
                off = k * gap
                half = math.sqrt(max(radius**2 - off**2, 0.0)) * float(rng.uniform(0.7, 1.0))
                if half < spacing:
                    continue
                mid = centre + d_across * off
                road(np.array([mid - d_along * half, mid + d_along * half]), street_w, _ASPHALT)
                if direction == 1:
                    continue
                # houses on both sides of the main-direction streets
                t = -half + float(rng.uniform(2, 8))
                while t < half - 6:
                    big = rng.uniform() < big_p * (1.5 - abs(t) / half)
                    length = float(rng.uniform(22, 55) if big else rng.uniform(6, 18))
                    depth = float(rng.uniform(16, 40) if big else rng.uniform(7, 15))
                    depth = min(depth, spacing / 2 - street_w / 2 - 3)
                    pos = mid + d_along * (t + length / 2)
                    dist = float(np.hypot(*(pos - centre))) / radius
                    for sign in (-1.0, 1.0):
                        if rng.uniform() < 0.97 * math.exp(-0.7 * dist**2):
                            setback = float(rng.uniform(2, 7))
                            c = pos + d_across * sign * (street_w / 2 + setback + depth / 2)
                            building(float(c[0]), float(c[1]), length, depth, angle + float(rng.normal(0, 0.05)))
                    t += length + float(rng.uniform(3, 14))
    for _ in range(round(14 * cv.area) + 1):  # farmsteads
        cx, cy = rng.uniform(0.05, 0.95, 2) * n
        angle = float(rng.uniform(0, np.pi))
        for _ in range(int(rng.integers(1, 5))):
            bx, by = cx + float(rng.normal(0, 12)), cy + float(rng.normal(0, 12))
            length, depth = float(rng.uniform(8, 30)), float(rng.uniform(7, 16))
            building(bx, by, length, depth, angle + float(rng.normal(0, 0.05)))
    return roads, buildings


def _paint_built(
    cv: _Canvas,
    roads: list[tuple[dict[str, Any], int]],
    buildings: list[tuple[dict[str, Any], int]],
    tracks: np.ndarray,
    water: np.ndarray,
) -> None:
    """Paint buildings (not on water), farm tracks, then roads (bridges cross water)."""
    burnt = _burn(buildings, cv.n)
    where = burnt > 0
    where &= ~water
    cv.paint(where, BUILDINGS, burnt[where] - 1)
    del burnt
    track = cv.add(_GRAVEL * _brightness(cv.rng, 1, 0.06, 0.03))
    tracks &= ~water
    tracks &= ~where
    cv.paint(tracks, ROADS, track)
    burnt = _burn(roads, cv.n)
    where = burnt > 0
    cv.paint(where, ROADS, burnt[where] - 1)


def _assign_stands(cv: _Canvas) -> None:
    """Give pixels without an object the natural-stand object of their class."""
    stand_field = _fbm(cv.rng, cv.n, _pow2(cv.n / 8), _pow2(cv.n / 128), decay=0.6)
    lo, hi = _quantile(stand_field, 0.01), _quantile(stand_field, 0.99)
    stand_field -= lo
    stand_field *= _STANDS / max(hi - lo, 1e-6)
    np.clip(stand_field, 0, _STANDS - 1, out=stand_field)
    free = cv.obj < 0
    cv.obj[free] = cv.cls[free].astype(np.int32) * _STANDS + stand_field[free].astype(np.int32)


def _hillshade(elevation: np.ndarray, *, slope_sd: float = 0.08) -> np.ndarray:
    """Relative illumination of a terrain, shape (n, n), float32, 1 on flat ground.

    The elevation field is scaled so that the slopes have a standard deviation of
    *slope_sd* (rise over run); the sun is in the south-east, 50 degrees high.
    Values are clipped to [0.7, 1.3].
    """
    gy, gx = np.gradient(elevation)
    scale = np.float32(slope_sd / max(float(np.hypot(gx[::4, ::4], gy[::4, ::4]).std()), 1e-6))
    gx *= scale
    gy *= scale
    azimuth, altitude = math.radians(135.0), math.radians(50.0)
    lx = math.cos(altitude) * math.sin(azimuth)
    ly = -math.cos(altitude) * math.cos(azimuth)  # rows grow southwards
    lz = math.sin(altitude)
    shade = np.float32(-lx) * gx
    shade += np.float32(ly) * gy
    shade += np.float32(lz)
    gx *= gx
    gy *= gy
    gx += gy
    gx += 1.0
    np.sqrt(gx, out=gx)
    shade /= gx
    shade *= np.float32(1.0 / lz)
    np.clip(shade, 0.7, 1.3, out=shade)
    return shade


def _nodata_mask(cv: _Canvas) -> np.ndarray:
    """Swath-edge nodata, shape (n, n) bool: a slanted strip along one edge and a corner triangle.

    The strip is 1.5-3.5 % of the width at either end, the triangle's legs 20-30 %
    of the side: together about 3.5-8 % of the scene.
    """
    rng, n, xs = cv.rng, cv.n, cv.xs
    start_w, end_w = rng.uniform(0.015, 0.035, 2) * n
    leg = rng.uniform(0.2, 0.3) * n
    nodata = xs[None, :] < start_w + (end_w - start_w) * (xs[:, None] / n)
    nodata |= (n - xs[None, :]) + (n - xs[:, None]) < leg
    return np.ascontiguousarray(np.rot90(nodata, int(rng.integers(0, 4))))


def _compose(
    cv: _Canvas, *, bands: int, base: np.ndarray, mid: np.ndarray, rows: np.ndarray, nodata: np.ndarray
) -> np.ndarray:
    """Render the image from the object spectra, textures, shading and sensor noise.

    value = spectrum[obj] x (1 + mid_amp[cls] x mid + row_band x rows) x base + noise,
    with noise ~ N(0, 15 + 2 % of the value), rounded and clipped to [1, 65535];
    nodata pixels are 0.

    Args:
        cv: the painted canvas (every object id set).
        bands: number of output bands.
        base: fine-texture brightness times terrain shading, shape (n, n).
        mid: mid-scale texture, zero mean and unit std, shape (n, n).
        rows: crop-row texture, shape (n, n).
        nodata: nodata mask, shape (n, n).

    Returns:
        ``uint16`` array of shape (bands, n, n).
    """
    n = cv.n
    mixing = _band_mixing(bands)
    table = _mix(np.concatenate(cv.spectra, axis=0), mixing)  # (objects, bands)
    flat = np.ones((1, 6), dtype=np.float32)
    mid_amp = _MID_AMP[:, None] * (_VIGOUR[:, None] * _VIGOUR_BANDS[None, :] + (1 - _VIGOUR[:, None]) * flat)
    mid_amp = _mix(mid_amp, mixing)  # (classes, bands)
    row_bands = _mix(_ROW_BANDS[None, :], mixing)[0]
    image = np.empty((bands, n, n), dtype=np.uint16)
    band = np.empty((n, n), dtype=np.float32)
    factor = np.empty_like(band)
    tmp = np.empty_like(band)
    for b in range(bands):
        np.take(np.ascontiguousarray(table[:, b]), cv.obj, out=band, mode="clip")
        np.take(mid_amp[:, b], cv.cls, out=factor, mode="clip")
        factor *= mid
        factor += 1.0
        np.multiply(rows, np.float32(row_bands[b]), out=tmp)
        factor += tmp
        factor *= base
        band *= factor
        noise = factor  # reuse the buffer
        cv.rng.standard_normal(dtype=np.float32, out=noise)
        np.multiply(band, np.float32(0.02), out=tmp)
        tmp += np.float32(15.0)
        noise *= tmp
        band += noise
        np.clip(band, 1, 65535, out=band)
        np.rint(band, out=band)
        band[nodata] = IMAGE_NODATA
        np.copyto(image[b], band, casting="unsafe")
    return image


def _generate(*, size: int, seed: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate the scene in memory.

    Args:
        size: width and height in pixels.
        seed: random seed.
        bands: number of image bands.

    Returns:
        ``(image, mask)``: ``uint16`` array of shape (bands, size, size) and ``uint8``
        array of shape (size, size).
    """
    n = size
    scale = n / 4096.0  # landscape scale relative to the default scene
    cv = _Canvas(
        rng=np.random.default_rng(seed),
        n=n,
        f=float(np.clip(math.sqrt(scale), 0.35, 1.0)),
        area=scale * scale,
        xs=np.arange(n, dtype=np.float32) + 0.5,
        cls=np.full((n, n), GRASSLAND, dtype=np.uint8),
        obj=np.full((n, n), -1, dtype=np.int32),
    )
    rng = cv.rng
    _add_natural_stands(cv)
    elevation = _fbm(rng, n, _pow2(n / 2), _pow2(n / 128), decay=0.45)
    agri, tracks, rows = _paint_farmland(cv, elevation)
    _paint_forest_and_soil(cv, elevation, agri)
    del agri
    shape = _fbm(rng, n, _pow2(n / 16), 4, decay=0.6)  # wobbly outlines
    water_layout = _lay_out_water(cv)
    settlements = _place_settlements(cv, water_layout)
    _paint_open_land(cv, settlements, shape)
    water = _paint_water(cv, water_layout, shape)
    del shape
    roads, buildings = _lay_out_built(cv, settlements)
    _paint_built(cv, roads, buildings, tracks, water)
    del roads, buildings, tracks, water
    rows[cv.cls != CROPLAND] = 0.0
    _assign_stands(cv)

    base = _hillshade(elevation)
    del elevation
    base[cv.cls == WATER] = 1.0  # water is flat
    fine = _fbm(rng, n, 8, 2, decay=0.7)
    fine *= _FINE_AMP[cv.cls]
    fine += 1.0
    base *= fine
    del fine
    mid = _fbm(rng, n, 128, 16, decay=0.6)
    nodata = _nodata_mask(cv)
    image = _compose(cv, bands=bands, base=base, mid=mid, rows=rows, nodata=nodata)
    mask = cv.cls
    mask[nodata] = MASK_NODATA
    return image, mask
