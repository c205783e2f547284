"""Every recipe shipped under recipes/ loads, rejects a misspelt key, and runs a tiny budget.

The CPU-sized remote-sensing recipes run in the default suite, the paper-scale ones
(ResNet-50 / ViT-S at 224 px) are marked slow; the natural-image recipes run in
tests/training/test_pretrain_natural.py (then evaluated by kNN and probe). The budget is two
epochs of one batch, with the method's stage switches moved to epoch 1 so that both
stages run: GraSS's gradient-guided sampling and SPPS's pair mining. A method that pretrains
nothing (FBA, semi-supervised) is refused by pretraining and runs its own training of the
comparison's rows instead, one step on the tiles.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from geocl.errors import GeoclError
from geocl.evaluation.segmentation import method_training
from geocl.finetune.model import build_segmenter, load_pretrained_encoder
from geocl.methods import load_recipe, method_class
from geocl.models.checkpoints import read_pretrain_checkpoint
from geocl.training.pretrain import run_pretrain
from geocl.transforms.augment import crop_scale_mismatch

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
CPU_TILES = sorted(RECIPES.glob("*.yaml"))
NATURAL = sorted((RECIPES / "natural").glob("*.yaml"))
#: The CPU recipes at the budget of the urban scene's tables (docs/methods/grass.md).
URBAN = sorted((RECIPES / "urban").glob("*.yaml"))
PAPER = sorted((RECIPES / "paper").glob("*.yaml"))
#: Paper-scale recipes on tile sets (those on NIfTI volumes run in tests/methods/test_fba.py).
PAPER_TILES = [path for path in PAPER if yaml.safe_load(path.read_text())["data"].get("format", "tiles") == "tiles"]


def _id(path: Path) -> str:
    return str(path.relative_to(RECIPES))


def _raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def tiny_overrides(path: Path, data: Path, out: Path) -> list[str]:
    """Overrides that keep the recipe's method, encoder and views but cut the budget."""
    raw = _raw(path)
    overrides = [
        f"out={out}",
        f"data.tiles={data}",
        "data.batch_size=6",
        "data.num_workers=0",
        "trainer.max_epochs=2",
        "trainer.max_steps=-1",
        "trainer.limit_train_batches=1",
        "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.precision=32-true",
        "scheduler.warmup_epochs=0",
    ]
    method = raw["method"]
    if method["name"] == "grass":
        overrides.append("method.warmup_epochs=1")
    if method.get("spps", {}).get("enabled"):
        overrides += ["method.spps.warmup_epochs=1", "method.spps.checkpoint=''"]
    if "queue_size" in method:  # the paper's queues are sized for ImageNet-scale epochs
        overrides.append("method.queue_size=12")
    if "labelled_bs" in method:  # labelled-first batches of 4: 2 labelled, 2 unlabelled
        overrides.append("method.labelled_bs=2")
    if raw["data"].get("dataset"):  # a benchmark recipe: train on the test tile set instead
        overrides += ["data.dataset=''", "data.root=''"]
    return overrides


def run_tiny_downstream(recipe: Any, data: Path, out: Path) -> None:
    """A method that pretrains nothing: refused by pretraining in one line; its row training runs one step."""
    with pytest.raises(GeoclError, match="is not a pretraining: .*geocl compare"):
        run_pretrain(recipe)
    train = method_training(recipe, "finetune")
    assert train is not None
    result = train(
        tiles=data,
        out=out / "row",
        encoder_checkpoint=None,
        encoder=recipe.encoder.name,
        label_fraction=0.2,
        seed=0,
        max_epochs=1,
        steps_per_epoch=1,
        val_every=1,
        batch_size=4,
        crop=32,
        accelerator="cpu",
        progress=False,
    )
    assert 0.0 <= result.miou <= 1.0 and result.checkpoint.exists()


def run_tiny(path: Path, data: Path, out: Path) -> None:
    recipe = load_recipe(path, tiny_overrides(path, data, out))
    if not method_class(recipe.method.name).pretrains:
        run_tiny_downstream(recipe, data, out)
        return
    result = run_pretrain(recipe)

    assert result.checkpoint.exists()
    assert result.global_step == 2
    assert math.isfinite(result.final_loss)
    if getattr(recipe.method, "spps", None) is not None and recipe.method.spps.enabled:
        assert (out / "spps" / "pairs_epoch001.csv").exists()
    # finetuning starts from every method's checkpoint: the encoder loads into a segmenter
    loaded = read_pretrain_checkpoint(result.checkpoint)
    meta = loaded["meta"]
    segmenter = build_segmenter("unet", meta["encoder"], int(meta["in_chans"]), 3)
    load_pretrained_encoder(segmenter, result.checkpoint, int(meta["in_chans"]), loaded=loaded)
    with torch.no_grad():
        logits = segmenter.eval()(torch.zeros(1, int(meta["in_chans"]), 64, 64))
    assert logits.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("path", CPU_TILES + URBAN, ids=_id)
def test_cpu_recipe_runs_a_tiny_budget(path: Path, tiny_tiles: Path, tmp_path: Path) -> None:
    run_tiny(path, tiny_tiles, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_TILES, ids=_id)
def test_paper_recipe_runs_a_tiny_budget(path: Path, tiny_tiles: Path, tmp_path: Path) -> None:
    run_tiny(path, tiny_tiles, tmp_path / "run")


def test_every_method_has_a_cpu_paper_and_natural_recipe() -> None:
    methods = {
        (raw := _raw(path))["method"]["name"] + ("+spps" if raw["method"].get("spps") else "") for path in CPU_TILES
    }
    assert methods == {
        "simclr",
        "grass",
        "moco",
        "multinet",
        "patchmix",
        "simclr+spps",
        "moco+spps",
        "fba",
        "fba-pretrain",
        "retrieval",
    }
    for path in CPU_TILES:
        assert (RECIPES / "paper" / path.name).exists(), f"no paper-scale form of {path.name}"
        # natural images have no masks: a semi-supervised segmenter has nothing to train on there;
        # fba-pretrain splits a feature map into fore- and background, and a 32-px CIFAR image
        # leaves a ResNet a 1 x 1 map (the method refuses it, naming data.view_size)
        name = _raw(path)["method"]["name"]
        if method_class(name).pretrains and name != "fba-pretrain":
            assert (RECIPES / "natural" / path.name).exists(), f"no natural-image form of {path.name}"


def test_the_urban_recipes_are_the_cpu_recipes_at_the_urban_tables_settings() -> None:
    # the urban tables hold only if these differ from the CPU recipes where their comments say:
    # the tiles, a crop scale that keeps 256-px tiles' resolution in the views, the step budget
    # and GraSS's warm-up scaled to it
    assert [path.name for path in URBAN] == ["grass.yaml", "moco.yaml", "simclr.yaml"]
    for path in URBAN:
        urban, cpu = _raw(path), _raw(RECIPES / path.name)
        assert crop_scale_mismatch(256, urban["data"]["view_size"], tuple(urban["augment"]["scale"])) is None
        assert crop_scale_mismatch(256, cpu["data"]["view_size"], tuple(cpu["augment"]["scale"])) is not None
        assert urban["trainer"]["max_steps"] == 3000 and urban["trainer"]["max_epochs"] == -1
        for section in ("encoder", "optimizer", "scheduler"):
            assert urban[section] == cpu[section], section
        expected = {**cpu["method"], "warmup_epochs": 860} if cpu["method"]["name"] == "grass" else cpu["method"]
        assert urban["method"] == expected
        assert {**urban["data"], "tiles": None} == {**cpu["data"], "tiles": None}


def _misspelt(key: str) -> str:
    return key[:-1] if len(key) > 3 else key + "x"


@pytest.mark.parametrize("path", CPU_TILES + NATURAL + PAPER + URBAN, ids=_id)
@pytest.mark.parametrize("section", ["method", "data"])
def test_misspelt_key_fails_before_training_naming_it(path: Path, section: str, tmp_path: Path) -> None:
    raw = _raw(path)
    key = next(name for name in raw[section] if name not in ("name", "format"))
    wrong = _misspelt(key)
    raw[section][wrong] = raw[section].pop(key)
    bad = tmp_path / path.name
    bad.write_text(yaml.safe_dump(raw))

    with pytest.raises(GeoclError) as error:
        load_recipe(bad)
    assert f"{section}.{wrong}" in str(error.value)


def test_every_shipped_method_loads_first_thing_in_a_fresh_process(tmp_path: Path) -> None:
    """The built-in methods are declared (geocl.methods.BUILTIN_METHODS), not found by import order:
    ``geocl.load_recipe`` as the first call of a process knows every method a shipped recipe names."""
    import subprocess
    import sys

    shipped = sorted({_raw(path)["method"]["name"] for path in CPU_TILES + NATURAL + PAPER})
    names = {_raw(path)["method"]["name"]: path for path in CPU_TILES + NATURAL + PAPER}
    loads = "; ".join(
        f"print(geocl.load_recipe({str(names[name])!r}, ['out={tmp_path}', 'data.tiles={tmp_path}']).method.name)"
        for name in shipped
    )
    code = (
        f"import geocl; {loads}; from geocl.methods import BUILTIN_METHODS, METHODS; "
        "print(sorted(cls.name for cls in BUILTIN_METHODS) == sorted(METHODS))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [*shipped, "True"]
