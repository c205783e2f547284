"""`geocl compare` with a method that pretrains nothing: FBA against supervised-only training on the same labels.

The fast tests replace the trainings (semi-supervised, plain finetune) with fakes and
check what compare does around them: no pretraining, rows that pair across the two
recipes, a random-init row only beside a recipe that pretrains, reuse and refusals. The slow test runs
the real trainings at a tiny budget on the embedded scene's tiles.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import yaml

import geocl.finetune.semi_supervised as semi_supervised
import geocl.methods  # noqa: F401  (registers fba)
from geocl.errors import GeoclError
from geocl.evaluation import SegmentationFinetune
from geocl.experiments import CompareOptions, run_compare

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PAIR = [RECIPES / "fba.yaml", RECIPES / "fba-supervised.yaml"]


def _no_pretraining(recipe: Any, resume: bool = False) -> None:
    raise AssertionError(f"{recipe.name} was pretrained")


class Trainings:
    """Fake semi-supervised and plain finetuning: mIoU = 0.3 (+0.1 semi-supervised) + 0.01 seed + 0.02 subset seed."""

    def __init__(self) -> None:
        self.semi: list[dict[str, Any]] = []
        self.plain: list[dict[str, Any]] = []

    def _finish(self, out: Path, miou: float) -> SimpleNamespace:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"miou": miou, "classes": [0, 1], "iou": [miou, miou]}))
        return SimpleNamespace(miou=miou, checkpoint=out / "best.ckpt")

    def semi_supervised(self, **arguments: Any) -> SimpleNamespace:
        self.semi.append(arguments)
        gain = 0.0 if arguments["fba"].supervised_only else 0.1
        miou = 0.3 + gain + 0.01 * arguments["seed"] + 0.02 * arguments.get("subset_seed", 0)
        return self._finish(arguments["out"], miou)

    def finetune(self, **arguments: Any) -> SimpleNamespace:
        self.plain.append(arguments)
        return self._finish(arguments["out"], 0.2 + 0.01 * arguments["seed"])


@pytest.fixture
def trainings(monkeypatch: pytest.MonkeyPatch) -> Trainings:
    fakes = Trainings()
    monkeypatch.setattr(semi_supervised, "run_semi_supervised", fakes.semi_supervised)
    return fakes


def _compare(tiles: Path, out: Path, trainings: Trainings, *overrides: str, **options: Any) -> pd.DataFrame:
    settings = CompareOptions(
        recipes=PAIR,
        label_fractions=[0.05],
        seeds=2,
        subset_seeds=2,
        baseline="fba-supervised",
        out=out,
        overrides=[f"data.tiles={tiles}", *overrides],
        **options,
    )
    evaluation = SegmentationFinetune(settings.finetune, finetune_fn=trainings.finetune)
    return run_compare(settings, pretrain_fn=_no_pretraining, evaluation=evaluation, echo=None)


def test_fba_and_supervised_only_pair_on_the_same_labels_without_pretraining(
    tiny_tiles: Path, tmp_path: Path, trainings: Trainings
) -> None:
    out = tmp_path / "cmp"
    results = _compare(tiny_tiles, out, trainings)

    assert set(results["status"]) == {"ok"}
    # no random-init row: nothing is pretrained, and fba-supervised is the random-init baseline of the pair
    assert results.groupby("recipe", sort=False).size().to_dict() == {"fba": 4, "fba-supervised": 4}
    assert set(results["method"]) == {"fba"}
    # the same grid of (label subset, seed) for both recipes: every FBA row has its supervised twin
    grid = {
        (call["fba"].supervised_only, call["subset_seed"], call["seed"], call["label_fraction"])
        for call in trainings.semi
    }
    assert grid == {(only, subset, seed, 0.05) for only in (False, True) for subset in (0, 1) for seed in (0, 1)}
    assert all(call["encoder_checkpoint"] is None and "arch" not in call for call in trainings.semi)
    assert not trainings.plain
    # the recipe is recorded where a pretraining would be; nothing was pretrained
    saved = yaml.safe_load((out / "pretrain" / "fba" / "config.yaml").read_text())
    assert saved["method"]["name"] == "fba" and saved["method"]["decoders"] == 3
    assert not (out / "pretrain" / "fba" / "checkpoints").exists()
    # paired differences to the baseline: +0.1 on every one of the 4 pairs
    summary = pd.read_csv(out / "results_summary.csv").set_index("recipe")
    assert summary.loc["fba", "delta"] == pytest.approx(0.1) and summary.loc["fba", "pairs"] == 4
    assert summary.loc["fba", "wins"] == 4
    assert "fba-supervised" in (out / "results.md").read_text()


def test_beside_a_pretraining_the_random_init_row_is_the_pretrained_recipe_s_plain_finetuning(
    tiny_tiles: Path, tmp_path: Path, trainings: Trainings
) -> None:
    pretrained: list[str] = []

    def pretrain(recipe: Any, resume: bool = False) -> SimpleNamespace:
        pretrained.append(str(recipe.name))
        return _fake_pretraining(recipe)

    settings = CompareOptions(
        recipes=[PAIR[0], RECIPES / "simclr.yaml"],
        label_fractions=[0.05],
        seeds=1,
        out=tmp_path / "cmp",
        overrides=[f"data.tiles={tiny_tiles}"],
    )
    evaluation = SegmentationFinetune(settings.finetune, finetune_fn=trainings.finetune)
    results = run_compare(settings, pretrain_fn=pretrain, evaluation=evaluation, echo=None)

    assert pretrained == ["simclr"] and list(results["recipe"]) == ["fba", "simclr", "random-init"]
    assert set(results["status"]) == {"ok"} and len(trainings.semi) == 1
    simclr, random_init = trainings.plain  # plain finetuning, the architecture options kept
    assert simclr["encoder_checkpoint"].name == "last.ckpt" and random_init["encoder_checkpoint"] is None
    assert simclr["arch"] == random_init["arch"] == "unet"


def _fake_pretraining(recipe: Any, resume: bool = False) -> SimpleNamespace:
    checkpoint = Path(recipe.out) / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text("encoder")
    (Path(recipe.out) / "metrics.json").write_text("{}")
    return SimpleNamespace(checkpoint=checkpoint)


def _listed(value: Any) -> bool:
    """Whether a report cell lists values per pretraining."""
    return isinstance(value, str) and bool(value)


def test_with_several_pretrainings_only_the_pairs_of_a_pretrained_recipe_are_summarised_per_pretraining(
    tiny_tiles: Path, tmp_path: Path, trainings: Trainings
) -> None:
    settings = CompareOptions(
        recipes=[PAIR[0], RECIPES / "simclr.yaml"],
        label_fractions=[0.05],
        seeds=2,
        pretrain_seeds=2,
        out=tmp_path / "cmp",
        overrides=[f"data.tiles={tiny_tiles}"],
    )
    evaluation = SegmentationFinetune(settings.finetune, finetune_fn=trainings.finetune)
    run_compare(settings, pretrain_fn=_fake_pretraining, evaluation=evaluation, echo=None)

    summary = pd.read_csv(tmp_path / "cmp" / "results_summary.csv", keep_default_na=False).set_index("recipe")
    # simclr's two pretrainings each served one seed: its difference to fba is over them
    assert _listed(summary.loc["simclr", "by_pretraining"]) and summary.loc["simclr", "verdict"] != ""
    # neither fba nor random init read a pretraining: their pairs are plain pairs
    assert summary.loc["random-init", "by_pretraining"] == ""
    pairwise = pd.read_csv(tmp_path / "cmp" / "results_pairwise.csv", keep_default_na=False)
    assert pairwise["by_pretraining"].map(_listed).tolist() == [True]  # simclr against random init


def test_a_rerun_reuses_the_rows_and_a_changed_recipe_is_refused(
    tiny_tiles: Path, tmp_path: Path, trainings: Trainings
) -> None:
    out = tmp_path / "cmp"
    _compare(tiny_tiles, out, trainings)
    trained = len(trainings.semi)

    again = _compare(tiny_tiles, out, trainings)
    assert set(again["status"]) == {"ok"} and len(trainings.semi) == trained  # nothing trained again

    changed = _compare(tiny_tiles, out, trainings, "method.contrast_weight=0.5")
    fba = changed[changed["recipe"] == "fba"]
    assert fba["status"].str.contains("holds a run of a different recipe").all()
    assert fba["status"].str.contains("method.contrast_weight").all()
    assert len(trainings.semi) == trained
    # the recorded recipe is kept as it was
    assert yaml.safe_load((out / "pretrain" / "fba" / "config.yaml").read_text())["method"]["contrast_weight"] == 1.0


def test_an_evaluation_fba_cannot_serve_is_refused_before_any_work(
    tiny_tiles: Path, tmp_path: Path, trainings: Trainings
) -> None:
    out = tmp_path / "cmp"
    settings = CompareOptions(recipes=PAIR, out=out, protocol="frozen", overrides=[f"data.tiles={tiny_tiles}"])
    with pytest.raises(GeoclError) as error:
        run_compare(settings, pretrain_fn=_no_pretraining, echo=None)
    assert str(error.value).startswith(f"{PAIR[0]}: method 'fba' pretrains no encoder")
    assert "'frozen'" in str(error.value)
    assert not out.exists() and not trainings.semi


@pytest.mark.slow  # two tiny Lightning trainings with validation and test (~20 s of CPU)
def test_fba_against_supervised_only_end_to_end_on_the_embedded_scene(tiny_tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    settings = CompareOptions(
        recipes=PAIR,
        label_fractions=[0.2],
        seeds=1,
        subset_seeds=1,
        baseline="fba-supervised",
        out=out,
        overrides=[
            f"data.tiles={tiny_tiles}",
            "encoder.name=test_resnet",
            "method.labelled_bs=2",
            "method.decoder_channels=[16,8,8,8,8]",
            "method.embedding_dim=16",
        ],
        finetune={
            "max_epochs": 1,
            "steps_per_epoch": 2,
            "val_every": 1,
            "batch_size": 4,
            "crop": 32,
            "accelerator": "cpu",
            "progress": False,
        },
    )
    results = run_compare(settings, pretrain_fn=_no_pretraining, echo=None)

    assert set(results["status"]) == {"ok"}, results["status"].tolist()
    assert list(results["recipe"]) == ["fba", "fba-supervised"]
    assert results["miou"].between(0, 1).all()
    fba = json.loads((out / "finetune" / "fba-f0.2-l0-s0" / "metrics.json").read_text())
    base = json.loads((out / "finetune" / "fba-supervised-f0.2-l0-s0" / "metrics.json").read_text())
    assert fba["train_tiles"] == base["train_tiles"] > 0  # the same labelled tiles
    assert fba["unlabelled_tiles"] > 0 and base["unlabelled_tiles"] == 0
    assert fba["decoders"] == 3 and base["decoders"] == 1 and base["supervised_only"] is True
    assert (out / "results_paired.png").exists()
