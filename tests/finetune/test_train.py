"""Finetuning: encoder loading, band checks, label subsets, a tiny run, prediction, real scene."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import get_type_hints

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.data.tiler import TilingOptions, tile_scene
from geocl.errors import GeoclError
from geocl.finetune.downstream import BudgetArguments, TrainingBudget
from geocl.finetune.inference import predict_with_checkpoint
from geocl.finetune.model import build_segmenter, load_pretrained_encoder
from geocl.finetune.train import label_subset, run_finetune
from geocl.methods import load_recipe
from geocl.models.checkpoints import SEGMENTER_KEY
from geocl.recipes.options import FinetuneCommand
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe

TINY = {"max_epochs": 2, "steps_per_epoch": 2, "val_every": 1, "batch_size": 4, "crop": 32, "progress": False}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, tiny_tiles: Path) -> Path:
    folder = tmp_path_factory.mktemp("pretrain")
    recipe = load_recipe(write_recipe(folder, tiny_tiles, {"name": "simclr"}, trainer={"max_epochs": 1}))
    return run_pretrain(recipe).checkpoint


def test_pretrained_encoder_weights_are_really_loaded(pretrained: Path) -> None:
    stored = torch.load(pretrained, weights_only=True)["state_dict"]["encoder.body.layer1.0.conv1.weight"]
    model = build_segmenter("unet", "test_resnet", 4, 7)
    before = model.encoder.model.layer1[0].conv1.weight.detach().clone()
    assert not torch.equal(before, stored)
    meta = load_pretrained_encoder(model, pretrained, in_chans=4)
    assert meta["method"] == "simclr"
    assert torch.equal(model.encoder.model.layer1[0].conv1.weight, stored)


def test_band_count_mismatch_is_a_clear_error(pretrained: Path) -> None:
    model = build_segmenter("unet", "test_resnet", 3, 7)
    with pytest.raises(GeoclError, match="pretrained on 4 bands but the data has 3") as error:
        load_pretrained_encoder(model, pretrained, in_chans=3)
    assert str(pretrained) in str(error.value)


def test_every_option_of_the_command_is_a_keyword_with_its_default() -> None:
    """``geocl finetune`` and compare rows call ``run_finetune(**options.model_dump())``; at most 20 parameters."""
    parameters = inspect.signature(run_finetune).parameters
    assert len(parameters) <= 20
    defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    defaults |= {name: getattr(TrainingBudget(), name) for name in get_type_hints(BudgetArguments)}
    for name, field in FinetuneCommand.model_fields.items():
        assert field.is_required() or defaults[name] == field.default, name
    assert set(FinetuneCommand.model_fields) <= set(defaults) | {"tiles", "out"}
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochs'"):
        run_finetune(tiles="missing", out="missing", epochs=2)  # type: ignore[call-arg]


def test_label_subset_is_deterministic_and_sized() -> None:
    a, b, c = label_subset(166, 0.05, 0), label_subset(166, 0.05, 0), label_subset(166, 0.05, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 9 and len(set(a)) == 9 and a.max() < 166
    assert len(label_subset(10, 0.01, 0)) == 1
    with pytest.raises(GeoclError, match="label_fraction"):
        label_subset(10, 0.0, 0)


def test_tiny_finetune_from_pretrained_checkpoint_then_predict(
    tmp_path: Path, tiny_tiles: Path, pretrained: Path
) -> None:
    result = run_finetune(
        tiles=tiny_tiles, out=tmp_path / "ft", encoder_checkpoint=pretrained, label_fraction=0.2, **TINY
    )
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert 0.0 <= result.miou <= 1.0 and metrics["miou"] == pytest.approx(result.miou)
    assert metrics["encoder"] == "test_resnet" and result.train_tiles == metrics["train_tiles"] > 0
    checkpoint = torch.load(result.checkpoint, weights_only=True)
    assert checkpoint[SEGMENTER_KEY]["pretrain_method"] == "simclr"

    scene = tiny_tiles.parent / "scene" / "image.tif"
    prediction = predict_with_checkpoint(
        result.checkpoint, scene, tmp_path / "pred.tif", polygons=tmp_path / "pred.gpkg"
    )
    with rasterio.open(scene) as src, rasterio.open(prediction.path) as out:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        values = set(np.unique(out.read(1)).tolist())
    assert values <= set(checkpoint[SEGMENTER_KEY]["classes"]) | {255}


def test_prediction_refuses_a_scene_with_other_bands(tmp_path: Path, tiny_tiles: Path, write_raster) -> None:  # type: ignore[no-untyped-def]
    result = run_finetune(tiles=tiny_tiles, out=tmp_path / "ft", encoder="test_resnet", label_fraction=0.1, **TINY)
    three = write_raster(tmp_path / "three.tif", np.ones((3, 64, 64), np.uint16))
    with pytest.raises(GeoclError, match="3 bands but the model was trained on 4"):
        predict_with_checkpoint(result.checkpoint, three, tmp_path / "pred.tif")


def test_spacenet_scene_tile_finetune_predict(tmp_path: Path, shared_data: Path) -> None:
    image = shared_data / "spacenet_atlanta_pan.tif"
    tiles = tmp_path / "tiles"
    tile_scene(
        image,
        tiles,
        mask=shared_data / "spacenet_atlanta_buildings.tif",
        options=TilingOptions(size=128, stride=128, max_nodata=0.5, split_block=256),
        progress=False,
    )
    result = run_finetune(tiles=tiles, out=tmp_path / "ft", encoder="test_resnet", label_fraction=0.5, **TINY)
    assert 0.0 <= result.miou <= 1.0
    prediction = predict_with_checkpoint(
        result.checkpoint, image, tmp_path / "pred.tif", polygons=tmp_path / "pred.gpkg"
    )
    with rasterio.open(image) as src, rasterio.open(prediction.path) as out:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        footprint = shapely.box(*src.bounds)
    polygons = gpd.read_file(prediction.polygons)
    assert polygons.crs == gpd.read_file(prediction.polygons).crs and len(polygons) > 0
    assert polygons.geometry.union_all().intersects(footprint)


def test_a_cnn_pretrained_with_timm_arguments_is_finetuned_with_them(
    tmp_path: Path, tiny_tiles: Path, pretrained: Path
) -> None:
    """A checkpoint's ``encoder.args`` (here output_stride 16) rebuild the encoder; its weights would load without."""
    checkpoint = torch.load(pretrained, weights_only=True)
    checkpoint["geocl"]["recipe"]["encoder"]["args"] = {"output_stride": 16}
    dilated = tmp_path / "dilated.ckpt"
    torch.save(checkpoint, dilated)
    result = run_finetune(tiles=tiny_tiles, out=tmp_path / "ft", encoder_checkpoint=dilated, label_fraction=0.2, **TINY)
    hparams = torch.load(result.checkpoint, weights_only=True)["hyper_parameters"]
    assert hparams["encoder_args"] == {"output_stride": 16}
    model = build_segmenter("unet", hparams["encoder"], 4, 7, hparams["encoder_args"])
    deepest = model.encoder.model(torch.zeros(1, 4, 64, 64))[-1]
    assert deepest.shape[-1] == 64 // 16  # 2 without the argument: stride 32


def test_a_probe_of_the_deep_stages_is_recorded_and_loads_back(tmp_path: Path, tiny_tiles: Path) -> None:
    """``probe_stages`` reach the probe, ``metrics.json`` (top level and options) and the checkpoint, which
    :func:`~geocl.finetune.inference.load_segmenter` rebuilds with the same stages."""
    from geocl.finetune.inference import load_segmenter
    from geocl.finetune.linear_probe import DenseLinearProbe

    run = {**TINY, "max_epochs": 1, "steps_per_epoch": 1}
    result = run_finetune(
        tiles=tiny_tiles, out=tmp_path / "ft", encoder="test_resnet", arch="linear", probe_stages=[5, 4], **run
    )
    metrics = json.loads((result.out / "metrics.json").read_text())
    assert metrics["probe_stages"] == [4, 5] and metrics["options"]["probe_stages"] == [4, 5]
    module, meta = load_segmenter(result.checkpoint)
    assert isinstance(module.model, DenseLinearProbe) and module.model.read == (4, 5)
    assert meta["probe_stages"] == [4, 5]
    widths = module.model.encoder.out_channels
    assert module.model.classifier.in_channels == widths[4] + widths[5]
    # stages for a network without a probe: refused before any work, nothing written
    with pytest.raises(GeoclError, match="dense linear probe only") as caught:
        run_finetune(tiles=tiny_tiles, out=tmp_path / "unet", encoder="test_resnet", probe_stages=[4], **run)
    assert caught.value.key == "probe_stages" and not (tmp_path / "unet").exists()


def test_a_probe_of_every_stage_records_them_all() -> None:
    """None reads every stage; the record says which, so two probes' rows are told apart."""
    from geocl.finetune.train import SegmenterFactory

    assert SegmenterFactory(arch="linear").identity()["probe_stages"] == [1, 2, 3, 4, 5]
    assert "probe_stages" not in SegmenterFactory(arch="unet").identity()
