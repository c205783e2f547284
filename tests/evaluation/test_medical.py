"""The Dice evaluation of medical recipes: registry, arguments from the recipe, compare rows, and one real run.

The real run is the acceptance path: the medical SimCLR recipe pretrains a tiny budget on the
embedded synthetic volumes, and its encoder is finetuned on slices of a labelled case and
scored on whole test volumes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods' recipe sections)
from geocl.data.medical.synthetic import make_volumes
from geocl.errors import GeoclError
from geocl.evaluation import Subset, evaluation_for, get_evaluation
from geocl.evaluation.medical import OWN_FINETUNE_ARGS, MedicalDice
from geocl.experiments import run_compare
from geocl.methods import load_recipe
from geocl.recipes.compare_options import CompareOptions
from geocl.recipes.options import FinetuneOptions
from geocl.training.pretrain import run_pretrain

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "medical"


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_volumes(tmp_path_factory.mktemp("medical"), cases=5, min_size=24, max_size=30, seed=0).root


def _recipe(volumes: Path, out: Path, *extra: str) -> Any:
    return load_recipe(RECIPES / "simclr.yaml", [f"data.path={volumes}", f"out={out}", *extra])


def test_nifti_recipes_are_scored_by_dice() -> None:
    assert get_evaluation("dice") is MedicalDice and evaluation_for("nifti") is MedicalDice
    assert MedicalDice.metric_columns == ("dice", "jaccard", "hd95", "asd") and MedicalDice.primary() == "dice"
    assert set(MedicalDice.lower_is_better) == {"hd95", "asd"}
    assert MedicalDice.label("hd95") == "95HD (mm)"


class FakeFinetune:
    """Records its arguments and leaves metrics.json as the real finetuning does."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> SimpleNamespace:
        self.calls.append(kwargs)
        out = Path(kwargs["out"])
        out.mkdir(parents=True, exist_ok=True)
        dice = 0.5 + kwargs["label_fraction"] / 10 + (0.1 if kwargs["encoder_checkpoint"] else 0.0)
        metrics = {"dice": dice, "jaccard": dice / (2 - dice), "hd95": 10 * (1 - dice), "asd": 3 * (1 - dice)}
        (out / "metrics.json").write_text(json.dumps({**metrics, "checkpoint": str(out / "best.ckpt")}))
        return SimpleNamespace(**metrics, checkpoint=out / "best.ckpt")


def test_run_passes_the_recipe_s_volume_settings(volumes: Path, tmp_path: Path) -> None:
    recipe = _recipe(
        volumes,
        tmp_path / "run",
        "data.spacing=[1.0,1.0,1.5]",
        "data.intensity=percentile",
        "data.image_size=64",
        "data.slice_axis=1",
        "data.val_fraction=0.25",
    )
    fake = FakeFinetune()
    evaluation = MedicalDice(FinetuneOptions(max_epochs=2, progress=False), finetune_fn=fake)
    measured = evaluation.run(Path("enc.ckpt"), recipe=recipe, subset=Subset(0.2, 7), seed=3, out=tmp_path / "row")
    (call,) = fake.calls
    assert call["data"] == volumes and call["encoder_checkpoint"] == Path("enc.ckpt") and call["encoder"] == "resnet18"
    assert (call["label_fraction"], call["seed"], call["subset_seed"]) == (0.2, 3, 7)
    assert call["spacing"] == [1.0, 1.0, 1.5] and call["intensity"] == "percentile"
    assert (call["image_size"], call["slice_axis"], call["val_fraction"]) == (64, 1, 0.25)
    assert call["max_epochs"] == 2 and call["progress"] is False
    assert measured.metrics["dice"] == pytest.approx(0.62) and set(measured.metrics) == set(MedicalDice.metric_columns)
    assert evaluation.read_finished(tmp_path / "row").metrics == pytest.approx(measured.metrics)  # type: ignore[union-attr]
    with pytest.raises(GeoclError, match="must not set label_fraction"):
        MedicalDice({"label_fraction": 0.5})
    assert set(OWN_FINETUNE_ARGS) >= {"data", "spacing", "slice_axis", "intensity", "image_size"}


def test_the_test_set_names_the_test_cases(volumes: Path, tmp_path: Path) -> None:
    described = MedicalDice().test_set(_recipe(volumes, tmp_path))
    assert described is not None and "1 test volumes of 5 cases" in described.description
    assert MedicalDice().test_set(_recipe(tmp_path / "nowhere", tmp_path)) is None


def test_compare_writes_the_four_metrics(volumes: Path, tmp_path: Path) -> None:
    fake = FakeFinetune()

    def pretrain(recipe: Any, resume: bool = False) -> SimpleNamespace:
        checkpoint = Path(recipe.out) / "checkpoints" / "last.ckpt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text("weights")
        return SimpleNamespace(checkpoint=checkpoint, out=Path(recipe.out))

    options = CompareOptions(
        recipes=[RECIPES / "simclr.yaml", RECIPES / "moco.yaml"],
        label_fractions=[0.2, 1.0],
        seeds=1,
        out=tmp_path / "cmp",
        overrides=[f"data.path={volumes}"],
    )
    results = run_compare(options, pretrain_fn=pretrain, evaluation=MedicalDice(finetune_fn=fake), echo=None)
    assert list(results["recipe"].unique()) == ["medical-simclr", "medical-moco", "random-init"]
    assert (results["evaluation"] == "dice").all() and (results["status"] == "ok").all()
    written = pd.read_csv(tmp_path / "cmp" / "results.csv")
    assert {"dice", "jaccard", "hd95", "asd"} <= set(written.columns)
    random = written[written["recipe"] == "random-init"]
    assert random["dice"].tolist() == pytest.approx([0.52, 0.6])
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "95HD (mm)" in table and "ASD (mm)" in table
    assert len(fake.calls) == 6 and all(call["data"] == volumes for call in fake.calls)


def test_simclr_recipe_pretrains_on_the_volumes_and_is_scored(volumes: Path, tmp_path: Path) -> None:
    recipe = _recipe(
        volumes,
        tmp_path / "pretrain",
        "encoder.name=test_resnet",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.view_size=32",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
    )
    pretrained = run_pretrain(recipe)
    assert pretrained.global_step == 2 and math.isfinite(pretrained.final_loss)
    meta = torch.load(pretrained.checkpoint, weights_only=False, map_location="cpu")["geocl"]
    assert meta["in_chans"] == 1 and meta["band_stats"] == {"mean": [0.0], "std": [1.0]}

    evaluation = MedicalDice(
        FinetuneOptions(max_epochs=1, steps_per_epoch=2, batch_size=4, progress=False, accelerator="cpu")
    )
    measured = evaluation.run(pretrained.checkpoint, recipe=recipe, subset=Subset(0.5), seed=0, out=tmp_path / "dice")
    assert all(math.isfinite(value) for value in measured.metrics.values())
    assert 0.0 <= measured.metrics["dice"] <= 1.0 and measured.metrics["hd95"] >= 0.0
    assert list((tmp_path / "dice" / "plots").glob("*.png")) and (tmp_path / "dice" / "cases.csv").is_file()
    record = json.loads((tmp_path / "dice" / "metrics.json").read_text())
    assert record["encoder_checkpoint"] == str(pretrained.checkpoint) and record["distance_unit"] == "mm"
    finetuned = torch.load(measured.checkpoint, weights_only=False, map_location="cpu")
    assert finetuned["geocl_segmenter"]["pretrain_method"] == "simclr"
