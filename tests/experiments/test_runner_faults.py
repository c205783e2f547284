"""`geocl compare` must not give silent wrong results (issue 21), through the command line.

Each case runs ``geocl compare`` as a user does (``geocl.cli.main``), with the
pretraining and the finetuning replaced by fakes that leave the files the real ones
leave: a refusal exits 2 with one line naming the file, flag or key and no traceback,
and leaves every earlier output byte for byte; a rerun gives the right result.

- other finetuning options into the same ``--out``: the rows are redone (the
  pretraining is reused), the old rows and report are kept aside, never mixed in;
- label subsets that are the same labels (fraction 1.0, several subset seeds): one
  subset, no verdict from copies of one run;
- a budget that ends inside a method's own warm-up (GraSS at 3 steps): flagged;
- a learning-rate warm-up longer than the budget (PatchMix at 2 steps): refused before any work;
- a read-only ``--out``: refused before any pretraining;
- a comparison folder moved elsewhere: resumed there, nothing redone;
- budget 0 (issue 22): the random-init row itself, evaluated once, each curve's first point;
  alone, the random-init rows only; never flagged nor checked against a warm-up;
- SIGTERM (issue 24) while a pretraining or a row runs: one "interrupted" line, exit 130, the
  finished rows kept, no failed row recorded; a rerun redoes what was interrupted, and rows
  that failed because a DataLoader worker was killed are run again (the real run: a
  subprocess sent SIGTERM as a cluster's time limit sends it, to the whole process group).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import yaml

import geocl.finetune.train as finetune_module
import geocl.methods  # noqa: F401  (registers the methods the real recipes name)
import geocl.training.pretrain as pretrain_module
from geocl import cli
from geocl.errors import GeoclError
from geocl.recipes import save_recipe
from tests.experiments.test_runner import _recipe

#: mIoU of a fake finetune: the encoder's score (by pretraining name; None: random init) + 0.01 x seed.
SCORES = {"alpha": 0.305, "gamma": 0.300, "simclr": 0.30, "grass": 0.31, "patchmix": 0.29, None: 0.1}


class Runs:
    """Fake run_pretrain and run_finetune that leave the files the real ones leave, and count calls."""

    def __init__(self) -> None:
        self.pretrained: list[str] = []
        self.finetuned: list[dict[str, Any]] = []

    def pretrain(self, recipe: Any, *, resume: bool = False, progress: bool = True) -> SimpleNamespace:
        self.pretrained.append(str(recipe.name))
        out = Path(recipe.out)
        save_recipe(recipe, out / "config.yaml")
        checkpoint = out / "checkpoints" / "last.ckpt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(str(recipe.name))
        (out / "metrics.json").write_text(json.dumps({"global_step": recipe.trainer.max_steps, "final_loss": 1.0}))
        return SimpleNamespace(checkpoint=checkpoint, out=out)

    def finetune(
        self, *, encoder_checkpoint: Path | None, label_fraction: float, seed: int, out: Path, **options: Any
    ) -> SimpleNamespace:
        self.finetuned.append({"out": out, "seed": seed, "label_fraction": label_fraction, **options})
        if (out / "metrics.json").exists():  # like run_finetune: a folder holding a run is refused
            raise GeoclError("holds a finetuning run", path=out, key="out")
        source = encoder_checkpoint.read_text() if encoder_checkpoint is not None else None
        miou = SCORES[source] + 0.01 * seed
        checkpoint = out / "checkpoints" / "best.ckpt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(f"{source} {options.get('arch')} {options.get('lr')}")
        record = {
            "miou": miou,
            "arch": options.get("arch"),
            "lr": options.get("lr"),
            "max_epochs": options.get("max_epochs"),
            "checkpoint": str(checkpoint),
            "seconds": 1.0,
        }
        (out / "metrics.json").write_text(json.dumps(record))
        return SimpleNamespace(miou=miou, checkpoint=checkpoint)


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Runs:
    fakes = Runs()
    monkeypatch.setattr(pretrain_module, "run_pretrain", fakes.pretrain)
    monkeypatch.setattr(finetune_module, "run_finetune", fakes.finetune)
    return fakes


@pytest.fixture
def stand_ins(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "recipes"
    folder.mkdir()
    return [_recipe(folder, "a", "alpha"), _recipe(folder, "g", "gamma")]


def _geocl(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """``geocl <argv>``: exit status, stdout, stderr."""
    code = cli.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _one_error_line(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("geocl compare: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _real_recipe(folder: Path, tiles: Path, stem: str, method: dict[str, Any], **sections: Any) -> Path:
    """A recipe of a real method on the tiny tile set (batch 8; never built: the pretraining is faked)."""
    recipe = {
        "name": stem,
        "out": "ignored",
        "seed": 0,
        "data": {"tiles": str(tiles), "batch_size": 8, "num_workers": 0, "view_size": 32},
        "encoder": {"name": "test_resnet"},
        "method": method,
        "optimizer": {"name": "adamw", "lr": 0.001},
        "scheduler": {"name": "cosine", "warmup_epochs": 0},
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1},
        **sections,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _train_epoch(tiles: Path) -> int:
    """Optimizer steps of one pretraining epoch on the tiny tile set at batch 8."""
    from geocl.data.tile_dataset import TileDataset

    return len(TileDataset(tiles, "train", with_mask=False, progress=False)) // 8


# ------------------------------------------------------------------ case 2


def test_other_finetuning_options_redo_the_rows_and_keep_the_old_ones_aside(
    tmp_path: Path, stand_ins: list[Path], runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    grid = [stand_ins[0], "--label-fractions", "0.5", "--seeds", "2", "--out", out]
    assert _geocl(capsys, "compare", *grid)[0] == 0
    before = _files(out)
    first = pd.read_csv(out / "results.csv")

    runs.pretrained.clear()
    runs.finetuned.clear()
    code, printed, err = _geocl(capsys, "compare", *grid, "--finetune-arch", "deeplabv3plus", "--epochs", "3")
    assert code == 0 and "Traceback" not in err
    assert runs.pretrained == []  # the pretraining did not change: reused
    assert len(runs.finetuned) == 4 and {(call["arch"], call["max_epochs"]) for call in runs.finetuned} == {
        ("deeplabv3plus", 3)
    }
    # every row was made with the new settings, and says so; no old row in the new table
    for folder in ("alpha-f0.5-s0", "alpha-f0.5-s1", "random-init-f0.5-s0", "random-init-f0.5-s1"):
        assert json.loads((out / "finetune" / folder / "metrics.json").read_text())["arch"] == "deeplabv3plus"
    assert len(pd.read_csv(out / "results.csv")) == len(first) == 4
    assert (
        f"  {out / 'finetune' / 'alpha-f0.5-s0'} held an earlier run (made with other settings: "
        "finetune arch unet, now deeplabv3plus; finetune max_epochs 15, now 3); moved it to alpha-f0.5-s0.stale-1"
    ) in printed.splitlines()
    assert f"{out} held the report of an earlier comparison (made with other settings: " in printed
    # nothing already written is lost: the old rows and report lie aside byte for byte
    for name, content in before.items():
        parts = name.split("/")
        if parts[0] == "finetune":
            moved = "/".join([parts[0], f"{parts[1]}.stale-1", *parts[2:]])
        elif parts[0] == "pretrain":
            moved = name
        else:
            moved = f"report.stale-1/{name}"
        assert (out / moved).read_bytes() == content, name

    # the same new options again: everything reused; another learning rate: redone again
    runs.finetuned.clear()
    assert _geocl(capsys, "compare", *grid, "--finetune-arch", "deeplabv3plus", "--epochs", "3")[0] == 0
    assert runs.finetuned == [] and not (out / "report.stale-2").exists()
    code, printed, _ = _geocl(
        capsys, "compare", *grid, "--finetune-arch", "deeplabv3plus", "--epochs", "3", "--finetune-lr", "0.01"
    )
    assert code == 0 and len(runs.finetuned) == 4 and {call["lr"] for call in runs.finetuned} == {0.01}
    assert "made with other settings: finetune lr 0.001, now 0.01)" in printed


# ------------------------------------------------------------------ case 3


def test_identical_label_subsets_are_one_subset_and_give_no_verdict(
    tmp_path: Path, stand_ins: list[Path], runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    code, printed, err = _geocl(
        capsys, "compare", *stand_ins, "--label-fractions", "1.0", "--subset-seeds", "6", "--seeds", "1", "--out", out
    )
    assert code == 0 and "Traceback" not in err
    assert "label fraction 1 keeps every label: its 6 label subsets are one and run once (subset seed 0)" in printed
    # one run per recipe: six copies of one run are one pair, not six
    results = pd.read_csv(out / "results.csv")
    assert results.groupby("recipe").size().to_dict() == {"alpha": 1, "gamma": 1, "random-init": 1}
    assert len(runs.finetuned) == 3
    summary = pd.read_csv(out / "results_summary.csv").set_index("recipe")
    assert summary.loc["gamma", "pairs"] == 1 and summary.loc["gamma", "verdict"] == "too few pairs"
    md = (out / "results.md").read_text()
    assert "| better |" not in md and "| worse |" not in md
    assert "| gamma | 1 | 0.300 [–, –] | 1 | -0.005 [–, –] | 0 / 1 of 1 | too few pairs |" in md


# ------------------------------------------------------------------ case 4


def test_a_budget_inside_a_methods_warm_up_is_flagged_in_the_report(
    tmp_path: Path, tiny_tiles: Path, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "recipes"
    simclr = _real_recipe(folder, tiny_tiles, "simclr", {"name": "simclr"})
    grass = _real_recipe(folder, tiny_tiles, "grass", {"name": "grass", "warmup_epochs": 2})
    out = tmp_path / "cmp"
    code, printed, err = _geocl(
        capsys,
        "compare",
        simclr,
        grass,
        "--pretrain-steps",
        "3",
        "--label-fractions",
        "0.5",
        "--seeds",
        "1",
        "--out",
        out,
    )
    assert code == 0 and "Traceback" not in err
    epoch = _train_epoch(tiny_tiles)
    flag = (
        f"grass: 3 pretraining steps end inside its {2 * epoch}-step warm-up (method.warmup_epochs 2 x {epoch} steps "
        "an epoch): it trained as simclr only, never as grass"
    )
    assert f"⚠ {flag}" in printed.splitlines()  # said before any work
    md = (out / "results.md").read_text()
    assert "| grass ⚠ |" in md and f"- ⚠ {flag}" in md and "| simclr ⚠" not in md
    summary = pd.read_csv(out / "results_summary.csv", keep_default_na=False).set_index("recipe")
    assert summary.loc["grass", "flag"] == flag and summary.loc["simclr", "flag"] == ""
    # a budget that reaches its own stage is not flagged
    steps = str(2 * epoch + 1)
    assert (
        _geocl(
            capsys,
            "compare",
            simclr,
            grass,
            "--pretrain-steps",
            steps,
            "--label-fractions",
            "0.5",
            "--seeds",
            "1",
            "--out",
            tmp_path / "cmp2",
        )[0]
        == 0
    )
    assert "⚠" not in (tmp_path / "cmp2" / "results.md").read_text()


# ------------------------------------------------------------------ case 11


def test_a_learning_rate_warm_up_longer_than_the_budget_is_refused_before_any_work(
    tmp_path: Path, tiny_tiles: Path, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "recipes"
    simclr = _real_recipe(folder, tiny_tiles, "simclr", {"name": "simclr"})
    patchmix = _real_recipe(
        folder,
        tiny_tiles,
        "patchmix",
        {"name": "patchmix", "proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32},
        encoder={"name": "test_vit", "args": {"patch_size": 8, "img_size": 32}},
        scheduler={"name": "cosine", "warmup_epochs": 1},
    )
    out = tmp_path / "cmp"
    assert (
        _geocl(
            capsys, "compare", simclr, "--pretrain-steps", "2", "--label-fractions", "0.5", "--seeds", "1", "--out", out
        )[0]
        == 0
    )
    before = _files(out)
    runs.pretrained.clear()
    code, _, err = _geocl(
        capsys,
        "compare",
        simclr,
        patchmix,
        "--pretrain-steps",
        "2",
        "--label-fractions",
        "0.5",
        "--seeds",
        "1",
        "--out",
        out,
    )
    epoch = _train_epoch(tiny_tiles)
    assert _one_error_line(code, err) == (
        f"geocl compare: error: {patchmix}: scheduler.warmup_epochs: 1 epoch of learning-rate warm-up is {epoch} "
        f"optimizer steps ({epoch} an epoch), more than the pretraining budget (pretrain_steps) of 2 steps; "
        f"lower scheduler.warmup_epochs (0: none) or give the run at least {epoch} steps"
    )
    assert runs.pretrained == [] and _files(out) == before


# ------------------------------------------------------------------ --out


def test_an_out_that_cannot_be_written_is_refused_before_any_pretraining(
    tmp_path: Path,
    stand_ins: list[Path],
    runs: Runs,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "earlier.txt").write_text("kept")
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root writes anywhere: make the check see what a user would
        import geocl.io

        real = os.access
        monkeypatch.setattr(geocl.io.os, "access", lambda path, mode: Path(path) != locked and real(path, mode))
    try:
        code, _, err = _geocl(
            capsys, "compare", stand_ins[0], "--label-fractions", "0.5", "--seeds", "1", "--out", locked
        )
    finally:
        locked.chmod(0o755)
    assert (
        _one_error_line(code, err) == f"geocl compare: error: {locked}: output folder is not writable (given by --out)"
    )
    assert runs.pretrained == [] and _files(locked) == {"earlier.txt": b"kept"}
    # a file where the folder should be
    code, _, err = _geocl(capsys, "compare", stand_ins[0], "--out", locked / "earlier.txt")
    assert "is a file, not a folder (given by --out)" in _one_error_line(code, err) and runs.pretrained == []


# ------------------------------------------------------------------ case 14


def test_a_moved_comparison_resumes_in_its_new_place(
    tmp_path: Path, stand_ins: list[Path], runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "first" / "cmp"
    grid = [*stand_ins, "--label-fractions", "0.5", "--seeds", "2", "--subset-seeds", "2"]
    assert _geocl(capsys, "compare", *grid, "--out", old)[0] == 0
    first = pd.read_csv(old / "results.csv")
    new = tmp_path / "elsewhere" / "cmp"
    new.parent.mkdir()
    shutil.move(old, new)
    runs.pretrained.clear()
    runs.finetuned.clear()
    code, printed, err = _geocl(capsys, "compare", *grid, "--out", new)
    assert code == 0 and "Traceback" not in err and "stale" not in printed
    assert runs.pretrained == [] and runs.finetuned == []  # nothing recomputed
    moved = pd.read_csv(new / "results.csv")
    same = ["checkpoint", "seconds"]  # a reused row reports the run's own time
    pd.testing.assert_frame_equal(moved.drop(columns=same), first.drop(columns=same))
    # the rows point at their models in the new place
    assert moved["checkpoint"].tolist() == [path.replace(str(old), str(new)) for path in first["checkpoint"].tolist()]
    assert all(Path(path).is_file() for path in moved["checkpoint"])
    # a copy resumes as well, and leaves the original alone
    copy = tmp_path / "copy"
    shutil.copytree(new, copy)
    original = _files(new)
    assert _geocl(capsys, "compare", *grid, "--out", copy)[0] == 0
    assert runs.pretrained == [] and runs.finetuned == [] and _files(new) == original


def test_a_changed_recipe_still_names_what_changed_but_never_out(
    tmp_path: Path, stand_ins: list[Path], runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    assert _geocl(capsys, "compare", stand_ins[0], "--label-fractions", "0.5", "--seeds", "1", "--out", out)[0] == 0
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    code, _, err = _geocl(
        capsys,
        "compare",
        stand_ins[0],
        "--label-fractions",
        "0.5",
        "--seeds",
        "1",
        "--override",
        "seed=7",
        "--out",
        moved,
    )
    assert code == 2 and "Traceback" not in err
    reasons = (moved / "results.md").read_text()
    assert "config.yaml differs in seed)" in reasons and "differs in out" not in reasons


def test_a_finished_pretraining_that_lost_its_last_ckpt_is_resumed_not_failed(
    tmp_path: Path, stand_ins: list[Path], runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    # a kill between epochNNN.ckpt and last.ckpt left a run with metrics.json and an epoch
    # checkpoint only: compare resumes it (run_pretrain repairs last.ckpt), on the first rerun
    out = tmp_path / "cmp"
    grid = [*stand_ins, "--label-fractions", "0.5", "--seeds", "1", "--subset-seeds", "1"]
    assert _geocl(capsys, "compare", *grid, "--out", out)[0] == 0
    folder = next(path for path in (out / "pretrain").iterdir() if (path / "checkpoints").is_dir())
    (folder / "checkpoints" / "last.ckpt").rename(folder / "checkpoints" / "epoch000.ckpt")
    resumed: list[bool] = []
    pretrain = runs.pretrain

    def pretrain_recording_resume(recipe: Any, *, resume: bool = False, progress: bool = True) -> SimpleNamespace:
        resumed.append(resume)
        return pretrain(recipe, resume=resume, progress=progress)

    pretrain_module.run_pretrain = pretrain_recording_resume  # restored by the runs fixture's monkeypatch
    code, _, err = _geocl(capsys, "compare", *grid, "--out", out)
    assert code == 0 and "Traceback" not in err, err
    assert resumed == [True] and (folder / "checkpoints" / "last.ckpt").is_file()


# ------------------------------------------------------------------ issue 22: budget 0


def test_step_zero_is_the_random_init_row_evaluated_once_and_starts_every_curve(
    tmp_path: Path,
    stand_ins: list[Path],
    runs: Runs,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import geocl.experiments.results as compare_module
    from geocl.report.budgets import budget_curves

    plotted: list[tuple[pd.DataFrame, set[str]]] = []
    plot = compare_module.plot_budgets

    def recording(summary: pd.DataFrame, png: Path, evaluations: Any, *, from_step_zero: set[str]) -> Path:
        plotted.append((summary, from_step_zero))
        return plot(summary, png, evaluations, from_step_zero=from_step_zero)

    monkeypatch.setattr(compare_module, "plot_budgets", recording)
    out = tmp_path / "cmp"
    grid = ["--label-fractions", "0.5", "--seeds", "2"]
    code, printed, err = _geocl(capsys, "compare", *stand_ins, "--pretrain-steps", "3", "0", *grid, "--out", out)
    assert code == 0 and "Traceback" not in err, err
    assert (
        "step 0 is the random-init row (encoder resnet18, never trained): evaluated once, the first point of "
        "every recipe's curve"
    ) in printed.splitlines()
    assert runs.pretrained == ["alpha", "gamma"]  # budget 0 pretrains nothing
    results = pd.read_csv(out / "results.csv")
    # one set of random-init runs at step 0, not one per recipe
    assert results.groupby(["recipe", "pretrain_steps"]).size().to_dict() == {
        ("alpha", 3): 2,
        ("gamma", 3): 2,
        ("random-init", 0): 2,
    }
    assert len(runs.finetuned) == 6
    step_zero = results[results["pretrain_steps"] == 0]
    assert set(step_zero["method"]) == {"none"} and step_zero["miou"].tolist() == pytest.approx([0.10, 0.11])

    # the same numbers as the random-init row of the comparison without budget 0
    assert _geocl(capsys, "compare", *stand_ins, "--pretrain-steps", "3", *grid, "--out", tmp_path / "plain")[0] == 0
    plain = pd.read_csv(tmp_path / "plain" / "results.csv")
    random = plain[plain["recipe"] == "random-init"]
    assert random["pretrain_steps"].isna().all()
    keys = ["label_fraction", "subset_seed", "seed", "miou", "status"]
    pd.testing.assert_frame_equal(step_zero[keys].reset_index(drop=True), random[keys].reset_index(drop=True))
    # and the same runs: dropping budget 0 in the same folder reuses them (the recipes, pretrained afresh
    # in folders of their own outside a sweep, are redone)
    runs.finetuned.clear()
    assert _geocl(capsys, "compare", *stand_ins, "--pretrain-steps", "3", *grid, "--out", out)[0] == 0
    assert sorted(call["out"].name for call in runs.finetuned) == [
        "alpha-f0.5-s0",
        "alpha-f0.5-s1",
        "gamma-f0.5-s0",
        "gamma-f0.5-s1",
    ]
    assert _geocl(capsys, "compare", *stand_ins, "--pretrain-steps", "3", "0", *grid, "--out", out)[0] == 0

    # the report: a section for step 0, which is random init alone, its own baseline
    md = (out / "results.md").read_text()
    assert "## finetune protocol, 0 pretraining steps (random-init)" in md
    step_zero_section = md.split("## finetune protocol, 0 pretraining steps (random-init)")[1].split("## ")[0]
    assert "| random-init | 0.105 ± 0.007 | 2 |" in step_zero_section and "| alpha |" not in step_zero_section
    assert "| random-init | 0.5 | 0.105 [" in step_zero_section and "(baseline)" in step_zero_section
    assert "## finetune protocol, 3 pretraining steps" in md
    summary = pd.read_csv(out / "results_summary.csv", keep_default_na=False)
    zero = summary[summary["pretrain_steps"] == 0]
    assert zero["recipe"].tolist() == ["random-init"] and zero["mean"].tolist() == pytest.approx([0.105])
    assert zero["flag"].tolist() == [""]
    # the plot: every curve starts at the random-init row's numbers
    summary, starting = plotted[-1]
    assert starting == {"alpha", "gamma"}
    curves = budget_curves(summary, starting)
    for recipe in ("alpha", "gamma"):
        curve = curves[curves["recipe"] == recipe]
        assert curve["pretrain_steps"].tolist() == [0, 3]
        assert curve["mean"].tolist() == pytest.approx([0.105, SCORES[recipe] + 0.005])
    assert curves[curves["recipe"] == "random-init"]["pretrain_steps"].tolist() == [0]
    assert (out / "results_budget.png").read_bytes()[:4] == b"\x89PNG"


def test_step_zero_alone_runs_the_random_init_rows_only_on_distinct_subsets(
    tmp_path: Path, stand_ins: list[Path], runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    code, printed, err = _geocl(
        capsys,
        "compare",
        *stand_ins,
        "--pretrain-steps",
        "0",
        "--label-fractions",
        "1.0",
        "0.5",
        "--subset-seeds",
        "6",
        "--seeds",
        "1",
        "--out",
        out,
    )
    assert code == 0 and "Traceback" not in err, err
    lines = printed.splitlines()
    assert (
        "--pretrain-steps 0 alone: only the random-init rows run (step 0 is the never-trained encoder resnet18); "
        "no recipe is pretrained"
    ) in lines
    assert (
        "label fraction 1 keeps every label: its 6 label subsets are one and run once (subset seed 0); "
        "identical subsets are not independent pairs"
    ) in lines
    assert runs.pretrained == []
    results = pd.read_csv(out / "results.csv")
    assert set(results["recipe"]) == {"random-init"} and set(results["pretrain_steps"]) == {0}
    assert results.groupby("label_fraction").size().to_dict() == {0.5: 6, 1.0: 1}
    assert not (out / "results_budget.png").exists()
    assert "| random-init |" in (out / "results.md").read_text()
    assert pd.read_csv(out / "pretraining.csv").empty


def test_step_zero_is_never_flagged_nor_checked_against_a_warm_up(
    tmp_path: Path, tiny_tiles: Path, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "recipes"
    simclr = _real_recipe(folder, tiny_tiles, "simclr", {"name": "simclr"})
    grass = _real_recipe(folder, tiny_tiles, "grass", {"name": "grass", "warmup_epochs": 2})
    patchmix = _real_recipe(
        folder,
        tiny_tiles,
        "patchmix",
        {"name": "patchmix", "proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32},
        encoder={"name": "test_vit", "args": {"patch_size": 8, "img_size": 32}},
        scheduler={"name": "cosine", "warmup_epochs": 1},
    )
    epoch = _train_epoch(tiny_tiles)
    out = tmp_path / "cmp"
    # patchmix's one-epoch learning-rate warm-up fits the budget of one epoch, and is not checked against 0
    code, printed, err = _geocl(
        capsys,
        "compare",
        simclr,
        grass,
        patchmix,
        "--pretrain-steps",
        "0",
        str(epoch),
        "--label-fractions",
        "0.5",
        "--seeds",
        "1",
        "--out",
        out,
    )
    assert code == 0 and "Traceback" not in err, err
    flags = [line for line in printed.splitlines() if line.startswith("⚠")]
    assert flags == [
        f"⚠ grass: {epoch} pretraining steps end inside its {2 * epoch}-step warm-up (method.warmup_epochs 2 x "
        f"{epoch} steps an epoch): it trained as simclr only, never as grass"
    ]
    assert (
        "  patchmix: its encoder (test_vit) is not random-init's (test_resnet); its curve starts at its first "
        "budget, not at step 0"
    ) in printed.splitlines()
    summary = pd.read_csv(out / "results_summary.csv", keep_default_na=False)
    assert summary.loc[summary["pretrain_steps"] == 0, "flag"].tolist() == [""]
    flagged = summary[summary["flag"] != ""]
    assert flagged[["recipe", "pretrain_steps"]].values.tolist() == [["grass", epoch]]
    md = (out / "results.md").read_text()
    step_zero_section = md.split("0 pretraining steps (random-init)")[1].split("## ")[0]
    assert "⚠" not in step_zero_section


def test_step_zero_without_a_recipe_that_pretrains_is_refused(
    tmp_path: Path, tiny_tiles: Path, runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    out = tmp_path / "cmp"
    code, _, err = _geocl(
        capsys,
        "compare",
        recipes / "fba.yaml",
        recipes / "fba-supervised.yaml",
        "--pretrain-steps",
        "0",
        "10",
        "--override",
        f"data.tiles={tiny_tiles}",
        "--label-fractions",
        "0.5",
        "--seeds",
        "1",
        "--out",
        out,
    )
    assert _one_error_line(code, err) == (
        "geocl compare: error: --pretrain-steps: 0 is random init, and no recipe pretrains an encoder: there is "
        "no step 0 to evaluate; leave 0 out"
    )
    assert runs.pretrained == [] and not out.exists()


def test_a_real_step_zero_row_is_the_random_init_row(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real pretraining and probe, tiny: step 0's rows are those of the random-init row without budget 0."""
    simclr = _real_recipe(tmp_path / "recipes", tiny_tiles, "simclr", {"name": "simclr"})
    tiny = [
        "--protocol",
        "frozen",
        "--label-fractions",
        "0.5",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--finetune-steps-per-epoch",
        "2",
        "--finetune-crop",
        "32",
        "--finetune-accelerator",
        "cpu",
        "--no-finetune-progress",
    ]
    code, _, err = _geocl(capsys, "compare", simclr, "--pretrain-steps", "0", "1", *tiny, "--out", tmp_path / "swept")
    assert code == 0, err
    code, _, err = _geocl(capsys, "compare", simclr, "--pretrain-steps", "1", *tiny, "--out", tmp_path / "plain")
    assert code == 0, err
    swept = pd.read_csv(tmp_path / "swept" / "results.csv")
    plain = pd.read_csv(tmp_path / "plain" / "results.csv")
    assert swept.groupby(["recipe", "pretrain_steps"]).size().to_dict() == {("simclr", 1): 1, ("random-init", 0): 1}
    keys = ["recipe", "method", "label_fraction", "subset_seed", "seed", "miou", "status"]
    step_zero = swept[swept["pretrain_steps"] == 0][keys].reset_index(drop=True)
    random = plain[plain["recipe"] == "random-init"][keys].reset_index(drop=True)
    assert step_zero["status"].tolist() == ["ok"] and 0 <= step_zero["miou"].iloc[0] <= 1
    # really pretrained
    assert (tmp_path / "swept" / "pretrain" / "simclr-1steps" / "checkpoints" / "last.ckpt").is_file()
    pd.testing.assert_frame_equal(step_zero, random)


# ------------------------------------------------------------------ interruption (issue 24)

#: What torch's DataLoader raises when the SIGTERM sent to the process group killed its worker.
KILLED_WORKER = "DataLoader worker (pid 4242) is killed by signal: Terminated."
#: The one line ``geocl compare`` ends with when interrupted.
INTERRUPTED = "geocl compare: interrupted; rerun the same command to resume"


def _terminated() -> None:
    """SIGTERM to this process, surfacing (as from a killed DataLoader worker) as the worker's RuntimeError."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises during the sleep
    except BaseException as error:
        raise RuntimeError(KILLED_WORKER) from error


@pytest.mark.parametrize("during", ["pretraining", "row"])
def test_sigterm_stops_the_comparison_and_a_rerun_redoes_what_it_interrupted(
    tmp_path: Path,
    stand_ins: list[Path],
    runs: Runs,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    during: str,
) -> None:
    out = tmp_path / "cmp"
    grid = [*stand_ins, "--label-fractions", "0.5", "--seeds", "2", "--out", out]

    def pretrain(recipe: Any, **options: Any) -> SimpleNamespace:
        if during == "pretraining" and recipe.name == "gamma":
            _terminated()
        return runs.pretrain(recipe, **options)

    def finetune(**options: Any) -> SimpleNamespace:
        if during == "row" and options["out"].name == "gamma-f0.5-s1":
            _terminated()
        return runs.finetune(**options)

    monkeypatch.setattr(pretrain_module, "run_pretrain", pretrain)
    monkeypatch.setattr(finetune_module, "run_finetune", finetune)
    handler = signal.getsignal(signal.SIGTERM)
    start = time.perf_counter()
    code, printed, err = _geocl(capsys, "compare", *grid)
    assert time.perf_counter() - start < 8  # stopped at once, not after the sleep
    assert code == 130 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("geocl compare")] == [INTERRUPTED]
    assert signal.getsignal(signal.SIGTERM) is handler  # the command's handler is gone with it
    # the finished rows stand; nothing was recorded as failed, nothing ran after the interruption
    kept = pd.read_csv(out / "results.csv")
    finished = ["alpha", "alpha"] + (["gamma"] if during == "row" else [])
    assert kept["recipe"].tolist() == finished and set(kept["status"]) == {"ok"}
    assert "failed" not in printed and not (out / "results.md").exists()
    assert not (out / "finetune" / "random-init-f0.5-s0").exists()

    monkeypatch.setattr(pretrain_module, "run_pretrain", runs.pretrain)
    monkeypatch.setattr(finetune_module, "run_finetune", runs.finetune)
    runs.pretrained.clear()
    runs.finetuned.clear()
    code, printed, err = _geocl(capsys, "compare", *grid)
    assert code == 0, err
    results = pd.read_csv(out / "results.csv")
    assert results["recipe"].tolist() == ["alpha", "alpha", "gamma", "gamma", "random-init", "random-init"]
    assert set(results["status"]) == {"ok"}
    # only what the interruption left undone ran again; the finished rows were reused
    redone = ["gamma-f0.5-s0", "gamma-f0.5-s1"] if during == "pretraining" else ["gamma-f0.5-s1"]
    assert [call["out"].name for call in runs.finetuned] == [*redone, "random-init-f0.5-s0", "random-init-f0.5-s1"]
    assert runs.pretrained == (["gamma"] if during == "pretraining" else [])


def test_rows_failed_by_a_killed_worker_are_run_again_on_rerun(
    tmp_path: Path,
    stand_ins: list[Path],
    runs: Runs,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker killed alone (no SIGTERM to compare: the OOM killer), or a comparison interrupted before
    issue 24: its rows are failed rows, and failed rows are never reused."""
    out = tmp_path / "cmp"
    grid = [*stand_ins, "--label-fractions", "0.5", "--seeds", "2", "--out", out]

    def pretrain(recipe: Any, **options: Any) -> SimpleNamespace:
        if recipe.name == "gamma":
            raise RuntimeError(KILLED_WORKER)
        return runs.pretrain(recipe, **options)

    monkeypatch.setattr(pretrain_module, "run_pretrain", pretrain)
    code, _, err = _geocl(capsys, "compare", *grid)
    assert _one_error_line(code, err).startswith("geocl compare: error: 2 of 6 runs failed: gamma (2 of 2)")
    failed = pd.read_csv(out / "results.csv").set_index("recipe")["status"]
    assert set(failed["gamma"]) == {f"failed: RuntimeError: {KILLED_WORKER}"}

    monkeypatch.setattr(pretrain_module, "run_pretrain", runs.pretrain)
    runs.pretrained.clear()
    runs.finetuned.clear()
    code, _, err = _geocl(capsys, "compare", *grid)
    assert code == 0, err
    assert set(pd.read_csv(out / "results.csv")["status"]) == {"ok"}
    assert runs.pretrained == ["gamma"]
    assert [call["out"].name for call in runs.finetuned] == ["gamma-f0.5-s0", "gamma-f0.5-s1"]


#: ``geocl`` with every tile read slowed down (``GEOCL_TEST_SLOW`` seconds), so that a tiny
#: pretraining lasts long enough to be interrupted while its DataLoader worker runs.
_SLOW_GEOCL = """
import os, sys, time
from geocl.data.tile_dataset import TileDataset
_read = TileDataset.__getitem__
def _slow(self, index):
    time.sleep(float(os.environ.get("GEOCL_TEST_SLOW", "0")))
    return _read(self, index)
TileDataset.__getitem__ = _slow
from geocl import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the DataLoader worker through Linux /proc")
def test_a_real_compare_sent_sigterm_stops_cleanly_and_resumes(tmp_path: Path, tiny_tiles: Path) -> None:
    """The bug of issue 24, as a cluster's time limit causes it: SIGTERM to the process group kills the
    DataLoader worker of the running pretraining. compare must stop, not record beta's rows as failed
    and go on; the same command then finishes the comparison, alpha's row reused."""
    script = tmp_path / "slow_geocl.py"
    script.write_text(_SLOW_GEOCL)
    data = {"tiles": str(tiny_tiles), "batch_size": 8, "num_workers": 1, "view_size": 32}
    recipes = [
        _real_recipe(
            tmp_path / "recipes",
            tiny_tiles,
            name,
            {"name": "simclr"},
            data=data,
            trainer={"max_steps": steps, "max_epochs": -1, "accelerator": "cpu", "devices": 1},
        )
        for name, steps in (("alpha", 2), ("beta", 6))
    ]
    out = tmp_path / "cmp"
    command = [
        sys.executable,
        str(script),
        "compare",
        *map(str, recipes),
        "--protocol",
        "frozen",
        "--label-fractions",
        "0.5",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--finetune-steps-per-epoch",
        "2",
        "--finetune-crop",
        "32",
        "--finetune-accelerator",
        "cpu",
        "--no-finetune-progress",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "GEOCL_TEST_SLOW": "0.05"}
    printed, said = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with printed.open("w") as stdout, said.open("w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not ("pretraining beta" in printed.read_text() and _children(process.pid)):
            assert process.poll() is None and time.monotonic() < deadline, said.read_text()
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)  # compare and its DataLoader worker, as a scheduler does
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    err = said.read_text()
    assert code == 130 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("geocl compare")] == [INTERRUPTED]
    kept = pd.read_csv(out / "results.csv")
    assert kept["recipe"].tolist() == ["alpha"] and kept["status"].tolist() == ["ok"]
    alpha_row = out / "frozen" / "alpha-f0.5-s0" / "metrics.json"
    alpha_bytes = alpha_row.read_bytes()

    rerun = subprocess.run(command, capture_output=True, text=True, env={**env, "GEOCL_TEST_SLOW": "0"}, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    results = pd.read_csv(out / "results.csv")
    assert results["recipe"].tolist() == ["alpha", "beta", "random-init"] and set(results["status"]) == {"ok"}
    assert alpha_row.read_bytes() == alpha_bytes and not list((out / "frozen").glob("alpha-*.stale-*"))
    assert json.loads((out / "pretrain" / "beta" / "metrics.json").read_text())["global_step"] == 6


def test_snapshots_without_two_trained_budgets_are_one_line_naming_both_flags(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    code, _, err = _geocl(
        capsys, "compare", tmp_path / "r.yaml", "--pretrain-steps", "0", "30", "--snapshots", "--out", out
    )
    line = _one_error_line(code, err)
    assert "--snapshots" in line and "--pretrain-steps" in line and "two budgets above 0" in line
    assert not out.exists()
