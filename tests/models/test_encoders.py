"""Encoders: ViT token outputs as a feature map and a vector; CNNs unchanged; recipe timm arguments;
a checkpoint's online or momentum encoder, as evaluation loads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.errors import GeoclError
from geocl.methods import load_recipe
from geocl.models import create_encoder
from geocl.models.encoders import is_vision_transformer, load_checkpoint_encoder
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe

ARGS = {"patch_size": 8, "img_size": 32, "dynamic_img_size": True}


@pytest.mark.parametrize("bands", [3, 4, 13])
def test_vit_feature_map_is_the_patch_token_grid_and_forward_the_class_token(bands: int) -> None:
    encoder = create_encoder("test_vit", bands, args=ARGS).eval()
    images = torch.randn(2, bands, 32, 32)
    tokens = encoder.body.forward_features(images)
    features = encoder.feature_map(images)
    d = encoder.num_features
    assert encoder.patch_size == 8 and features.shape == (2, d, 4, 4)
    for i in range(4):
        for j in range(4):  # prefix (class) token first, then patches row by row
            torch.testing.assert_close(features[:, :, i, j], tokens[:, 1 + 4 * i + j])
    # timm's own class-token pooling of the same weights is the reference vector
    reference = timm.create_model("test_vit", in_chans=bands, num_classes=0, global_pool="token", **ARGS).eval()
    reference.load_state_dict(encoder.body.state_dict())
    torch.testing.assert_close(encoder(images), reference(images))
    assert encoder(images).shape == (2, d)


def test_vit_with_dynamic_size_takes_larger_and_non_square_images() -> None:
    encoder = create_encoder("test_vit", 4, args=ARGS)
    assert encoder.feature_map(torch.randn(1, 4, 96, 64)).shape == (1, encoder.num_features, 12, 8)


def test_cnn_encoder_is_unchanged_by_the_vit_support() -> None:
    encoder = create_encoder("test_resnet", 4).eval()
    images = torch.randn(2, 4, 64, 64)
    features = encoder.feature_map(images)
    assert encoder.patch_size is None and features.shape == (2, encoder.num_features, 2, 2)
    torch.testing.assert_close(encoder(images), features.mean(dim=(2, 3)))
    # the same weights in a plain timm model give the same map
    plain = timm.create_model("test_resnet", in_chans=4, num_classes=0, global_pool="").eval()
    plain.load_state_dict(encoder.body.state_dict())
    torch.testing.assert_close(features, plain.forward_features(images))


def test_vision_transformers_are_told_apart_by_name() -> None:
    assert is_vision_transformer("vit_tiny_patch16_224") and is_vision_transformer("tu-deit_tiny_patch16_224")
    assert not is_vision_transformer("resnet18") and not is_vision_transformer("test_resnet")


def test_bad_encoder_arguments_name_their_key() -> None:
    with pytest.raises(GeoclError) as error:
        create_encoder("test_vit", 4, args={"in_chans": 3})
    assert error.value.key == "encoder.args.in_chans"
    with pytest.raises(GeoclError) as error:
        create_encoder("test_resnet", 4, args={"patch_size": 8})
    assert error.value.key == "encoder.args"


def test_the_momentum_encoder_is_loaded_on_request_and_only_where_there_is_one(
    tmp_path: Path, tiny_tiles: Path
) -> None:
    budget = {"trainer": {"max_epochs": 1, "limit_train_batches": 2}}
    moco = run_pretrain(
        load_recipe(write_recipe(tmp_path / "moco", tiny_tiles, {"name": "moco", "queue_size": 32}, **budget))
    )
    state = torch.load(moco.checkpoint, weights_only=False)["state_dict"]

    online, _ = load_checkpoint_encoder(moco.checkpoint)
    momentum, meta = load_checkpoint_encoder(moco.checkpoint, momentum_encoder=True)
    assert meta["momentum_encoder_attribute"] == "key_encoder"
    for name, value in momentum.body.state_dict().items():
        assert torch.equal(value, state[f"key_encoder.body.{name}"])
    # after two steps with momentum < 1 the EMA copy trails the online weights
    assert any(not torch.equal(a, b) for a, b in zip(online.body.parameters(), momentum.body.parameters(), strict=True))

    simclr = run_pretrain(load_recipe(write_recipe(tmp_path / "simclr", tiny_tiles, {"name": "simclr"}, **budget)))
    with pytest.raises(GeoclError, match="no momentum encoder"):
        load_checkpoint_encoder(simclr.checkpoint, momentum_encoder=True)
