"""The spectral model of the synthetic scene: class spectra, texture amplitudes and bands.

Spectra are reflectance x 10000 on six base bands (blue, green, red, nir, swir1,
swir2); scenes with more bands get red-edge-like mixtures of red and NIR
(:func:`band_mixing`), scenes with fewer keep the first ones.
"""

from __future__ import annotations

import numpy as np

#: The first six bands; further bands are red-edge-like mixtures of red and NIR.
BASE_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir1", "swir2")

# Class mean spectra in reflectance x 10000 (blue, green, red, nir, swir1, swir2).
SIGNATURES = np.array(
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
CROP_SOIL = np.array([820, 1020, 1260, 1750, 2550, 2150], dtype=np.float32)
CROP_RIPE = np.array([650, 950, 1150, 2700, 2700, 1800], dtype=np.float32)
DRY_GRASS = np.array([640, 900, 1000, 2500, 2800, 1800], dtype=np.float32)
CONIFER = np.array([240, 430, 260, 2300, 1050, 430], dtype=np.float32)
ROOFS = np.array(
    [
        [1300, 1350, 1400, 1550, 1850, 1700],  # concrete / grey
        [700, 850, 1500, 1900, 2300, 2000],  # red tiles
        [550, 600, 620, 700, 900, 850],  # dark slate / tar
        [2300, 2400, 2450, 2600, 2500, 2250],  # bright metal
    ],
    dtype=np.float32,
)
ROOF_P = np.array([0.35, 0.35, 0.2, 0.1])
ASPHALT = np.array([800, 850, 900, 1050, 1350, 1250], dtype=np.float32)
GRAVEL = np.array([1100, 1250, 1450, 1800, 2400, 2100], dtype=np.float32)
CLEAR_WATER = np.array([500, 560, 300, 150, 80, 50], dtype=np.float32)
TURBID_WATER = np.array([800, 950, 820, 450, 200, 120], dtype=np.float32)

# Texture amplitudes (relative) per class: fine (crowns, clods) and mid-scale (vigour,
# moisture) texture, and how strongly the mid-scale texture acts as "vigour" (NIR up,
# visible and SWIR down) rather than brightness.
FINE_AMP = np.array([0.03, 0.16, 0.05, 0.07, 0.05, 0.05, 0.07], dtype=np.float32)
MID_AMP = np.array([0.07, 0.09, 0.06, 0.10, 0.02, 0.03, 0.12], dtype=np.float32)
VIGOUR = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=np.float32)
VIGOUR_BANDS = np.array([-0.5, -0.4, -0.6, 1.0, -0.3, -0.4], dtype=np.float32)
ROW_BANDS = np.array([-0.5, -0.4, -0.7, 1.0, -0.4, -0.5], dtype=np.float32)


def band_names(bands: int) -> tuple[str, ...]:
    """Names of the *bands* image bands: the base bands, then ``red_edge1``, ..."""
    names = list(BASE_BANDS[:bands])
    names += [f"red_edge{i + 1}" for i in range(bands - len(names))]
    return tuple(names)


def band_mixing(bands: int) -> np.ndarray:
    """Matrix of shape (bands, 6) mapping the six base bands to the output bands."""
    matrix = np.zeros((bands, len(BASE_BANDS)), dtype=np.float32)
    for b in range(min(bands, len(BASE_BANDS))):
        matrix[b, b] = 1.0
    extra = bands - len(BASE_BANDS)
    for i in range(max(extra, 0)):
        alpha = (i + 1) / (extra + 1)
        matrix[len(BASE_BANDS) + i, 2] = 1.0 - alpha
        matrix[len(BASE_BANDS) + i, 3] = alpha
    return matrix


def mix(values: np.ndarray, mixing: np.ndarray) -> np.ndarray:
    """Map values of shape (k, 6) on the base bands to shape (k, bands).

    Element-wise products and sums rather than a BLAS product, so that the result does
    not depend on the BLAS build or its threading.
    """
    return (values[:, None, :] * mixing[None, :, :]).sum(axis=2, dtype=np.float32)


def brightness(rng: np.random.Generator, k: int, sd: float, band_sd: float) -> np.ndarray:
    """Per-object multiplicative offsets of shape (k, 6): overall brightness and band jitter."""
    overall = rng.normal(1.0, sd, size=(k, 1))
    per_band = rng.normal(1.0, band_sd, size=(k, 6))
    return np.clip(overall * per_band, 0.4, 1.8).astype(np.float32)


def texture_table(amp: np.ndarray, vigour: np.ndarray) -> np.ndarray:
    """Relative mid-scale texture amplitude per class on the base bands, shape (classes, 6).

    A class's texture acts as "vigour" (NIR up, visible and SWIR down, weights
    :data:`VIGOUR_BANDS`) for the share *vigour* of it and as plain brightness for the
    rest.

    Args:
        amp: overall relative amplitude per class, shape (classes,).
        vigour: share of the texture that acts as vigour, per class, shape (classes,), in [0, 1].
    """
    flat = np.ones((1, 6), dtype=np.float32)
    return amp[:, None] * (vigour[:, None] * VIGOUR_BANDS[None, :] + (1 - vigour[:, None]) * flat)
