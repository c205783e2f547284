"""Every natural-image recipe pretrains a tiny budget on toy data, then evaluates; bad recipes fail first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods' recipe sections)
from geocl.data.cifar import CifarDataset
from geocl.data.image_folder import ImageFolderDataset
from geocl.data.natural_toy import write_toy_cifar, write_toy_image_folder
from geocl.errors import GeoclError
from geocl.evaluation import run_evaluation
from geocl.methods import CHECKPOINT_KEY, load_recipe
from geocl.training.pretrain import run_pretrain

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes" / "natural").glob("*.yaml"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("natural")
    return {
        "cifar": write_toy_cifar(root / "cifar", num_classes=4, per_class=8, test_per_class=3, train_batches=2),
        "image_folder": write_toy_image_folder(root / "images", 4, per_class=6, size=40),
    }


def _tiny(recipe_path: Path, toy: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """Overrides that shrink a recipe to two one-batch epochs of a test encoder on the toy data."""
    recipe = load_recipe(recipe_path)
    overrides = [
        f"data.path={toy[recipe.data.format]}",
        f"out={out}",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=1",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
    ]
    if not recipe.encoder.args:  # a ViT recipe keeps its (small) ViT: its args fit no CNN
        overrides.append("encoder.name=test_resnet")
    if recipe.method.name == "grass":
        overrides.append("method.warmup_epochs=1")  # reach stage 2 in the second epoch
    if getattr(recipe.method, "spps", None) is not None and recipe.method.spps.enabled:
        overrides.append("method.spps.warmup_epochs=1")  # mine in the second epoch
    return [*overrides, *extra]


def test_the_natural_recipes_are_there() -> None:
    assert {path.name for path in RECIPES} >= {"simclr.yaml", "grass.yaml", "simclr_image_folder.yaml"}


@pytest.mark.parametrize("recipe_path", RECIPES, ids=lambda path: path.stem)
def test_recipe_pretrains_then_evaluates(recipe_path: Path, toy: dict[str, Path], tmp_path: Path) -> None:
    recipe = load_recipe(recipe_path, _tiny(recipe_path, toy, tmp_path / "run"))
    result = run_pretrain(recipe)
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.final_loss))
    meta = torch.load(result.checkpoint, weights_only=False)[CHECKPOINT_KEY]
    data = (CifarDataset if recipe.data.format == "cifar" else ImageFolderDataset)(
        recipe.data.path, image_size=recipe.data.image_size
    )
    assert meta["in_chans"] == 3 and meta["band_stats"] == data.metadata["band_stats"]
    assert not (result.out / "maps").exists()  # region maps are for georeferenced tiles only
    evaluation = run_evaluation(
        result.checkpoint, recipe.data.path, recipe.data.format, out=result.out, k=5, probe_epochs=3
    )
    written = json.loads((result.out / "evaluation.json").read_text())
    assert written["knn_top1"] == evaluation.knn_top1 and written["probe_top1"] == evaluation.probe_top1
    assert 0.0 <= evaluation.knn_top1 <= 1.0 and 0.0 <= evaluation.probe_top1 <= 1.0
    assert (
        evaluation.train_images == len(data) and evaluation.num_classes == 4 and written["method"] == recipe.method.name
    )


def test_a_wrong_key_under_data_fails_before_training_naming_it(toy: dict[str, Path], tmp_path: Path) -> None:
    path = RECIPES[0]
    with pytest.raises(GeoclError) as caught:
        load_recipe(path, [*_tiny(path, toy, tmp_path / "run"), "data.fromat=cifar"])
    assert caught.value.key == "data.fromat" and "did you mean 'data.format'" in str(caught.value)
    with pytest.raises(GeoclError, match="choices: tiles, image_folder, cifar") as caught:
        load_recipe(path, ["data.format=cifar10"])
    assert caught.value.key == "data.format"
    assert not (tmp_path / "run").exists()


def test_natural_formats_need_data_path_and_tiles_refuse_image_size(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[2] / "recipes" / "natural" / "simclr.yaml"
    with pytest.raises(GeoclError, match="missing value for data.path") as caught:
        load_recipe(path, ["data.path=''"])
    assert caught.value.key == "data.path"
    simclr = Path(__file__).resolve().parents[2] / "recipes" / "simclr.yaml"
    with pytest.raises(GeoclError) as caught:
        load_recipe(simclr, ["data.image_size=32"])
    assert caught.value.key == "data.image_size"


def test_grass_geo_sampling_is_refused_on_natural_images(toy: dict[str, Path], tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[2] / "recipes" / "natural" / "grass.yaml"
    recipe = load_recipe(path, _tiny(path, toy, tmp_path / "run", "method.stage2_sampling=geo"))
    with pytest.raises(GeoclError, match="georeferenced") as caught:
        run_pretrain(recipe)
    assert caught.value.key == "method.stage2_sampling"
