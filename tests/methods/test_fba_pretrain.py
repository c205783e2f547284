"""FBA's label-free contrast as a pretraining: registered, trains the encoder, writes a checkpoint like every method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geocl.errors import GeoclError
from geocl.losses.fba import foreground_background_contrast, instance_foreground_contrast
from geocl.methods import METHODS, load_recipe
from geocl.methods.fba_pretrain import FBAPretrain
from geocl.models.checkpoints import read_pretrain_checkpoint
from geocl.training.pretrain import run_pretrain

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_registered_as_a_pretraining_with_typed_keys() -> None:
    assert METHODS["fba-pretrain"] is FBAPretrain and FBAPretrain.pretrains
    fields = FBAPretrain.parameters_model().model_fields
    assert set(fields) == {"embedding_dim", "alpha_max", "alpha_min", "pretext", "temperature"}


def test_the_batch_pretext_is_fbas_terms_on_features_pooled_under_the_encoders_own_map() -> None:
    torch.manual_seed(0)
    method = FBAPretrain("test_resnet", 3, embedding_dim=16, view_size=32, pretext="batch")
    views = torch.randn(4, 3, 64, 64)
    terms = method.loss_terms(views)
    features = method.encoder.feature_map(views)  # BatchNorm in training mode, same batch: same features
    activation = method.contrast.activation_map(features)
    weights = activation.flatten(2)
    fg = (features.flatten(2) * weights).sum(2) / weights.sum(2)
    bg = (features.flatten(2) * (1 - weights)).sum(2) / (1 - weights).sum(2)
    projection = method.contrast.projection.weight
    expected = foreground_background_contrast(torch.relu(fg @ projection.T), torch.relu(bg @ projection.T))
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()
    assert method.encoder.body.conv1[0].weight.grad is not None  # the encoder learns from it
    assert 0 < float(terms["map_mean"]) < 1


def test_the_default_instance_pretext_contrasts_the_same_pooled_embeddings_per_tile() -> None:
    torch.manual_seed(0)
    method = FBAPretrain("test_resnet", 3, embedding_dim=16, view_size=32, temperature=0.5)
    views = torch.randn(4, 3, 64, 64)  # two tiles' first views, then their second views
    terms = method.loss_terms(views)
    foreground, background, _ = method.contrast.embed(method.encoder.feature_map(views))
    torch.testing.assert_close(terms["loss"], instance_foreground_contrast(foreground, background, 0.5))
    terms["loss"].backward()
    assert method.encoder.body.conv1[0].weight.grad is not None


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("pretext", ["batch", "instance"])
def test_geocl_pretrain_writes_a_checkpoint_of_the_encoder(tiny_tiles: Path, tmp_path: Path, pretext: str) -> None:
    recipe = load_recipe(
        RECIPES / "fba-pretrain.yaml",
        [
            f"data.tiles={tiny_tiles}",
            f"out={tmp_path / 'run'}",
            "encoder.name=test_resnet",
            "data.view_size=64",
            "data.batch_size=8",
            "data.num_workers=0",
            "trainer.max_steps=2",
            "trainer.max_epochs=1",
            f"method.pretext={pretext}",
        ],
    )
    result = run_pretrain(recipe)
    loaded = read_pretrain_checkpoint(result.checkpoint)
    assert loaded["meta"]["method"] == "fba-pretrain" and loaded["meta"]["encoder"] == "test_resnet"
    assert "conv1.0.weight" in loaded["encoder_state"]  # the encoder, under the keys finetune and compare load


def test_views_too_small_for_a_split_are_refused_naming_the_key() -> None:
    method = FBAPretrain("test_resnet", 3, embedding_dim=8, view_size=32)
    with pytest.raises(GeoclError, match=r"data\.view_size: .*one position"):
        method.loss_terms(torch.randn(4, 3, 32, 32))  # a ResNet's map of a 32 px view: 1 x 1
