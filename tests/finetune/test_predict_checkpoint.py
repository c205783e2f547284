"""Prediction with a finetuned checkpoint: ``geocl predict``, ``predict_with_checkpoint`` and the worker entry ``predict_task``."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from geocl.cli import main
from geocl.data.tileset import read_metadata
from geocl.distributed import predict_scenes, predict_task
from geocl.errors import GeoclError
from geocl.finetune import inference
from geocl.finetune.train import run_finetune
from geocl.recipes.options import PredictSettings

SHORT = {"max_epochs": 1, "steps_per_epoch": 2, "val_every": 1, "batch_size": 4, "crop": 32, "progress": False}
SMALL = {"window": 64, "overlap": 16, "block": 256}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tiles: Path) -> Path:
    out = tmp_path_factory.mktemp("finetune") / "run"
    result = run_finetune(tiles=tiny_tiles, out=out, encoder="test_resnet", label_fraction=0.2, seed=0, **SHORT)
    return result.checkpoint


def write_crop(scene: Path, path: Path, rows: slice, cols: slice) -> Path:
    """``scene[rows, cols]`` as a GeoTIFF on the scene's own pixel grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(scene) as src:
        window = rasterio.windows.Window.from_slices(rows, cols)
        profile = {
            **src.profile,
            "width": int(window.width),
            "height": int(window.height),
            "transform": src.window_transform(window),
        }
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
        data = src.read(window=window)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def scene(tiny_tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 x 128 px of the 4-band embedded scene the tiles were cut from (the test encoder is slow on CPU)."""
    source = Path(read_metadata(tiny_tiles)["sources"]["scene"][0])
    return write_crop(source, tmp_path_factory.mktemp("scene") / "crop.tif", slice(100, 196), slice(200, 328))


def halves(scene: Path, folder: Path) -> list[Path]:
    """The scene cut into a left and a right GeoTIFF on its own grid."""
    return [
        write_crop(scene, folder / "left.tif", slice(0, 96), slice(0, 64)),
        write_crop(scene, folder / "right.tif", slice(0, 96), slice(64, 128)),
    ]


def test_worker_entry_point_on_a_mosaic(
    tmp_path: Path, checkpoint: Path, scene: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = {**SMALL, "probabilities": "uint8"}
    result = inference.predict_with_checkpoint(
        checkpoint,
        halves(scene, tmp_path / "parts"),
        tmp_path / "out" / "m.tif",
        polygons=tmp_path / "out" / "m.gpkg",
        progress=False,
        **options,
    )
    assert capsys.readouterr().out == ""  # nothing on the terminal of a worker
    assert pickle.loads(pickle.dumps(result)) == result  # crosses process boundaries
    assert result.shape == (96, 128) and len(result.scenes) == 2 and result.seconds > 0
    assert result.windows == 2 * 3  # rows at 0 and 32, columns at 0, 48 and 64
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.gpkg", "m.png", "m.tif", "m_probabilities.tif"]
    for path in (result.path, result.probabilities):
        assert cog_validate(path, quiet=True)[0]
    # the mosaic of the two halves predicts as the scene itself, with the same settings
    whole = tmp_path / "whole.tif"
    summary = predict_task(str(checkpoint), str(scene), str(whole), PredictSettings(**options).model_dump())
    assert summary.startswith(f"prediction: {whole} (128 x 96 px, ")
    assert capsys.readouterr().out == ""
    with rasterio.open(result.path) as mosaic, rasterio.open(whole) as expected:
        assert mosaic.transform == expected.transform
        np.testing.assert_array_equal(mosaic.read(1), expected.read(1))


def test_worker_entry_point_names_a_bad_option(tmp_path: Path, checkpoint: Path, scene: Path) -> None:
    with pytest.raises(GeoclError, match="did you mean 'block'") as error:
        predict_scenes(checkpoint, [scene], tmp_path / "p", options={"blocks": 512}, workers=0)
    assert error.value.key == "blocks"
    with pytest.raises(GeoclError, match="multiple of 256") as error:
        predict_scenes(checkpoint, [scene], tmp_path / "p", options={"block": 300}, workers=0)
    assert error.value.key == "block"
    assert not list(tmp_path.iterdir())


def test_cli_predicts_with_tta_and_probabilities(
    tmp_path: Path, checkpoint: Path, scene: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pred.tif"
    status = main(
        [
            "predict",
            str(checkpoint),
            str(scene),
            "--out",
            str(out),
            "--tta",
            "--probabilities",
            "float16",
            "--window",
            "64",
            "--overlap",
            "16",
            "--no-cog",
            "--polygons",
            str(tmp_path / "pred.gpkg"),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    assert lines[0].startswith(f"prediction: {out} (128 x 96 px, ")
    assert lines[1:] == [
        f"  preview: {tmp_path / 'pred.png'}",
        f"  probabilities: {tmp_path / 'pred_probabilities.tif'}",
        f"  polygons: {tmp_path / 'pred.gpkg'}",
    ]
    with rasterio.open(out) as labels, rasterio.open(tmp_path / "pred_probabilities.tif") as scores:
        assert not labels.overviews(1)  # --no-cog
        classes, probabilities = labels.read(1), scores.read().astype(np.float32)
    valid = classes != 255
    assert np.abs(probabilities[:, valid].sum(axis=0) - 1).max() < 2e-3
