"""The retrieval method: its loss against the naive formula, captions per step, learning rates, initialisation
from another method's checkpoint, and `geocl pretrain` on tiles and on natural images."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.data.natural_toy import write_toy_cifar
from geocl.data.tile_dataset import TileDataset
from geocl.errors import GeoclError
from geocl.methods import Retrieval, build_method, load_recipe
from geocl.retrieval.model import RETRIEVAL_KEY, load_towers
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe
from tests.losses.test_multi_positive import naive_multi_positive
from tests.retrieval.helpers import TINY_METHOD, WHOLE_TILE, Payload, write_retrieval_recipe


def _method(folder: Path, tiles: Path, **method: object) -> Retrieval:
    recipe = load_recipe(write_retrieval_recipe(folder, tiles, **method))
    train = TileDataset(tiles, "train", with_mask=False, progress=False)
    torch.manual_seed(0)
    model = build_method(recipe, train.band_count, train.metadata["band_stats"])
    model.check_train_data(train)
    return model


def test_loss_equals_the_naive_multi_positive_formula(tmp_path: Path, tiny_tiles: Path) -> None:
    model = _method(tmp_path, tiny_tiles).eval()
    torch.manual_seed(3)
    keys = torch.tensor([int(key) for key in list(model._captions_by_key)[:8]])
    ids, mask, groups = model.caption_batch(keys)
    views = torch.randn(8, model.in_chans, 32, 32)
    loss = model.contrast(views, ids, mask, groups)
    text, image = model.text(ids, mask).detach(), model.image_head(model.encoder(views)).detach()
    scale = math.exp(float(model.log_scale.detach()))
    assert scale == pytest.approx(1 / 0.07)
    assert float(loss.detach()) == pytest.approx(naive_multi_positive(text, image, groups.tolist(), scale), abs=1e-5)


def test_captions_drawn_per_step_are_a_function_of_the_generator_and_true_of_their_tile(
    tmp_path: Path, tiny_tiles: Path
) -> None:
    model = _method(tmp_path, tiny_tiles)
    keys = torch.tensor(list(model._captions_by_key)[:8])
    torch.manual_seed(11)
    first = model.caption_batch(keys)
    torch.manual_seed(11)
    again = model.caption_batch(keys)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert model.caption_set is not None
    groups = {group: attributes for attributes, group in model.caption_set.groups().items()}
    for key, group in zip(keys.tolist(), first[2].tolist(), strict=True):
        position = list(model._captions_by_key).index(key)
        assert groups[group] <= model.caption_set.attributes[position]
    draws = [model.caption_batch(keys[:1])[2].item() for _ in range(40)]
    assert len(set(draws)) > 1  # the full caption and the statements take turns


def test_learning_rates_per_part_and_temperature_clamp(tmp_path: Path, tiny_tiles: Path) -> None:
    model = _method(tmp_path, tiny_tiles, image_lr_scale=0.1, text_lr_scale=0.5, learnable_temperature=True)
    image, text, rest = model.parameter_groups()
    assert (
        image["lr"] == pytest.approx(1e-4) and text["lr"] == pytest.approx(5e-4) and rest["lr"] == pytest.approx(1e-3)
    )
    assert {id(p) for p in image["params"]} == {id(p) for p in model.encoder.parameters()}
    assert any(p is model.log_scale for p in rest["params"])
    assert sum(len(group["params"]) for group in (image, text, rest)) == len(list(model.parameters()))
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    assert float(model.logit_scale()) == pytest.approx(100.0)
    fixed = _method(tmp_path / "fixed", tiny_tiles, learnable_temperature=False, temperature=1.0)
    assert not fixed.log_scale.requires_grad and float(fixed.logit_scale()) == pytest.approx(1.0)


def _simclr_checkpoint(folder: Path, tiles: Path, encoder: str = "test_resnet") -> Path:
    recipe = load_recipe(write_recipe(folder, tiles, {"name": "simclr", "hidden_dim": 8, "output_dim": 4}))
    model = build_method(recipe, 4, None)
    with torch.no_grad():
        for parameter in model.encoder.parameters():
            parameter.add_(1.0)  # unlike any fresh initialisation
    checkpoint: dict = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    path = folder / "simclr.ckpt"
    torch.save(checkpoint, path)
    return path


def test_image_encoder_starts_from_another_methods_checkpoint(tmp_path: Path, tiny_tiles: Path) -> None:
    source = _simclr_checkpoint(tmp_path / "simclr", tiny_tiles)
    model = _method(tmp_path / "a", tiny_tiles, init_checkpoint=str(source))
    saved = torch.load(source, weights_only=True)["state_dict"]
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, saved[f"encoder.{key}"])
    fresh = _method(tmp_path / "b", tiny_tiles)
    assert not torch.equal(next(fresh.encoder.parameters()), next(model.encoder.parameters()))


def test_an_init_checkpoint_that_does_not_fit_is_refused(tmp_path: Path, tiny_tiles: Path) -> None:
    source = _simclr_checkpoint(tmp_path / "simclr", tiny_tiles)
    with pytest.raises(GeoclError, match="set encoder.name") as error:
        recipe = load_recipe(
            write_recipe(
                tmp_path / "r",
                tiny_tiles,
                {**TINY_METHOD, "init_checkpoint": str(source)},
                encoder={"name": "resnet18"},
                augment=WHOLE_TILE,
            )
        )
        build_method(recipe, 4, None)
    assert error.value.key == "method.init_checkpoint" and str(source) in str(error.value)
    recipe = load_recipe(write_retrieval_recipe(tmp_path / "b", tiny_tiles, init_checkpoint=str(source)))
    with pytest.raises(GeoclError, match="pretrained on 4 bands, the data has 3"):
        build_method(recipe, 3, None)
    with pytest.raises(GeoclError, match="not a checkpoint") as error:
        build_method(
            load_recipe(write_retrieval_recipe(tmp_path / "c", tiny_tiles, init_checkpoint=str(tmp_path))), 4, None
        )
    assert error.value.key == "method.init_checkpoint" and str(tmp_path) in str(error.value)


def test_an_init_checkpoint_is_read_without_unpickling_anything(tmp_path: Path, tiny_tiles: Path) -> None:
    source = _simclr_checkpoint(tmp_path / "simclr", tiny_tiles)
    checkpoint = torch.load(source, weights_only=True)
    marker = tmp_path / "marker"
    checkpoint["geocl"]["extra"] = Payload(marker)
    torch.save(checkpoint, source)
    recipe = load_recipe(write_retrieval_recipe(tmp_path / "r", tiny_tiles, init_checkpoint=str(source)))
    with pytest.raises(GeoclError, match="tensors and plain data") as error:
        build_method(recipe, 4, None)
    assert error.value.key == "method.init_checkpoint" and str(source) in str(error.value)
    assert "\n" not in str(error.value) and not marker.exists()


def test_bad_parameters_name_their_key(tmp_path: Path, tiny_tiles: Path) -> None:
    with pytest.raises(GeoclError, match="method.text_heads"):
        _method(tmp_path / "a", tiny_tiles, text_width=16, text_heads=3)
    with pytest.raises(GeoclError, match="method.vocab_capacity"):
        _method(tmp_path / "b", tiny_tiles, vocab_capacity=4)
    with pytest.raises(GeoclError, match="method.captions.min_share"):
        load_recipe(write_retrieval_recipe(tmp_path / "c", tiny_tiles, captions={"min_share": 0}))


def test_pretrain_on_tiles_writes_a_checkpoint_search_can_read(tmp_path: Path, tiny_tiles: Path) -> None:
    result = run_pretrain(load_recipe(write_retrieval_recipe(tmp_path, tiny_tiles), ["trainer.max_epochs=1"]))
    assert result.global_step == 3 and math.isfinite(result.final_loss)
    checkpoint = torch.load(result.checkpoint, weights_only=True)  # a real checkpoint is tensors and plain data
    settings = checkpoint[RETRIEVAL_KEY]
    assert "forest" in settings["tokenizer"]["vocabulary"] and settings["view_size"] == 32
    assert checkpoint["geocl"]["method"] == "retrieval"
    towers = load_towers(result.checkpoint)
    # the trained weights, not fresh ones
    torch.testing.assert_close(towers.text.head.fc.weight, checkpoint["state_dict"]["text.head.fc.weight"])
    assert towers.embed_texts(["river next to farmland"]).shape == (1, 16)


def test_the_shipped_recipe_trains_on_natural_images_with_class_name_captions(tmp_path: Path) -> None:
    cifar = write_toy_cifar(tmp_path / "cifar", num_classes=3, per_class=8, test_per_class=2, train_batches=1)
    shipped = Path(__file__).resolve().parents[2] / "recipes" / "retrieval.yaml"
    recipe = load_recipe(
        shipped,
        [
            "data.format=cifar",
            f"data.path={cifar}",
            "data.tiles=''",
            "data.view_size=32",
            f"out={tmp_path / 'run'}",
            "encoder.name=test_resnet",
            "data.batch_size=8",
            "data.num_workers=0",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.accelerator=cpu",
            "method.embed_dim=16",
            "method.text_width=16",
        ],
    )
    result = run_pretrain(recipe)
    assert math.isfinite(result.final_loss) and result.global_step == 2
    towers = load_towers(result.checkpoint)
    assert towers.tokenizer.vocabulary == ["class0", "class1", "class2"]


def test_a_tile_set_without_masks_is_refused_before_training(tmp_path: Path, write_raster) -> None:
    from geocl.data.tiler import TilingOptions, tile_scene
    from tests.conftest import coordinate_image

    scene = write_raster(tmp_path / "scene.tif", coordinate_image(64, 64, bands=4), nodata=0)
    tiles = tmp_path / "tiles"
    tile_scene(scene, tiles, options=TilingOptions(size=32, stride=32, split_block=32, seed=1), progress=False)
    with pytest.raises(GeoclError, match="method.captions.csv"):
        run_pretrain(load_recipe(write_retrieval_recipe(tmp_path / "run", tiles)))
    assert not (tmp_path / "run" / "run" / "checkpoints").exists()


def test_resuming_with_other_captions_is_refused_and_a_checkpoint_restores_the_vocabulary(
    tmp_path: Path, tiny_tiles: Path
) -> None:
    model = _method(tmp_path / "a", tiny_tiles)
    assert model.tokenizer is not None
    saved: dict = {}
    model.on_save_checkpoint(saved)
    other = dict(saved[RETRIEVAL_KEY], tokenizer={**saved[RETRIEVAL_KEY]["tokenizer"], "vocabulary": ["forest"]})
    with pytest.raises(GeoclError, match="captions of the training data changed"):
        model.on_load_checkpoint({RETRIEVAL_KEY: other})
    recipe = load_recipe(write_retrieval_recipe(tmp_path / "b", tiny_tiles))
    fresh = build_method(recipe, 4, None)  # not given any data: the checkpoint's vocabulary is its own
    fresh.on_load_checkpoint(saved)
    assert fresh.tokenizer is not None and fresh.tokenizer.vocabulary == model.tokenizer.vocabulary
