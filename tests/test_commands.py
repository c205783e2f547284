"""Tests for geocl.commands: the library entries of ``geocl tile`` and ``geocl predict``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from geocl.commands import TileSetResult, run_predict, run_tile
from geocl.data.tiler import TilingOptions, tile_scene
from geocl.distributed import ManyScenesResult
from geocl.errors import GeoclError
from geocl.recipes.options import PredictCommand, TileOptions
from tests.conftest import RasterWriter, coordinate_image


@pytest.fixture
def scene(tmp_path: Path, write_raster: RasterWriter) -> Path:
    return write_raster(tmp_path / "scene.tif", coordinate_image(128, 160), nodata=0)


def _metadata(out: Path) -> dict:
    return json.loads((out / "tiles.json").read_text())


def test_run_tile_tiles_as_tile_scene_with_the_same_options(tmp_path: Path, scene: Path) -> None:
    options = TileOptions(
        scene=scene,
        out=tmp_path / "command",
        size=32,
        stride=16,
        split=(0.6, 0.2, 0.2),
        max_nodata=0.5,
        seed=3,
        quiet=True,
    )
    result = run_tile(options)
    assert isinstance(result, TileSetResult)
    assert result.describe().splitlines()[-1] == f"  map: {tmp_path / 'command' / 'tiles.png'}"
    # the same run by hand: every option of the command reaches the tiler under its own name
    by_hand = TilingOptions(
        size=32, stride=16, max_nodata=0.5, split_block=128, split_fractions=(0.6, 0.2, 0.2), seed=3
    )
    tile_scene(scene, tmp_path / "by_hand", options=by_hand, progress=False)
    assert _metadata(tmp_path / "command")["options"] == json.loads(json.dumps(asdict(by_hand)))
    assert _metadata(tmp_path / "command")["splits"] == _metadata(tmp_path / "by_hand")["splits"]


def test_run_tile_runs_several_scenes_as_tasks(tmp_path: Path, scene: Path, write_raster: RasterWriter) -> None:
    other = write_raster(tmp_path / "other.tif", coordinate_image(96, 96), nodata=0)
    result = run_tile(TileOptions(scene=[scene, other], out=tmp_path / "out", size=32, workers=0, quiet=True))
    assert isinstance(result, ManyScenesResult) and result.failure_message() is None
    assert [outcome.name for outcome in result.outcomes] == ["scene", "other"]
    assert (tmp_path / "out" / "other" / "tiles.json").exists()


def test_run_tile_refuses_assets_for_a_benchmark(tmp_path: Path) -> None:
    options = TileOptions(dataset="potsdam", root=tmp_path, out=tmp_path / "out")
    with pytest.raises(GeoclError, match="--dataset keeps the dataset's bands") as error:
        run_tile(options, assets=["B04"])
    assert error.value.key == "assets" and not (tmp_path / "out").exists()


def test_run_predict_takes_a_nifti_scene_for_a_volume(tmp_path: Path) -> None:
    checkpoint, volume = tmp_path / "model.ckpt", tmp_path / "case.nii.gz"
    checkpoint.write_bytes(b"x"), volume.write_bytes(b"x")
    options = PredictCommand(
        checkpoint=checkpoint, scene=volume, out=tmp_path / "labels.nii.gz", polygons=tmp_path / "p.gpkg"
    )
    with pytest.raises(GeoclError, match="polygons are written for GeoTIFF scenes, not NIfTI volumes") as error:
        run_predict(options)
    assert error.value.key == "polygons"


def test_run_predict_refuses_assets_on_dask(tmp_path: Path, scene: Path) -> None:
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"x")
    options = PredictCommand(checkpoint=checkpoint, scene=[scene, scene], out=tmp_path / "out", workers=0)
    with pytest.raises(GeoclError, match="not yet passed to scenes predicted on Dask") as error:
        run_predict(options, assets=["B04"])
    assert error.value.key == "assets"
