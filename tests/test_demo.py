"""The demo pipeline end to end on a small embedded scene with tiny budgets."""

from __future__ import annotations

from pathlib import Path

import pytest

from geocl.demo import run_demo

TINY_PRETRAIN = ["encoder.name=test_resnet", "trainer.max_epochs=1", "data.view_size=32", "data.batch_size=8", "data.num_workers=0"]
TINY_FINETUNE = {"max_epochs": 1, "steps_per_epoch": 2, "val_every": 1, "batch_size": 4, "crop": 32, "progress": False}


def test_demo_runs_scene_tiles_pretraining_finetuning_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = run_demo(
        tmp_path / "demo", size=1024, overrides=TINY_PRETRAIN, finetune=TINY_FINETUNE, subsets=2, pretrain_steps=2
    )
    printed = capsys.readouterr().out
    assert all(count > 0 for count in summary["splits"].values())
    assert 0.0 < summary["baseline_miou"] < 0.9
    results = summary["results"]
    assert set(results["recipe"]) == {"random-init", "simclr", "grass"}
    assert results["miou"].between(0, 1).all()
    for plot in summary["plots"]:
        assert Path(plot).read_bytes()[:4] == b"\x89PNG" and plot in printed
    table = (tmp_path / "demo" / "compare" / "results.md").read_text()
    # the evidence: intervals and paired differences over the label subsets
    assert "Δ vs simclr [95 % CI]" in table and "test split of" in table
    assert set(results["evaluation"]) == {"frozen"} and results.groupby("recipe").size().tolist() == [2, 2, 2]
    assert "Δ vs simclr" in printed
