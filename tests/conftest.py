"""Shared fixtures: small rasters made on the fly, and the shared real-raster folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

#: Real rasters for tests (never copied into the project; see ../shared/data/README.md).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep band-statistics caches out of the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture
def shared_data() -> Path:
    """The shared real rasters; skips where the folder is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared real rasters not found at {SHARED_DATA} (only CI and developers have them)")
    return SHARED_DATA


RasterWriter = Callable[..., Path]


@pytest.fixture
def write_raster() -> RasterWriter:
    """Write a GeoTIFF from an array; returns its path.

    Keyword args: ``crs`` (default EPSG:32633), ``origin`` (left, top; default
    (500000, 5100000)), ``res`` (default 10 m), ``nodata``.
    """

    def write(
        path: Path,
        data: np.ndarray,
        *,
        crs: str | None = "EPSG:32633",
        origin: tuple[float, float] = (500_000.0, 5_100_000.0),
        res: float = 10.0,
        nodata: float | None = None,
    ) -> Path:
        if data.ndim == 2:
            data = data[None]
        count, height, width = data.shape
        path.parent.mkdir(parents=True, exist_ok=True)
        profile = {
            "driver": "GTiff", "width": width, "height": height, "count": count,
            "dtype": data.dtype.name, "transform": from_origin(*origin, res, res), "nodata": nodata,
        }
        if crs is not None:
            profile["crs"] = crs
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path

    return write


def coordinate_image(height: int, width: int, bands: int = 3) -> np.ndarray:
    """uint16 bands whose values identify each pixel: band 0 = row + 1, band 1 = col + 1, band 2 = band-mix."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.uint16)
    layers = [rows + 1, cols + 1] + [(rows * 7 + cols * 3 + 11 * b) % 6000 + 1 for b in range(bands - 2)]
    return np.stack(layers).astype(np.uint16)
