"""The demo pipeline end to end on a small embedded urban scene with tiny budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geocl.demo import run_demo
from geocl.errors import GeoclError

# batch 32: one step an epoch on the ~45 train tiles, so 3 steps pass GraSS's 2 warm-up epochs
TINY_PRETRAIN = [
    "encoder.name=test_resnet",
    "trainer.max_epochs=1",
    "data.view_size=32",
    "data.batch_size=32",
    "data.num_workers=0",
]
TINY_FINETUNE = {"max_epochs": 1, "steps_per_epoch": 2, "val_every": 1, "batch_size": 4, "crop": 32, "progress": False}


def test_demo_runs_scene_tiles_pretraining_finetuning_and_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = run_demo(
        tmp_path / "demo", size=1024, overrides=TINY_PRETRAIN, finetune=TINY_FINETUNE, subsets=2, pretrain_steps=3
    )
    printed = capsys.readouterr().out
    assert json.loads((tmp_path / "demo" / "scene" / "scene.json").read_text())["kind"] == "urban"
    assert "(urban, 1024 x 1024 px)" in printed
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
    # where the budget that pays off is: the line names files that exist
    pointer = next(line for line in printed.splitlines() if "recipes/urban/" in line)
    root = Path(__file__).resolve().parents[1]
    assert "3 steps is a demo's budget" in pointer
    assert (root / "recipes" / "urban" / "grass.yaml").is_file() and (root / "docs/methods/grass.md").is_file()
    assert "recipes/urban/" in (root / "docs/methods/grass.md").read_text()
    # GraSS's own pictures: its crop-box areas over stage 2 and a region map
    grass_plots = [Path(plot).name for plot in summary["plots"] if "/pretrain/grass/" in plot]
    assert "box_area.png" in grass_plots and any(name.startswith("regions_") for name in grass_plots)


def test_a_folder_holding_the_other_scene_kind_is_refused_and_kept(tmp_path: Path) -> None:
    scene = tmp_path / "demo" / "scene"
    scene.mkdir(parents=True)
    record = json.dumps({"generator": "geocl.data.synthetic", "kind": "rural"})
    (scene / "scene.json").write_text(record)
    with pytest.raises(GeoclError, match="holds the demo of the rural scene"):
        run_demo(tmp_path / "demo", size=256)
    assert (scene / "scene.json").read_text() == record and [p.name for p in scene.iterdir()] == ["scene.json"]
