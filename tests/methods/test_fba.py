"""FBA as a method: no pretraining, typed recipe keys, its own training for the rows of the finetune (tiles) and
Dice (volumes) evaluations, and every shipped FBA recipe on NIfTI volumes at a tiny budget."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

import geocl.finetune.semi_supervised as semi_supervised
from geocl.errors import GeoclError
from geocl.evaluation import FrozenLinearProbe, SegmentationFinetune, Subset
from geocl.evaluation.segmentation import method_training
from geocl.finetune.semi_supervised import FBAOptions
from geocl.methods import FBA, METHODS, load_recipe
from geocl.training.pretrain import run_pretrain

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _recipe(name: str, tiles: Path, *overrides: str) -> Any:
    return load_recipe(RECIPES / name, [f"data.tiles={tiles}", "out=runs/ignored", *overrides])


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Stand in for run_semi_supervised (Lightning training): record its arguments, leave a metrics.json."""
    seen: list[dict[str, Any]] = []

    def fake(**arguments: Any) -> SimpleNamespace:
        seen.append(arguments)
        out = Path(arguments["out"])
        out.mkdir(parents=True, exist_ok=True)
        miou = 0.25 if arguments["fba"].supervised_only else 0.5
        (out / "metrics.json").write_text(json.dumps({"miou": miou, "classes": [0, 1], "iou": [miou, None]}))
        return SimpleNamespace(miou=miou, checkpoint=out / "best.ckpt")

    monkeypatch.setattr(semi_supervised, "run_semi_supervised", fake)
    return seen


def test_fba_is_registered_as_a_method_that_pretrains_nothing() -> None:
    assert METHODS["fba"] is FBA and FBA.pretrains is False
    with pytest.raises(GeoclError, match="not a pretraining: .*geocl compare recipes/fba.yaml"):
        FBA("test_resnet", 3)


def test_geocl_pretrain_refuses_fba_in_one_line_naming_compare(tiny_tiles: Path, tmp_path: Path) -> None:
    recipe = load_recipe(RECIPES / "fba.yaml", [f"data.tiles={tiny_tiles}", f"out={tmp_path / 'run'}"])
    with pytest.raises(GeoclError) as error:
        run_pretrain(recipe)
    message = str(error.value)
    assert message.startswith("method.name: method 'fba' is not a pretraining")
    assert "geocl compare" in message and "\n" not in message
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained, nothing to resume


def test_recipe_keys_are_typed_and_a_bad_value_names_its_key(tiny_tiles: Path) -> None:
    recipe = _recipe("fba.yaml", tiny_tiles)
    assert recipe.method.decoders == 3 and recipe.method.contrast_mode == "pooled-map"
    assert recipe.method.rampup_iterations is None and recipe.method.dice_weight is None
    for override, key in [
        ("method.decoders=2", "method.decoders"),
        ("method.contrast_mode=feature-pool", "method.contrast_mode"),
        ("method.labelled_bs=0", "method.labelled_bs"),
        ("method.temperature=0", "method.temperature"),
    ]:
        with pytest.raises(GeoclError, match=key.replace(".", r"\.")):
            _recipe("fba.yaml", tiny_tiles, override)


def test_the_finetune_rows_run_fba_with_the_recipe_keys_and_the_comparison_budget(
    tiny_tiles: Path, tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    recipe = _recipe("fba.yaml", tiny_tiles, "method.ce_weight=0.5", "method.rampup_iterations=7")
    evaluation = SegmentationFinetune({"max_epochs": 2, "lr": 0.01, "arch": "deeplabv3plus", "crop": 48})
    measured = evaluation.run(None, recipe=recipe, subset=Subset(0.05, 1), seed=2, out=tmp_path / "row")

    (arguments,) = calls
    # the row: data, labels and seed from the evaluation; the budget from the comparison's options
    assert arguments["tiles"] == tiny_tiles and arguments["out"] == tmp_path / "row"
    assert (arguments["label_fraction"], arguments["subset_seed"], arguments["seed"]) == (0.05, 1, 2)
    assert arguments["encoder"] == "resnet18" and arguments["encoder_checkpoint"] is None
    assert (arguments["max_epochs"], arguments["lr"], arguments["crop"]) == (2, 0.01, 48)
    # the network is FBA's: no architecture options reach it
    assert "arch" not in arguments and "freeze_encoder" not in arguments
    # the method keys, as one typed object
    assert arguments["fba"] == FBAOptions(
        supervised_only=False,
        decoders=3,
        labelled_bs=4,
        contrast_mode="pooled-map",
        contrast_weight=1.0,
        embedding_dim=128,
        pooled_grid=32,
        consistency=1.0,
        consistency_rampup=40.0,
        rampup_iterations=7,
        temperature=0.1,
        detach_targets=False,
        dice_weight=None,
        ce_weight=0.5,
        decoder_channels=None,
        variant="stable",
        contrast_balance=None,
        label_budget="train",
        spatial_dims=2,
        patch_size=None,
        width=16,
        depth=5,
        dropout=0.5,
    )
    assert measured.metrics == {"miou": 0.5}
    assert measured.extra["iou_0"] == 0.5 and math.isnan(measured.extra["iou_1"])  # per-class IoU read back


def test_the_baseline_recipe_and_an_initial_checkpoint(
    tiny_tiles: Path, tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    recipe = _recipe("fba-supervised.yaml", tiny_tiles, f"method.init_checkpoint={tmp_path / 'simclr.ckpt'}")
    SegmentationFinetune().run(None, recipe=recipe, subset=Subset(0.05), seed=0, out=tmp_path / "row")
    (arguments,) = calls
    assert arguments["fba"].supervised_only is True and arguments["fba"].decoders == 1
    assert arguments["encoder_checkpoint"] == tmp_path / "simclr.ckpt"  # the row has none: the recipe's
    assert "subset_seed" not in arguments  # drawn with the training seed, as run_finetune does


def test_evaluations_fba_cannot_serve_are_refused(
    tiny_tiles: Path, tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    recipe = _recipe("fba.yaml", tiny_tiles)
    with pytest.raises(GeoclError, match="'fba' pretrains no encoder and has no training of its own for the 'frozen'"):
        FrozenLinearProbe().run(None, recipe=recipe, subset=Subset(0.05), seed=0, out=tmp_path / "row")
    with pytest.raises(GeoclError, match=r"method\.spatial_dims: tiles are 2D"):
        FBA.trains_rows_of("finetune", _recipe("fba.yaml", tiny_tiles, "method.spatial_dims=3").method)
    assert not calls


# --- volumes (the medical Dice evaluation) ----------------------------------------------

MEDICAL = sorted((RECIPES / "medical").glob("fba*.yaml")) + sorted((RECIPES / "paper").glob("fba-la*.yaml"))


def _volume_recipe(path: Path, volumes: Path, *overrides: str) -> Any:
    return load_recipe(path, [f"data.path={volumes}", "out=runs/ignored", *overrides])


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geocl.data.medical.synthetic import make_volumes

    return make_volumes(tmp_path_factory.mktemp("medical"), cases=6, min_size=24, max_size=30, seed=0).root


@pytest.mark.parametrize("path", MEDICAL, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_the_dice_rows_run_fba_on_volumes_with_the_recipe_keys(
    path: Path, volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geocl.finetune.medical_semi_supervised as medical_semi
    from geocl.evaluation.medical import MedicalDice

    calls: list[dict[str, Any]] = []

    def fake(**arguments: Any) -> SimpleNamespace:
        calls.append(arguments)
        return SimpleNamespace(dice=0.8, jaccard=0.7, hd95=3.0, asd=1.0, checkpoint=tmp_path / "best.ckpt")

    monkeypatch.setattr(medical_semi, "run_medical_semi_supervised", fake)
    recipe = _volume_recipe(path, volumes)
    measured = MedicalDice({"max_epochs": 2, "arch": "deeplabv3plus"}).run(
        None, recipe=recipe, subset=Subset(0.2, 0), seed=1, out=tmp_path / "row"
    )
    (arguments,) = calls
    method = recipe.method
    assert measured.metrics == {"dice": 0.8, "jaccard": 0.7, "hd95": 3.0, "asd": 1.0}
    assert arguments["data"] == volumes and (arguments["label_fraction"], arguments["subset_seed"]) == (0.2, 0)
    assert arguments["max_epochs"] == 2 and "arch" not in arguments and "freeze_encoder" not in arguments
    fba = arguments["fba"]
    assert fba.spatial_dims == method.spatial_dims and fba.supervised_only == method.supervised_only
    assert fba.decoders == method.decoders and fba.labelled_bs == method.labelled_bs
    assert fba.label_budget == method.label_budget and fba.variant == method.variant
    if method.spatial_dims == 3:
        assert fba.patch_size == method.patch_size and fba.width == 16 and fba.depth == 5
        assert all(side % 16 == 0 for side in method.patch_size)  # the V-Net's halvings are exact


def test_3d_without_a_patch_is_refused_before_any_row(volumes: Path) -> None:
    recipe = _volume_recipe(RECIPES / "medical" / "fba3d.yaml", volumes, "method.patch_size=null")
    with pytest.raises(GeoclError, match=r"method\.patch_size"):
        FBA.trains_rows_of("dice", recipe.method)


@pytest.mark.slow  # one step of each medical recipe's network, validation and test on 2 volumes
@pytest.mark.parametrize("path", MEDICAL, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_medical_recipe_trains_a_tiny_budget(path: Path, volumes: Path, tmp_path: Path) -> None:
    shrink = ["method.labelled_bs=2", "encoder.name=test_resnet", "data.image_size=32", "method.embedding_dim=16"]
    if yaml.safe_load(path.read_text())["method"].get("spatial_dims", 2) == 3:
        shrink += ["method.patch_size=[16,16,16]", "method.width=4", "method.depth=3"]
    recipe = _volume_recipe(path, volumes, *shrink)
    train = method_training(recipe, "dice")
    assert train is not None
    data = recipe.data
    result = train(
        data=volumes,
        out=tmp_path / "row",
        encoder_checkpoint=None,
        encoder=recipe.encoder.name,
        label_fraction=0.5,
        seed=0,
        spacing=None,
        slice_axis=int(data.slice_axis),
        intensity=str(data.intensity),
        image_size=int(data.image_size),
        val_fraction=float(data.val_fraction),
        max_epochs=1,
        steps_per_epoch=1,
        val_every=1,
        batch_size=4,
        crop=32,
        accelerator="cpu",
        progress=False,
    )
    assert 0.0 <= result.dice <= 1.0 and result.checkpoint.exists()


def test_the_paper_recipes_count_the_label_budget_of_all_80_training_volumes() -> None:
    for name in ("fba-la.yaml", "fba-la-supervised.yaml"):
        recipe = load_recipe(RECIPES / "paper" / name, ["out=runs/ignored"])
        assert recipe.method.label_budget == "train-and-val"
    assert load_recipe(RECIPES / "paper" / "fba-la.yaml", ["out=runs/ignored"]).method.variant == "released"
