"""Finetuning from a PatchMix (ViT) checkpoint: DPT segmenter, real weight loading, run and predict end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.errors import GeoclError
from geocl.finetune.inference import predict_with_checkpoint
from geocl.finetune.model import ViTSegmenter, build_segmenter, load_pretrained_encoder
from geocl.finetune.train import run_finetune
from geocl.methods import load_recipe
from geocl.models.checkpoints import SEGMENTER_KEY
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe

VIT = {"name": "test_vit", "args": {"patch_size": 8, "img_size": 32}}
METHOD = {"name": "patchmix", "proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32}
TINY = {"max_epochs": 1, "steps_per_epoch": 2, "val_every": 1, "batch_size": 4, "crop": 32, "progress": False}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, tiny_tiles: Path) -> Path:
    folder = tmp_path_factory.mktemp("patchmix")
    recipe = load_recipe(
        write_recipe(
            folder,
            tiny_tiles,
            METHOD,
            encoder=VIT,
            data={"batch_size": 4},
            trainer={"max_epochs": 1, "limit_train_batches": 2},
        )
    )
    result = run_pretrain(recipe)
    assert result.global_step == 2 and np.isfinite(result.final_loss)
    return result.checkpoint


def test_patchmix_checkpoint_encoder_really_loads_into_the_vit_segmenter(pretrained: Path) -> None:
    stored = torch.load(pretrained, weights_only=False)["state_dict"]
    model = build_segmenter("unet", "test_vit", 4, 7)  # default timm arguments: 16 px patches
    assert isinstance(model, ViTSegmenter) and model.encoder.model.patch_embed.proj.weight.shape[-1] == 16
    meta = load_pretrained_encoder(model, pretrained, in_chans=4)
    assert meta["method"] == "patchmix"
    vit = model.encoder.model
    assert vit.patch_embed.proj.weight.shape[-1] == 8
    # a tensor training changed compares equal after loading, and so does every other one
    fresh = build_segmenter("dpt", "test_vit", 4, 7, VIT["args"]).encoder.model.blocks[0].attn.qkv.weight
    assert not torch.equal(fresh, stored["encoder.body.blocks.0.attn.qkv.weight"])
    for key, value in vit.state_dict().items():
        assert torch.equal(value, stored[f"encoder.body.{key}"]), key
    assert model(torch.randn(1, 4, 64, 64)).shape == (1, 7, 64, 64)


def test_vit_segmenter_state_dict_rebuilds_a_segmenter_made_with_other_arguments() -> None:
    source = build_segmenter("dpt", "test_vit", 4, 3, {"patch_size": 8, "img_size": 32}).eval()
    target = build_segmenter("dpt", "test_vit", 4, 3).eval()
    target.load_state_dict(source.state_dict())
    assert not target.net.training  # the rebuilt network keeps the mode
    images = torch.randn(2, 4, 48, 40)  # 6 x 5 tokens: padded to 8 x 8 inside, cropped back
    logits = target(images)
    assert logits.shape == (2, 3, 48, 40)
    torch.testing.assert_close(logits, source(images))


def test_dpt_is_for_vit_encoders_only() -> None:
    with pytest.raises(GeoclError, match="dpt is for ViT encoders"):
        build_segmenter("dpt", "test_resnet", 4, 3)


def test_finetune_from_a_patchmix_checkpoint_then_predict(tmp_path: Path, tiny_tiles: Path, pretrained: Path) -> None:
    result = run_finetune(
        tiles=tiny_tiles, out=tmp_path / "ft", encoder_checkpoint=pretrained, label_fraction=0.2, **TINY
    )
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert 0.0 <= result.miou <= 1.0 and metrics["encoder"] == "test_vit"
    checkpoint = torch.load(result.checkpoint, weights_only=False)
    assert checkpoint[SEGMENTER_KEY]["pretrain_method"] == "patchmix"
    assert checkpoint["state_dict"]["model.net.encoder.model.patch_embed.proj.weight"].shape[-1] == 8

    scene = tiny_tiles.parent / "scene" / "image.tif"
    prediction = predict_with_checkpoint(result.checkpoint, scene, tmp_path / "pred.tif", window=128, overlap=32)
    with rasterio.open(scene) as src, rasterio.open(prediction.path) as out:
        assert out.shape == src.shape and out.transform == src.transform
        values = set(np.unique(out.read(1)).tolist())
    assert values <= set(checkpoint[SEGMENTER_KEY]["classes"]) | {255}
