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
from geocl.data.synthetic.spectra import FINE_AMP, MID_AMP, ROW_BANDS, VIGOUR, band_mixing, mix, texture_table


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
    cv: Canvas,
    *,
    bands: int,
    base: np.ndarray,
    mid: np.ndarray,
    mid_amp: np.ndarray,
    nodata: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    row_bands: np.ndarray | None = None,
    shadow: np.ndarray | None = None,
    shadow_gain: np.ndarray | None = None,
) -> np.ndarray:
    """Render the image from the object spectra, textures, shading and sensor noise.

    value = spectrum[obj] x (1 + mid_amp[cls] x mid + row_band x rows) x base
    x (shadow_gain where in shadow) + noise, with noise ~ N(0, 15 + 2 % of the value),
    rounded and clipped to [1, 65535]; nodata pixels are 0. Shared by the rural and
    the urban scene.

    Args:
        cv: the painted canvas (every object id set).
        bands: number of output bands.
        base: fine-texture brightness times shading, shape (n, n).
        mid: mid-scale texture, zero mean and unit std, shape (n, n).
        mid_amp: relative amplitude of *mid* per class on the six base bands, shape
            (classes, 6) (see :func:`~geocl.data.synthetic.spectra.texture_table`).
        nodata: nodata mask, shape (n, n); None = no nodata.
        rows: crop-row texture, shape (n, n); None = none.
        row_bands: band weights of *rows* on the six base bands, shape (6,).
        shadow: cast-shadow mask, shape (n, n) bool; None = no shadows.
        shadow_gain: brightness in shadow relative to sunlit on the six base bands,
            shape (6,).

    Returns:
        ``uint16`` array of shape (bands, n, n).
    """
    n = cv.n
    mixing = band_mixing(bands)
    table = mix(np.concatenate(cv.spectra, axis=0), mixing)  # (objects, bands)
    mid_amp = mix(mid_amp, mixing)  # (classes, bands)
    if rows is not None:
        assert row_bands is not None
        row_gain = mix(row_bands[None, :], mixing)[0]
    if shadow is not None:
        assert shadow_gain is not None
        gain = mix(shadow_gain[None, :], mixing)[0]
    image = np.empty((bands, n, n), dtype=np.uint16)
    band = np.empty((n, n), dtype=np.float32)
    factor = np.empty_like(band)
    tmp = np.empty_like(band)
    for b in range(bands):
        np.take(np.ascontiguousarray(table[:, b]), cv.obj, out=band, mode="clip")
        np.take(mid_amp[:, b], cv.cls, out=factor, mode="clip")
        factor *= mid
        factor += 1.0
        if rows is not None:
            np.multiply(rows, np.float32(row_gain[b]), out=tmp)
            factor += tmp
        factor *= base
        if shadow is not None:
            np.multiply(factor, np.float32(gain[b]), out=factor, where=shadow)
        band *= factor
        noise = factor  # reuse the buffer
        cv.rng.standard_normal(dtype=np.float32, out=noise)
        np.multiply(band, np.float32(0.02), out=tmp)
        tmp += np.float32(15.0)
        noise *= tmp
        band += noise
        np.clip(band, 1, 65535, out=band)
        np.rint(band, out=band)
        if nodata is not None:
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
    image = compose(
        cv,
        bands=bands,
        base=base,
        mid=mid,
        mid_amp=texture_table(MID_AMP, VIGOUR),
        nodata=nodata,
        rows=rows,
        row_bands=ROW_BANDS,
    )
    mask = cv.cls
    mask[nodata] = MASK_NODATA
    return image, mask
