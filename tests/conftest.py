"""Shared fixtures: small rasters made on the fly, and the shared real-raster folder."""
# ruff: noqa: E402  (the imports follow the thread settings, which must come before torch)

from __future__ import annotations

import os

# `make test` runs pytest-xdist workers: they share the cores instead of each taking all
# of them, set before torch is imported. With two workers of two OpenMP threads each on a
# 2-core machine, the threads spin waiting on each other (a tiny U-Net step took 1.5 s
# instead of 0.01 s). A thread count set by the user is kept.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, str(max(1, (os.cpu_count() or 1) // _WORKERS)))

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin

from geocl.data.synthetic import SceneFiles, make_scene
from geocl.data.tiler import TilingOptions, tile_scene

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
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": count,
            "dtype": data.dtype.name,
            "transform": from_origin(*origin, res, res),
            "nodata": nodata,
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


@pytest.fixture(scope="session")
def tiny_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48-ish 64 px tiles of a 512 px embedded scene."""
    root = tmp_path_factory.mktemp("tiny")
    scene = make_scene(root / "scene", size=512, seed=0)
    out = root / "tiles"
    tile_scene(
        scene.image,
        out,
        mask=scene.mask,
        options=TilingOptions(size=64, stride=64, max_nodata=0.3, split_block=128),
        progress=False,
    )
    return out


def write_recipe(folder: Path, tiles: Path, method: dict, **sections: dict) -> Path:
    """A tiny recipe (test_resnet encoder, 32 px views, batch 8) as YAML."""
    recipe = {
        "name": method["name"],
        "out": str(folder / "run"),
        "seed": 0,
        "data": {"tiles": str(tiles), "batch_size": 8, "num_workers": 0, "view_size": 32},
        "encoder": {"name": "test_resnet"},
        "method": method,
        "optimizer": {"name": "adamw", "lr": 0.001},
        # a checkpoint at every epoch (faults and resumes of tiny runs need them)
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "log_every_n_steps": 1,
            "limit_train_batches": 3,
            "checkpoint_every_s": 0,
        },
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="session")
def scene512(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    """The embedded scene at 512 px (seed 0)."""
    return make_scene(tmp_path_factory.mktemp("s512"), size=512, seed=0)


@pytest.fixture(scope="session")
def scene1024(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    """The embedded scene at 1024 px (seed 3)."""
    return make_scene(tmp_path_factory.mktemp("s1024"), size=1024, seed=3)
