"""Every medical recipe (2D slices of NIfTI volumes) loads, and pretrains a tiny budget on the embedded volumes.

The SimCLR recipe also runs in the default suite, pretrained and scored by Dice, in
tests/evaluation/test_medical.py; here every recipe runs two one-batch epochs (marked slow:
MultiNet and PatchMix take half a minute each on 2 CPU cores), with the method's stage
switches moved to epoch 1 so that both stages run (GraSS's region sampling, SPPS's mining).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods' recipe sections)
from geocl.data.medical.synthetic import make_volumes
from geocl.finetune.model import build_segmenter, load_pretrained_encoder
from geocl.methods import load_recipe
from geocl.models.checkpoints import read_pretrain_checkpoint
from geocl.training.pretrain import run_pretrain

#: The 2D contrastive recipes (recipes/medical/ also holds FBA's semi-supervised ones).
RECIPES = [
    Path(__file__).resolve().parents[2] / "recipes" / "medical" / f"{stem}.yaml"
    for stem in ("simclr", "grass", "moco", "spps", "multinet", "patchmix")
]


def test_a_recipe_for_every_2d_method() -> None:
    for path in RECIPES:
        recipe = load_recipe(path)
        assert recipe.data.format == "nifti" and recipe.data.path == "demo_out/medical"
        assert recipe.name == f"medical-{path.stem}"


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_volumes(tmp_path_factory.mktemp("medical"), cases=4, min_size=24, max_size=28, seed=1).root


@pytest.mark.slow
@pytest.mark.parametrize("recipe_path", RECIPES, ids=lambda path: path.stem)
def test_recipe_pretrains_on_slices(recipe_path: Path, volumes: Path, tmp_path: Path) -> None:
    recipe = load_recipe(recipe_path)
    overrides = [
        f"data.path={volumes}",
        f"out={tmp_path / 'run'}",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.image_size=0",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=1",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
    ]
    if not recipe.encoder.args:  # a ViT recipe keeps its (small) ViT: its args fit no CNN
        overrides.append("encoder.name=test_resnet")
    if recipe.method.name == "grass":
        overrides.append("method.warmup_epochs=1")
    spps = getattr(recipe.method, "spps", None)
    if spps is not None and spps.enabled:
        overrides.append("method.spps.warmup_epochs=1")
    if "queue_size" in type(recipe.method).model_fields:
        overrides.append("method.queue_size=16")
    result = run_pretrain(load_recipe(recipe_path, overrides))
    assert result.global_step == 2 and math.isfinite(result.final_loss)
    if spps is not None and spps.enabled:
        assert (tmp_path / "run" / "spps" / "pairs_epoch001.csv").exists()
    loaded = read_pretrain_checkpoint(result.checkpoint)
    assert loaded["meta"]["in_chans"] == 1
    segmenter = build_segmenter("unet", loaded["meta"]["encoder"], 1, 2)
    load_pretrained_encoder(segmenter, result.checkpoint, 1, loaded=loaded)
    assert segmenter(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)
