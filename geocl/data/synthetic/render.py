"""Rendering the synthetic scene: the painters in order, then shading, texture and sensor noise."""

from __future__ import annotations

import math

import numpy as np

from geocl.data.synthetic.canvas import Canvas
from geocl.data.synthetic.classes import CROPLAND, GRASSLAND, IMAGE_NODATA, MASK_NODATA, WATER
from geocl.data.synthetic.noise import fbm, pow2
from geocl.data.synthetic.painters import (
    add_natural_stands,
    assign_stands,
    lay_out_built,
    lay_out_water,
    paint_built,
    paint_farmland,
    paint_forest_and_soil,
    paint_open_land,
    paint_water,
    place_settlements,
)
from geocl.data.synthetic.spectra import FINE_AMP, MID_AMP, ROW_BANDS, VIGOUR, VIGOUR_BANDS, band_mixing, mix


def hillshade(elevation: np.ndarray, *, slope_sd: float = 0.08) -> np.ndarray:
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


def nodata_mask(cv: Canvas) -> np.ndarray:
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


def compose(
    cv: Canvas, *, bands: int, base: np.ndarray, mid: np.ndarray, rows: np.ndarray, nodata: np.ndarray
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
    mixing = band_mixing(bands)
    table = mix(np.concatenate(cv.spectra, axis=0), mixing)  # (objects, bands)
    flat = np.ones((1, 6), dtype=np.float32)
    mid_amp = MID_AMP[:, None] * (VIGOUR[:, None] * VIGOUR_BANDS[None, :] + (1 - VIGOUR[:, None]) * flat)
    mid_amp = mix(mid_amp, mixing)  # (classes, bands)
    row_bands = mix(ROW_BANDS[None, :], mixing)[0]
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


def generate(*, size: int, seed: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
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
    cv = Canvas(
        rng=np.random.default_rng(seed),
        n=n,
        f=float(np.clip(math.sqrt(scale), 0.35, 1.0)),
        area=scale * scale,
        xs=np.arange(n, dtype=np.float32) + 0.5,
        cls=np.full((n, n), GRASSLAND, dtype=np.uint8),
        obj=np.full((n, n), -1, dtype=np.int32),
    )
    rng = cv.rng
    add_natural_stands(cv)
    elevation = fbm(rng, n, pow2(n / 2), pow2(n / 128), decay=0.45)
    agri, tracks, rows = paint_farmland(cv, elevation)
    paint_forest_and_soil(cv, elevation, agri)
    del agri
    shape = fbm(rng, n, pow2(n / 16), 4, decay=0.6)  # wobbly outlines
    water_layout = lay_out_water(cv)
    settlements = place_settlements(cv, water_layout)
    paint_open_land(cv, settlements, shape)
    water = paint_water(cv, water_layout, shape)
    del shape
    roads, buildings = lay_out_built(cv, settlements)
    paint_built(cv, roads, buildings, tracks, water)
    del roads, buildings, tracks, water
    rows[cv.cls != CROPLAND] = 0.0
    assign_stands(cv)

    base = hillshade(elevation)
    del elevation
    base[cv.cls == WATER] = 1.0  # water is flat
    fine = fbm(rng, n, 8, 2, decay=0.7)
    fine *= FINE_AMP[cv.cls]
    fine += 1.0
    base *= fine
    del fine
    mid = fbm(rng, n, 128, 16, decay=0.6)
    nodata = nodata_mask(cv)
    image = compose(cv, bands=bands, base=base, mid=mid, rows=rows, nodata=nodata)
    mask = cv.cls
    mask[nodata] = MASK_NODATA
    return image, mask
