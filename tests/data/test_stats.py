"""Tests for geocl.data.stats: streaming statistics against numpy on the whole array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import geocl.data.stats as stats_module
from geocl.data.rasters import inspect_rasters
from geocl.data.stats import RunningBandStats, scene_band_stats, valid_pixels
from tests.conftest import RasterWriter


def test_running_stats_equal_numpy_on_the_concatenation() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 60_000, size=(3, n)).astype(np.uint16) for n in (1, 500, 7, 20_000, 3)]
    running = RunningBandStats(3)
    for chunk in chunks:
        running.update(chunk)
    running.update(np.zeros((3, 0), np.uint16))  # an empty chunk changes nothing
    everything = np.concatenate(chunks, axis=1).astype(np.float64)
    result = running.result()
    assert result.count == everything.shape[1]
    np.testing.assert_allclose(result.mean, everything.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(result.std, everything.std(axis=1), rtol=1e-10)
    assert result.minimum == everything.min(axis=1).tolist()
    assert result.maximum == everything.max(axis=1).tolist()


def test_valid_pixels_needs_every_band_at_nodata_and_catches_nan() -> None:
    block = np.array([[[0, 5], [0, 1]], [[0, 0], [3, 2]]], dtype=np.float32)
    block[1, 1, 1] = np.nan
    assert valid_pixels(block, 0).tolist() == [[False, True], [True, False]]


def test_scene_stats_stream_over_files_skip_nodata_and_are_cached(
    tmp_path: Path, write_raster: RasterWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(1, 1000, size=(2, 90, 70)).astype(np.uint16)
    b = rng.integers(1, 1000, size=(2, 40, 50)).astype(np.uint16)
    a[:, :30, :] = 0
    paths = [
        write_raster(tmp_path / "a.tif", a, nodata=0),
        write_raster(tmp_path / "b.tif", b, nodata=0, origin=(600_000.0, 5_100_000.0)),
    ]
    monkeypatch.setattr(stats_module, "STRIP_PIXELS", 1000)  # force many strips
    result = scene_band_stats(inspect_rasters(paths), progress=False)
    valid = np.concatenate([a[:, 30:, :].reshape(2, -1), b.reshape(2, -1)], axis=1).astype(np.float64)
    assert result.count == valid.shape[1]
    np.testing.assert_allclose(result.mean, valid.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(result.std, valid.std(axis=1), rtol=1e-10)

    def no_reads(*args: object, **kwargs: object) -> None:
        raise AssertionError("statistics were recomputed instead of read from the cache")

    infos = inspect_rasters(paths)
    monkeypatch.setattr(stats_module.rasterio, "open", no_reads)
    assert scene_band_stats(infos, progress=False) == result


def test_infinite_values_are_not_data() -> None:
    # one inf pixel made the tile set's band mean inf and its std NaN (every normalised pixel NaN)
    block = np.full((2, 2, 3), 5.0, dtype=np.float32)
    block[0, 0, 0], block[1, 1, 2] = np.inf, np.nan
    assert valid_pixels(block, None).tolist() == [[False, True, True], [True, True, False]]
    running = RunningBandStats(2)
    running.update(block[:, valid_pixels(block, None)])
    assert running.result().mean == [5.0, 5.0] and running.result().std == [0.0, 0.0]
