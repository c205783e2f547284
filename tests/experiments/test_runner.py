"""`geocl compare` with fake pretrain, finetune and evaluation functions: rows, table, failures, reuse.

Segmentation and natural-image recipes take the same path: compare picks the
evaluation registered for their ``data.format``; the fakes only replace the functions
those evaluations call (see :func:`_compare`).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from geocl.errors import GeoclError
from geocl.evaluation import FrozenLinearProbe, KnnProbe, SegmentationFinetune
from geocl.experiments import CompareOptions, describe_failures, results_columns, run_compare
from geocl.recipes import register_method_config, save_recipe
from geocl.recipes.errors import validation_error
from geocl.recipes.options import FinetuneCommand


@dataclass
class _StandInConfig:
    """Parameters of a stand-in method, so recipes load without importing geocl.methods
    (which pulls in Lightning and would take most of this file's time budget)."""

    temperature: float = 0.5
    hidden_dim: int = 512
    output_dim: int = 128


register_method_config("compare-stand-in", _StandInConfig)

#: mIoU = base of the encoder + label fraction + offset of the seed.
BASE = {"alpha": 0.3, "gamma": 0.2, None: 0.1}
OFFSET = [0.0, 0.02, 0.07]  # mean 0.03, sample std sqrt(0.0013) = 0.036 (ddof=0 would give 0.029)
FRACTIONS = [0.01, 0.2]
#: results.csv columns of tile-set recipes: today's columns plus the evaluation's name.
COLUMNS = [
    "recipe",
    "method",
    "evaluation",
    "pretrain_steps",
    "label_fraction",
    "subset_seed",
    "seed",
    "miou",
    "status",
    "seconds",
    "checkpoint",
    "few_test_pixels",
]


def _recipe(folder: Path, stem: str, name: str) -> Path:
    """A tiny recipe shaped like recipes/simclr.yaml (the fakes never read the tiles)."""
    recipe = {
        "name": name,
        "out": "runs/ignored",  # compare sets out itself
        "seed": 0,
        "data": {"tiles": str(folder / "tiles"), "split": "train", "batch_size": 8, "num_workers": 0, "view_size": 32},
        "encoder": {"name": "resnet18", "pretrained": False},
        "method": {"name": "compare-stand-in", "temperature": 0.5, "hidden_dim": 32, "output_dim": 16},
        "augment": {"scale": [0.2, 1.0]},
        "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 1.0e-6},
        "scheduler": {"name": "cosine", "warmup_epochs": 0},
        "trainer": {"max_epochs": 2, "devices": 1, "accelerator": "cpu", "log_every_n_steps": 1},
    }
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


class Fakes:
    """Pretrain, finetune and evaluation stand-ins that leave the files the real ones leave, and count calls.

    The evaluation stand-in: kNN = base of the encoder + 0.01 x seed, probe = kNN + 0.1.
    """

    def __init__(self, out: Path, failing: str = "beta") -> None:
        self.out = out
        self.failing = failing
        self.pretrained: list[tuple[str, bool]] = []
        self.finetuned: list[dict[str, Any]] = []
        self.evaluated: list[dict[str, Any]] = []
        self.csv_rows_seen: list[int] = []

    def pretrain(self, recipe: Any, resume: bool = False) -> SimpleNamespace:
        self.pretrained.append((str(recipe.name), resume))
        if recipe.name == self.failing:
            raise RuntimeError("boom")
        out = Path(recipe.out)
        save_recipe(recipe, out / "config.yaml")
        checkpoint = out / "checkpoints" / "last.ckpt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(str(recipe.name))  # lets the finetune fake tell encoders apart
        (out / "metrics.json").write_text(json.dumps({"final_loss": 1.0}))
        return SimpleNamespace(checkpoint=checkpoint, out=out)

    def finetune(
        self,
        *,
        tiles: Path,
        encoder_checkpoint: Path | None,
        encoder: str,
        label_fraction: float,
        seed: int,
        out: Path,
        **extra: Any,
    ) -> SimpleNamespace:
        csv = self.out / "results.csv"
        self.csv_rows_seen.append(len(pd.read_csv(csv)) if csv.exists() else 0)
        self.finetuned.append(
            {
                "tiles": tiles,
                "encoder_checkpoint": encoder_checkpoint,
                "encoder": encoder,
                "label_fraction": label_fraction,
                "seed": seed,
                "out": out,
                **extra,
            }
        )
        # like run_finetune: a folder holding a run is refused, never mixed
        if (out / "metrics.json").exists() or list(out.glob("checkpoints/*.ckpt")):
            raise GeoclError("holds a finetuning run", path=out, key="out")
        source = encoder_checkpoint.read_text() if encoder_checkpoint is not None else None
        miou = BASE[source] + label_fraction + OFFSET[seed]
        checkpoint = out / "checkpoints" / "best.ckpt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(f"{source} {label_fraction} {seed}")
        (out / "metrics.json").write_text(json.dumps({"miou": miou, "checkpoint": str(checkpoint), "seconds": 2.5}))
        return SimpleNamespace(miou=miou, checkpoint=checkpoint)

    def evaluate(self, checkpoint: Path | None, data: str, format: str, **kwargs: Any) -> SimpleNamespace:
        self.evaluated.append({"checkpoint": checkpoint, "data": data, "format": format, **kwargs})
        source = checkpoint.read_text() if checkpoint is not None else None
        knn = BASE[source] + 0.01 * kwargs["seed"]
        out = kwargs["out"]
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps({"knn_top1": knn, "probe_top1": knn + 0.1, "seconds": 1.0}))
        return SimpleNamespace(knn_top1=knn, probe_top1=knn + 0.1)


def _compare(
    options: CompareOptions, fakes: Fakes, finetune: Callable[..., Any] | None = None, **kwargs: Any
) -> pd.DataFrame:
    """run_compare as the CLI calls it, the registered evaluations calling the fakes."""
    finetune_fn = finetune or fakes.finetune
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            SegmentationFinetune, "from_options", classmethod(lambda cls, o: cls(o.finetune, finetune_fn=finetune_fn))
        )
        patch.setattr(KnnProbe, "from_options", classmethod(lambda cls, o: cls(o.evaluate, evaluate_fn=fakes.evaluate)))
        return run_compare(options, pretrain_fn=fakes.pretrain, **kwargs)


@pytest.fixture
def recipes(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "recipes"
    folder.mkdir()
    return [_recipe(folder, "a", "alpha"), _recipe(folder, "b", "beta")]


def test_rows_table_plot_and_a_failing_recipe(tmp_path: Path, recipes: list[Path]) -> None:
    out = tmp_path / "cmp"
    fakes = Fakes(out)
    printed: list[str] = []
    options = CompareOptions(
        recipes=recipes,
        label_fractions=FRACTIONS,
        seeds=3,
        out=out,
        overrides=["trainer.max_epochs=1"],
        finetune={"max_epochs": 4},
    )
    returned = _compare(options, fakes, echo=printed.append)

    assert {p.name for p in out.iterdir()} >= {"results.csv", "results.md", "results.png"}
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == COLUMNS == results_columns(SegmentationFinetune)
    assert set(results["evaluation"]) == {"finetune"}
    pd.testing.assert_frame_equal(results, returned)

    # recipes (incl. random-init) x fractions x seeds, in that order
    expected_keys = [(r, f, s) for r in ("alpha", "beta", "random-init") for f in FRACTIONS for s in range(3)]
    assert list(zip(results["recipe"], results["label_fraction"], results["seed"], strict=False)) == expected_keys
    alpha = results[results["recipe"] == "alpha"]
    assert alpha["miou"].tolist() == pytest.approx([0.3 + f + OFFSET[s] for f in FRACTIONS for s in range(3)])
    assert set(alpha["status"]) == {"ok"} and set(alpha["method"]) == {"compare-stand-in"}
    assert alpha["checkpoint"].str.endswith("best.ckpt").all()
    random = results[results["recipe"] == "random-init"]
    assert random["miou"].tolist() == pytest.approx([0.1 + f + OFFSET[s] for f in FRACTIONS for s in range(3)])
    assert set(random["method"]) == {"none"}
    beta = results[results["recipe"] == "beta"]
    assert set(beta["status"]) == {"failed: RuntimeError: boom"} and beta["miou"].isna().all()

    # what the finetune function was given
    assert fakes.pretrained == [("alpha", False), ("beta", False)]
    assert len(fakes.finetuned) == 12  # alpha + random-init; none for the failed recipe
    first = fakes.finetuned[0]
    assert first["encoder_checkpoint"] == out / "pretrain" / "a" / "checkpoints" / "last.ckpt"
    assert first["out"] == out / "finetune" / "alpha-f0.01-s0"
    assert first["tiles"] == tmp_path / "recipes" / "tiles" and first["max_epochs"] == 4
    last = fakes.finetuned[-1]
    assert last["encoder_checkpoint"] is None and last["encoder"] == "resnet18"
    assert last["out"] == out / "finetune" / "random-init-f0.2-s2"
    # overrides reached the recipe; compare chose the run folder
    saved = yaml.safe_load((out / "pretrain" / "a" / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 1 and saved["out"] == str(out / "pretrain" / "a")
    # the CSV was rewritten after every row: alpha's 6 rows, then beta's 6 failed ones
    assert fakes.csv_rows_seen == [0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17]

    # table: means and sample stds computed by hand (mean offset 0.03, std 0.036)
    md = (out / "results.md").read_text()
    lines = md.splitlines()
    assert lines[0].startswith("Each recipe was pretrained once")  # what the intervals leave out
    assert lines[2] == "| recipe | 0.01 | 0.2 | n |"
    assert "| alpha | 0.340 ± 0.036 | 0.530 ± 0.036 | 3 |" in lines
    assert "| beta | failed | failed | 0 |" in lines
    assert "| random-init | 0.140 ± 0.036 | 0.330 ± 0.036 | 3 |" in lines
    assert "- beta: RuntimeError: boom" in lines
    assert md in printed[-1]  # the table is printed at the end
    # the one line a command shows before exiting non-zero
    assert (
        describe_failures(returned, out)
        == f"6 of 18 runs failed: beta (6 of 6); the reasons are in {out / 'results.md'}"
    )


def test_second_run_reuses_pretraining_and_finetunes(tmp_path: Path, recipes: list[Path]) -> None:
    out = tmp_path / "cmp"
    options = CompareOptions(recipes=recipes[:1], label_fractions=FRACTIONS, seeds=2, out=out)
    first = _compare(options, Fakes(out), echo=None)

    again = Fakes(out)
    second = _compare(options, again, echo=None)
    assert again.pretrained == [] and again.finetuned == []
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), second.drop(columns="seconds"))
    assert set(second["seconds"]) == {2.5}  # reused rows report the original run's time
    assert describe_failures(second, out) is None

    # an interrupted compare: one finetune never finished (a checkpoint, no metrics.json)
    # -> only that one runs again, in a fresh folder; the leftovers are moved aside
    (out / "finetune" / "alpha-f0.2-s1" / "metrics.json").unlink()
    resumed = Fakes(out)
    printed: list[str] = []
    third = _compare(options, resumed, echo=printed.append)
    assert [call["out"].name for call in resumed.finetuned] == ["alpha-f0.2-s1"]
    assert third["miou"].tolist() == pytest.approx(first["miou"].tolist())
    stale = out / "finetune" / "alpha-f0.2-s1.stale-1"
    assert sorted(p.name for p in stale.rglob("*")) == ["best.ckpt", "checkpoints", "row.json"]
    assert any(
        "held an earlier run (it left no complete result); moved it to alpha-f0.2-s1.stale-1" in line
        for line in printed
    )


def test_fresh_pretraining_redoes_its_finetunes_and_interrupted_pretraining_resumes(
    tmp_path: Path, recipes: list[Path]
) -> None:
    out = tmp_path / "cmp"
    options = CompareOptions(recipes=recipes[:1], label_fractions=[0.5], seeds=1, out=out)
    _compare(options, Fakes(out), echo=None)
    # pretraining killed before it finished: checkpoint and config there, no metrics.json
    (out / "pretrain" / "a" / "metrics.json").unlink()
    old = out / "finetune" / "alpha-f0.5-s0"
    before = {path.name: path.read_bytes() for path in old.rglob("*") if path.is_file()}
    fakes = Fakes(out)
    printed: list[str] = []
    _compare(options, fakes, echo=printed.append)
    assert fakes.pretrained == [("alpha", True)]
    # the old alpha finetune described the old encoder; random-init's stays valid
    assert [call["out"].name for call in fakes.finetuned] == ["alpha-f0.5-s0"]
    # redone in an empty folder (the fake, like run_finetune, refuses a folder holding a run);
    # the old run is moved aside byte for byte, and the move is said
    stale = out / "finetune" / "alpha-f0.5-s0.stale-1"
    assert {path.name: path.read_bytes() for path in stale.rglob("*") if path.is_file()} == before
    assert set(before) == {"metrics.json", "best.ckpt", "row.json"}
    assert json.loads((old / "metrics.json").read_text())["miou"] == pytest.approx(0.3 + 0.5)
    assert (
        f"  {old} held an earlier run (its encoder was pretrained again); moved it to alpha-f0.5-s0.stale-1" in printed
    )
    # once more: the next stale folder takes the next number, nothing is overwritten
    (out / "pretrain" / "a" / "metrics.json").unlink()
    _compare(options, Fakes(out), echo=None)
    assert (out / "finetune" / "alpha-f0.5-s0.stale-2" / "metrics.json").exists()
    assert {path.name: path.read_bytes() for path in stale.rglob("*") if path.is_file()} == before


def test_finished_run_of_another_recipe_is_reported_not_overwritten(tmp_path: Path, recipes: list[Path]) -> None:
    out = tmp_path / "cmp"
    options = CompareOptions(recipes=recipes[:1], label_fractions=[0.5], seeds=1, out=out)
    _compare(options, Fakes(out), echo=None)
    changed = CompareOptions(recipes=recipes[:1], label_fractions=[0.5], seeds=1, out=out, overrides=["seed=7"])
    fakes = Fakes(out)
    results = _compare(changed, fakes, echo=None)
    assert fakes.pretrained == []
    status = results.set_index("recipe").loc["alpha", "status"]
    assert status.startswith("failed: ") and "config.yaml differs in seed)" in status
    assert "another out" in status and "--out" not in status
    assert (
        describe_failures(results, out)
        == f"1 of 2 runs failed: alpha (1 of 1); the reasons are in {out / 'results.md'}"
    )
    assert results.set_index("recipe").loc["random-init", "status"] == "ok"


def test_a_failing_finetune_fails_its_row_only(tmp_path: Path, recipes: list[Path]) -> None:
    out = tmp_path / "cmp"
    fakes = Fakes(out)
    real = fakes.finetune

    def flaky(**kwargs: Any) -> SimpleNamespace:
        if kwargs["seed"] == 1 and kwargs["encoder_checkpoint"] is not None:
            raise ValueError("bad\nbatch")
        return real(**kwargs)

    options = CompareOptions(recipes=recipes[:1], label_fractions=[0.5], seeds=2, out=out)
    results = _compare(options, fakes, finetune=flaky, echo=None)
    assert results["status"].tolist() == ["ok", "failed: ValueError: bad batch", "ok", "ok"]
    assert "| alpha | 0.800 ± – (1 failed) | 1 |" in (out / "results.md").read_text()
    assert (
        describe_failures(results, out)
        == f"1 of 4 runs failed: alpha (1 of 2); the reasons are in {out / 'results.md'}"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label_fractions": [0.0]}, "(0, 1]"),
        ({"seeds": 0}, "at least 1"),
        ({"finetune": {"seed": 3}}, "finetune.seed: unknown key"),  # compare sets the seed per row
        ({"recipes": []}, "must not be empty"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path: Path, recipes: list[Path], change: dict, message: str) -> None:
    # The options model checks its values when it is built, so nothing can start.
    with pytest.raises(ValidationError) as caught:
        CompareOptions(
            **{"recipes": recipes[:1], "label_fractions": [0.5], "seeds": 1, "out": tmp_path / "cmp", **change}
        )
    assert message in str(validation_error(caught.value, model=CompareOptions))


def test_finetune_options_that_set_what_compare_sets_fail_before_any_work(tmp_path: Path, recipes: list[Path]) -> None:
    # A finetune command's options carry a seed; compare sets the seed per row.
    command = FinetuneCommand(tiles=tmp_path / "tiles", out=tmp_path / "ft", seed=3, max_epochs=2)
    options = CompareOptions(
        recipes=recipes[:1], label_fractions=[0.5], seeds=1, out=tmp_path / "cmp", finetune=command
    )
    fakes = Fakes(tmp_path / "cmp")
    with pytest.raises(GeoclError, match=re.escape("must not set out, seed, tiles")):
        _compare(options, fakes, echo=None)
    assert fakes.pretrained == [] and not (tmp_path / "cmp").exists()


def test_clashing_names_and_stems_fail_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    one = _recipe(tmp_path / "x", "a", "same")
    two = _recipe(tmp_path, "b", "same")
    fakes = Fakes(tmp_path / "cmp")
    with pytest.raises(GeoclError, match="distinct names"):
        _compare(CompareOptions(recipes=[one, two], label_fractions=[0.5], seeds=1, out=tmp_path / "cmp"), fakes)
    three = _recipe(tmp_path, "a", "other")  # same stem as `one`
    with pytest.raises(GeoclError, match="same file name"):
        _compare(CompareOptions(recipes=[one, three], label_fractions=[0.5], seeds=1, out=tmp_path / "cmp"), fakes)
    reserved = _recipe(tmp_path, "c", "random-init")
    with pytest.raises(GeoclError, match="reserved"):
        _compare(CompareOptions(recipes=[reserved], label_fractions=[0.5], seeds=1, out=tmp_path / "cmp"), fakes)
    assert fakes.pretrained == []


# ------------------------------------------------------------------ natural images


def _natural_recipe(folder: Path, stem: str, name: str) -> Path:
    path = _recipe(folder, stem, name)
    recipe = yaml.safe_load(path.read_text())
    recipe["data"] = {
        "format": "cifar",
        "path": str(folder / "cifar"),
        "batch_size": 8,
        "num_workers": 0,
        "view_size": 32,
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _natural_compare(options: CompareOptions, fakes: Fakes) -> pd.DataFrame:
    return _compare(options, fakes, echo=None)


def test_natural_recipes_give_knn_and_probe_rows_table_and_plot(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    paths = [
        _natural_recipe(folder, "a", "alpha"),
        _natural_recipe(folder, "b", "beta"),
        _natural_recipe(folder, "g", "gamma"),
    ]
    out = tmp_path / "cmp"
    fakes = Fakes(out)
    options = CompareOptions(recipes=paths, label_fractions=FRACTIONS, seeds=2, out=out, evaluate={"k": 7})
    results = _natural_compare(options, fakes)
    natural_columns = [
        "recipe",
        "method",
        "evaluation",
        "pretrain_steps",
        "label_fraction",
        "subset_seed",
        "seed",
        "knn_top1",
        "probe_top1",
    ]
    assert list(results.columns) == [*natural_columns, "status", "seconds", "checkpoint", "few_test_pixels"]
    assert not fakes.finetuned
    # one subset, all labels, whatever the fractions; one folder per (recipe, seed)
    assert set(results["label_fraction"]) == {1.0} and set(results["evaluation"]) == {"knn-probe"}
    assert (out / "evaluate" / "alpha-s1" / "evaluation.json").exists()
    assert list(results["recipe"]) == ["alpha", "alpha", "beta", "beta", "gamma", "gamma", "random-init", "random-init"]
    alpha = results[results["recipe"] == "alpha"]
    assert alpha["knn_top1"].tolist() == pytest.approx([0.3, 0.31]) and alpha["probe_top1"].tolist() == pytest.approx(
        [0.4, 0.41]
    )
    assert (results[results["recipe"] == "beta"]["status"] == "failed: RuntimeError: boom").all()
    baseline = [call for call in fakes.evaluated if call["checkpoint"] is None]
    assert [call["seed"] for call in baseline] == [0, 1] and all(
        call["k"] == 7 and call["format"] == "cifar" for call in fakes.evaluated
    )
    assert pd.read_csv(out / "results.csv")["knn_top1"].notna().sum() == 6
    table = (out / "results.md").read_text()
    assert "| recipe | kNN top-1 | linear-probe top-1 | n |" in table and "mIoU" not in table
    # alpha: kNN mean 0.305, sample std of (0.30, 0.31) = 0.00707
    assert "| alpha | 0.305 ± 0.007 | 0.405 ± 0.007 | 2 |" in table and "| beta | failed | failed | 0 |" in table
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # A second run reuses the finished pretraining and evaluations.
    again = Fakes(out)
    second = _natural_compare(options, again)
    assert again.evaluated == [] and [name for name, _ in again.pretrained] == ["beta"]
    assert second[second["recipe"] == "alpha"]["knn_top1"].tolist() == pytest.approx([0.3, 0.31])


def test_mixing_tile_and_natural_recipes_fails_before_any_work(tmp_path: Path, recipes: list[Path]) -> None:
    natural = _natural_recipe(tmp_path / "recipes", "n", "natural")
    fakes = Fakes(tmp_path / "cmp")
    options = CompareOptions(recipes=[recipes[0], natural], label_fractions=FRACTIONS, seeds=1, out=tmp_path / "cmp")
    with pytest.raises(GeoclError, match="compare them separately") as caught:
        _natural_compare(options, fakes)
    assert caught.value.key == "recipes" and not fakes.pretrained and not (tmp_path / "cmp").exists()


def test_subset_seeds_pair_every_recipe_on_the_same_subsets_and_seeds(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    recipes = [_recipe(folder, "a", "alpha"), _recipe(folder, "g", "gamma")]
    out = tmp_path / "cmp"
    fakes = Fakes(out, failing="none")
    options = CompareOptions(recipes=recipes, label_fractions=[0.2], seeds=2, subset_seeds=3, out=out, baseline="gamma")
    printed: list[str] = []
    results = _compare(options, fakes, echo=printed.append)
    # each row's line names its label subset as well as its seed
    assert any(line.startswith("[") and " f=0.2 subset=2 seed=1: " in line for line in printed)

    # 3 subsets x 2 seeds for alpha, gamma and random-init; the subset seed reaches the finetune apart from the seed
    assert len(fakes.finetuned) == 18
    assert sorted({(call["subset_seed"], call["seed"]) for call in fakes.finetuned}) == [
        (subset, seed) for subset in range(3) for seed in range(2)
    ]
    assert (out / "finetune" / "alpha-f0.2-l2-s1" / "metrics.json").exists()
    assert sorted(results["subset_seed"].unique()) == [0, 1, 2]
    # alpha - gamma = 0.3 - 0.2 on every pair: +0.100 with a point interval, alpha always wins
    md = (out / "results.md").read_text()
    assert "paired difference to gamma" in md
    assert "| alpha | 0.2 |" in md and "+0.100 [+0.100, +0.100] | 6 / 0 of 6 | better |" in md
    assert "| gamma | 0.2 |" in md and "(baseline)" in md


def test_an_unknown_baseline_is_refused_before_any_work(tmp_path: Path, recipes: list[Path]) -> None:
    fakes = Fakes(tmp_path / "cmp")
    with pytest.raises(GeoclError, match="'omega' is none of the compared recipes") as caught:
        _compare(CompareOptions(recipes=recipes, out=tmp_path / "cmp", baseline="omega"), fakes, echo=None)
    assert caught.value.key == "baseline" and not fakes.pretrained


def test_results_name_their_machine_and_deterministic_mode(tmp_path: Path, recipes: list[Path]) -> None:
    import torch

    out = tmp_path / "cmp"
    fakes = Fakes(out)
    before = torch.are_deterministic_algorithms_enabled()
    during: list[bool] = []
    pretrain = fakes.pretrain

    def recording(recipe: Any, resume: bool = False) -> SimpleNamespace:
        during.append(torch.are_deterministic_algorithms_enabled())
        return pretrain(recipe, resume)

    fakes.pretrain = recording
    try:
        _compare(
            CompareOptions(recipes=recipes[:1], label_fractions=[0.2], seeds=1, out=out, deterministic=True),
            fakes,
            echo=None,
        )
        # on while the runs ran, as it was after (issue 24: state is restored)
        assert during == [True] and torch.are_deterministic_algorithms_enabled() is before
    finally:
        torch.use_deterministic_algorithms(before)
    environment = json.loads((out / "environment.json").read_text())
    assert environment["deterministic"] is True and environment["torch_threads"] >= 1
    assert environment["cpu"] and environment["versions"]["torch"]
    assert environment["versions"]["scipy"]
    md = (out / "results.md").read_text()
    assert f"Measured on {environment['cpu']}" in md and "deterministic algorithms" in md


def test_frozen_protocol_probes_with_the_linear_head_on_the_same_grid(tmp_path: Path, recipes: list[Path]) -> None:
    out = tmp_path / "cmp"
    fakes = Fakes(out)
    options = CompareOptions(recipes=recipes[:1], label_fractions=[0.2], seeds=2, out=out, protocol="frozen")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            FrozenLinearProbe, "from_options", classmethod(lambda cls, o: cls(o.finetune, finetune_fn=fakes.finetune))
        )
        results = run_compare(options, pretrain_fn=fakes.pretrain, echo=None)
    assert set(results["evaluation"]) == {"frozen"} and len(fakes.finetuned) == 4
    assert all(call["arch"] == "linear" and call["freeze_encoder"] for call in fakes.finetuned)
    assert (out / "frozen" / "alpha-f0.2-s1" / "metrics.json").exists()
    assert "dense linear probe on the frozen encoder" in (out / "results.md").read_text()


def test_a_step_budget_gives_every_recipe_the_same_optimizer_steps(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    recipes = [_recipe(folder, "a", "alpha"), _recipe(folder, "g", "gamma")]
    out = tmp_path / "cmp"
    fakes = Fakes(out, failing="none")
    budgets: list[tuple[int, int]] = []
    pretrain = fakes.pretrain

    def recording(recipe: Any, resume: bool = False) -> SimpleNamespace:
        budgets.append((recipe.trainer.max_steps, recipe.trainer.max_epochs))
        done = pretrain(recipe, resume)
        (Path(recipe.out) / "metrics.json").write_text(
            json.dumps(
                {
                    "global_step": recipe.trainer.max_steps,
                    "samples_seen": recipe.trainer.max_steps * 8,
                    "seconds": 1.5,
                    "final_loss": 1.0,
                }
            )
        )
        return done

    fakes.pretrain = recording
    _compare(
        CompareOptions(recipes=recipes, label_fractions=[0.2], seeds=1, out=out, pretrain_steps=7), fakes, echo=None
    )
    assert budgets == [(7, -1), (7, -1)]
    spent = pd.read_csv(out / "pretraining.csv")
    assert spent["recipe"].tolist() == ["alpha", "gamma"] and spent["global_step"].tolist() == [7, 7]
    assert spent["samples_seen"].tolist() == [56, 56]


@pytest.fixture
def two_working(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "recipes"
    folder.mkdir()
    return [_recipe(folder, "a", "alpha"), _recipe(folder, "g", "gamma")]


def test_protocol_both_puts_finetune_and_frozen_rows_in_one_report(tmp_path: Path, two_working: list[Path]) -> None:
    recipes = two_working
    out = tmp_path / "cmp"
    fakes = Fakes(out, failing="none")
    options = CompareOptions(recipes=recipes, label_fractions=[0.2], seeds=2, out=out, protocol="both")
    results = _compare(options, fakes, echo=None)
    # (2 recipes + random-init) x 2 seeds x 2 protocols, each run in its protocol's folder
    assert len(results) == 12 and results.groupby("evaluation").size().to_dict() == {"finetune": 6, "frozen": 6}
    frozen_calls = [call for call in fakes.finetuned if call.get("arch") == "linear"]
    assert len(frozen_calls) == 6 and all(call["freeze_encoder"] for call in frozen_calls)
    assert (out / "finetune" / "alpha-f0.2-s1" / "metrics.json").exists()
    assert (out / "frozen" / "alpha-f0.2-s1" / "metrics.json").exists()
    md = (out / "results.md").read_text()
    assert "## finetune protocol" in md and "## frozen protocol" in md
    summary = pd.read_csv(out / "results_summary.csv")
    assert set(summary["evaluation"]) == {"finetune", "frozen"}
    # the fake scores gamma 0.1 below alpha on every (subset, seed): the paired difference is exact
    gamma = summary[(summary["recipe"] == "gamma") & (summary["evaluation"] == "frozen")].iloc[0]
    assert gamma["pairs"] == 2 and gamma["delta"] == pytest.approx(BASE["gamma"] - BASE["alpha"])
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_a_budget_sweep_pretrains_each_recipe_at_every_budget(tmp_path: Path, two_working: list[Path]) -> None:
    recipes = two_working
    out = tmp_path / "cmp"
    fakes = Fakes(out, failing="none")
    seen: list[tuple[str, int, str]] = []
    pretrain = fakes.pretrain

    def recording(recipe: Any, resume: bool = False) -> SimpleNamespace:
        seen.append((str(recipe.name), recipe.trainer.max_steps, Path(recipe.out).name))
        done = pretrain(recipe, resume)
        (Path(recipe.out) / "metrics.json").write_text(json.dumps({"global_step": recipe.trainer.max_steps}))
        return done

    fakes.pretrain = recording
    options = CompareOptions(recipes=recipes, label_fractions=[0.2], seeds=2, out=out, pretrain_steps=[9, 3])
    results = _compare(options, fakes, echo=None)
    assert seen == [
        ("alpha", 3, "a-3steps"),
        ("gamma", 3, "g-3steps"),
        ("alpha", 9, "a-9steps"),
        ("gamma", 9, "g-9steps"),
    ]
    trained = results[results["recipe"] != "random-init"]
    assert trained.groupby("pretrain_steps").size().to_dict() == {3: 4, 9: 4}
    assert results[results["recipe"] == "random-init"]["pretrain_steps"].isna().all()
    assert len(results[results["recipe"] == "random-init"]) == 2  # evaluated once, shown in every budget
    assert (out / "finetune" / "alpha-3steps-f0.2-s0").is_dir() and (out / "finetune" / "alpha-9steps-f0.2-s0").is_dir()
    spent = pd.read_csv(out / "pretraining.csv")
    assert spent["pretrain_steps"].tolist() == [3, 3, 9, 9] and spent["global_step"].tolist() == [3, 3, 9, 9]
    md = (out / "results.md").read_text()
    assert "## finetune protocol, 3 pretraining steps" in md and "## finetune protocol, 9 pretraining steps" in md
    assert md.count("| random-init |") >= 2
    assert (out / "results_budget.png").read_bytes()[:4] == b"\x89PNG"
    # the fake scores an encoder by its recipe's name alone: 3 -> 9 steps gains exactly nothing
    gains = pd.read_csv(out / "results_budget_gains.csv")
    assert gains[["recipe", "from_steps", "to_steps", "delta", "pairs"]].values.tolist() == [
        ["alpha", 3, 9, 0.0, 2],
        ["gamma", 3, 9, 0.0, 2],
    ]
    assert "## finetune protocol, gain from each budget to the next" in md
    assert "Each recipe was pretrained once: the intervals cover label subsets and seeds" in md


def test_pairs_besides_the_baseline_are_reported_and_a_rerun_drops_what_it_no_longer_has(
    tmp_path: Path, two_working: list[Path]
) -> None:
    out = tmp_path / "cmp"
    options = CompareOptions(recipes=two_working, label_fractions=[0.2], seeds=2, out=out, pretrain_steps=[9, 3])
    _compare(options, Fakes(out, failing="none"), echo=None)
    # baseline alpha (the first recipe): the one other pair is gamma against random init, in each budget
    pairwise = pd.read_csv(out / "results_pairwise.csv")
    assert pairwise[["pretrain_steps", "recipe", "versus", "pairs"]].values.tolist() == [
        [3, "gamma", "random-init", 2],
        [9, "gamma", "random-init", 2],
    ]
    assert pairwise["delta"].tolist() == pytest.approx([BASE["gamma"] - BASE[None]] * 2)
    md = (out / "results.md").read_text()
    assert "Between the other recipes" in md and "| gamma | random-init | 0.2 |" in md
    # the same comparison again, gamma's pretrainings redone and failing: its rows have no
    # pairs any more, and the earlier pairs are not left beside the new table
    for folder in (out / "pretrain").glob("g-*"):
        shutil.rmtree(folder)
    _compare(options, Fakes(out, failing="gamma"), echo=None)
    assert not (out / "report.stale-1").exists()  # the same comparison: its report is rewritten
    assert not (out / "results_pairwise.csv").exists()
    assert "Between the other recipes" not in (out / "results.md").read_text()
    # with random init as the baseline the pair is alpha against gamma
    one = CompareOptions(
        recipes=two_working, label_fractions=[0.2], seeds=2, out=out, pretrain_steps=[9], baseline="random-init"
    )
    _compare(one, Fakes(out, failing="none"), echo=None)
    pairwise = pd.read_csv(out / "results_pairwise.csv")
    assert pairwise[["recipe", "versus"]].values.tolist() == [["alpha", "gamma"]]
    assert pairwise["delta"].tolist() == pytest.approx([BASE["alpha"] - BASE["gamma"]])


def test_a_rerun_over_other_recipes_or_budgets_keeps_the_earlier_report_aside(
    tmp_path: Path, two_working: list[Path]
) -> None:
    out = tmp_path / "cmp"
    both = CompareOptions(recipes=two_working, label_fractions=[0.2], seeds=2, out=out, pretrain_steps=[9, 3])
    _compare(both, Fakes(out, failing="none"), echo=None)
    before = {name: (out / name).read_bytes() for name in ("results.md", "results.csv", "results_budget.png")}
    said: list[str] = []
    one = CompareOptions(recipes=two_working[:1], label_fractions=[0.2], seeds=2, out=out, pretrain_steps=[9])
    _compare(one, Fakes(out, failing="none"), echo=said.append)
    # the sweep's report, byte for byte, beside the new one, and the line says what changed
    for name, content in before.items():
        assert (out / "report.stale-1" / name).read_bytes() == content
    assert not (out / "results_budget.png").exists()
    moved = next(line for line in said if "held the report of an earlier comparison" in line)
    assert "recipes" in moved and "budgets" in moved and moved.endswith("moved it to report.stale-1")
    # the same options again: nothing moved
    _compare(one, Fakes(out, failing="none"), echo=None)
    assert not (out / "report.stale-2").exists()


def _snapshotting(fakes: Fakes, seen: list[tuple[str, int, list[int]]], skip: int | None = None) -> None:
    """Make the fake pretraining keep a snapshot file at each ``trainer.snapshot_steps`` (but ``skip``)."""
    pretrain = fakes.pretrain

    def snapshotting(recipe: Any, resume: bool = False) -> SimpleNamespace:
        steps = list(recipe.trainer.snapshot_steps)
        seen.append((str(recipe.name), recipe.trainer.max_steps, steps))
        done = pretrain(recipe, resume)
        for step in steps:
            if step != skip:
                path = Path(recipe.out) / "snapshots" / f"step{step}.ckpt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(str(recipe.name))  # the finetune fake scores by the encoder's name
        return done

    fakes.pretrain = snapshotting


def test_snapshots_train_each_recipe_once_and_read_the_shorter_budgets_from_its_snapshots(
    tmp_path: Path, two_working: list[Path]
) -> None:
    out = tmp_path / "cmp"
    fakes = Fakes(out, failing="none")
    seen: list[tuple[str, int, list[int]]] = []
    _snapshotting(fakes, seen)
    options = CompareOptions(
        recipes=two_working, label_fractions=[0.2], seeds=1, out=out, pretrain_steps=[0, 3, 9, 30], snapshots=True
    )
    results = _compare(options, fakes, echo=None)
    assert seen == [("alpha", 30, [3, 9]), ("gamma", 30, [3, 9])]  # one run each, to the largest budget
    used = {
        (call["out"].name, Path(call["encoder_checkpoint"]).name if call["encoder_checkpoint"] else None)
        for call in fakes.finetuned
    }
    assert ("alpha-3steps-f0.2-s0", "step3.ckpt") in used and ("gamma-9steps-f0.2-s0", "step9.ckpt") in used
    assert ("alpha-30steps-f0.2-s0", "last.ckpt") in used
    snapshot = Path(next(c for c in fakes.finetuned if c["out"].name == "alpha-9steps-f0.2-s0")["encoder_checkpoint"])
    assert snapshot == out / "pretrain" / "a-30steps" / "snapshots" / "step9.ckpt"
    trained = results[results["recipe"] != "random-init"]
    assert trained.groupby("pretrain_steps").size().to_dict() == {3: 2, 9: 2, 30: 2}
    assert (trained["status"] == "ok").all()
    # a snapshot's rows are not the finished run's: its record says which step it read
    record = json.loads((out / "finetune" / "alpha-9steps-f0.2-s0" / "row.json").read_text())
    assert record["settings"]["encoder"]["snapshot_step"] == 9

    # the rerun reuses every row; a missing snapshot fails its rows, not the comparison
    calls = len(fakes.finetuned)
    again = _compare(options, fakes, echo=None)
    assert len(fakes.finetuned) == calls and len(seen) == 2
    assert again["miou"].tolist() == pytest.approx(results["miou"].tolist())

    # the final budget alone, without snapshots, is the same run and the same rows
    final = CompareOptions(recipes=two_working, label_fractions=[0.2], seeds=1, out=out, pretrain_steps=[0, 30])
    alone = _compare(final, fakes, echo=None)
    assert len(fakes.finetuned) == calls and len(seen) == 2 and len(alone) == 3


def test_a_missing_snapshot_fails_only_the_rows_of_its_budget(tmp_path: Path, two_working: list[Path]) -> None:
    out = tmp_path / "cmp"
    fakes = Fakes(out, failing="none")
    _snapshotting(fakes, [], skip=3)
    options = CompareOptions(
        recipes=two_working, label_fractions=[0.2], seeds=1, out=out, pretrain_steps=[3, 9], snapshots=True
    )
    results = _compare(options, fakes, echo=None)
    failed = results[results["status"] != "ok"]
    assert set(failed["pretrain_steps"]) == {3} and len(failed) == 2
    assert "snapshots/step3.ckpt is missing" in failed["status"].iloc[0]
    assert (results[results["pretrain_steps"] == 9]["status"] == "ok").all()


def test_pretrain_seeds_pretrain_each_recipe_again_and_each_serves_every_nth_seed(
    tmp_path: Path, two_working: list[Path]
) -> None:
    out = tmp_path / "cmp"
    fakes = Fakes(out, failing="none")
    seen: list[tuple[str, int, list[int]]] = []
    _snapshotting(fakes, seen)
    options = CompareOptions(
        recipes=two_working,
        label_fractions=[0.2],
        seeds=2,
        pretrain_seeds=2,
        out=out,
        pretrain_steps=[0, 3, 9],
        snapshots=True,
    )
    results = _compare(options, fakes, echo=None)
    assert [name for name, _, _ in seen] == ["alpha", "gamma", "alpha", "gamma"]  # each recipe twice, to 9 steps
    for stem, seeds in (("a-9steps", 0), ("a-9steps-p1", 1), ("g-9steps-p1", 1)):
        assert yaml.safe_load((out / "pretrain" / stem / "config.yaml").read_text())["seed"] == seeds
    # seed s reads pretraining s mod 2, at the final budget and on its snapshots alike
    for seed, replica in ((0, "a-9steps"), (1, "a-9steps-p1")):
        for steps, file in ((9, "checkpoints/last.ckpt"), (3, "snapshots/step3.ckpt")):
            call = next(c for c in fakes.finetuned if c["out"].name == f"alpha-{steps}steps-f0.2-s{seed}")
            assert Path(call["encoder_checkpoint"]) == out / "pretrain" / replica / file
    # one row per (recipe, budget, seed), as without replicas: the pairs are unchanged
    trained = results[results["recipe"] != "random-init"]
    assert trained.groupby(["recipe", "pretrain_steps"]).size().to_dict() == {
        ("alpha", 3): 2,
        ("alpha", 9): 2,
        ("gamma", 3): 2,
        ("gamma", 9): 2,
    }
    assert (results["status"] == "ok").all() and len(results[results["recipe"] == "random-init"]) == 2
    record = json.loads((out / "finetune" / "alpha-9steps-f0.2-s1" / "row.json").read_text())
    assert record["settings"]["encoder"]["recipe"]["seed"] == 1  # the row records which pretraining it read
    spent = pd.read_csv(out / "pretraining.csv")
    assert spent[spent["pretrain_steps"] == 9]["seed"].tolist() == [0, 0, 1, 1]
    report = (out / "results.md").read_text()
    assert "Each recipe was pretrained 2 times" in report and "(per pretraining " in report


def test_pretrain_seeds_must_divide_the_seeds(tmp_path: Path, two_working: list[Path]) -> None:
    with pytest.raises(ValidationError) as caught:
        CompareOptions(recipes=two_working, seeds=3, pretrain_seeds=2, out=tmp_path / "cmp")
    line = str(validation_error(caught.value, model=CompareOptions))
    assert "pretrain_seeds" in line and "must divide" in line and "seeds (3)" in line


def _tile_index(tiles: Path, test_pixels: dict[str, int]) -> None:
    """tiles.json and tiles.gpkg of a 4 x 4 grid of 100 m tiles, test tiles on the diagonal."""
    import geopandas as gpd
    import shapely

    tiles.mkdir(parents=True)
    rows = [
        {
            "path": f"images/r{r}_c{c}.tif",
            "split": "test" if r == c else "train",
            "geometry": shapely.box(c * 100, -(r + 1) * 100, (c + 1) * 100, -r * 100),
        }
        for r in range(4)
        for c in range(4)
    ]
    gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32633").to_file(tiles / "tiles.gpkg", layer="tiles")
    (tiles / "tiles.json").write_text(json.dumps({"complete": True, "class_pixels": {"test": test_pixels}}))


def test_per_class_iou_and_thin_test_classes_are_flagged(tmp_path: Path, two_working: list[Path], caplog) -> None:
    recipes = two_working
    _tile_index(tmp_path / "recipes" / "tiles", {"1": 50_000, "2": 120})
    out = tmp_path / "cmp"
    fakes = Fakes(out, failing="none")

    def finetune_with_classes(**kwargs: Any) -> SimpleNamespace:
        done = fakes.finetune(**kwargs)
        record = json.loads((kwargs["out"] / "metrics.json").read_text())
        record.update(classes=[1, 2], iou=[done.miou + 0.1, None])  # class 2 absent: null, as run_finetune writes
        (kwargs["out"] / "metrics.json").write_text(json.dumps(record))
        return done

    printed: list[str] = []
    options = CompareOptions(recipes=recipes, label_fractions=[0.2], seeds=2, out=out, min_test_pixels=1000)
    with caplog.at_level("WARNING"):
        results = _compare(options, fakes, finetune=finetune_with_classes, echo=printed.append)
    assert results["iou_1"].tolist() == pytest.approx((results["miou"] + 0.1).tolist())
    assert results["iou_2"].isna().all()
    assert set(results["few_test_pixels"].astype(str)) == {"2"}
    assert any("class 2 has 120 labelled test pixels" in message for message in caplog.messages)
    stated = next(line for line in printed if line.startswith("test split of"))
    assert (
        "4 of 16 tiles" in stated and "0.04 km²" in stated and "in 2 of 4 quarters" in stated
    )  # the diagonal: top-left and bottom-right
    md = (out / "results.md").read_text()
    assert "| recipe | class 1 | class 2 ⚑ |" in md and "fewer than 1,000 labelled test pixels" in md
    assert md.startswith("test split of")
