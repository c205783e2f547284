"""`geocl pretrain` end to end on a tiny tile set: outputs, resume after SIGKILL, NaN guard."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import rasterio
import torch

import geocl.methods  # noqa: F401  (registers the methods' recipe sections)
from geocl.data.tile_dataset import TileDataset
from geocl.errors import GeoclError
from geocl.methods import CHECKPOINT_KEY, SimCLR, load_recipe
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe

GRASS = {"name": "grass", "warmup_epochs": 1, "hidden_dim": 32, "output_dim": 16, "map_tiles": 2}


def _epoch_losses(run: Path) -> list[float]:
    frames = [pd.read_csv(path) for path in sorted((run / "logs").glob("version_*/metrics.csv"))]
    metrics = pd.concat(frames)
    return (
        metrics.dropna(subset=["train/loss_epoch"]).drop_duplicates("epoch", keep="last")["train/loss_epoch"].tolist()
    )


def test_grass_runs_both_stages_and_writes_checkpoints_maps_plots_and_logs(tmp_path: Path, tiny_tiles: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, tiny_tiles, GRASS))
    result = run_pretrain(recipe)
    run = result.out
    assert result.global_step == 6  # 2 epochs x 3 batches
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    meta = checkpoint[CHECKPOINT_KEY]
    assert meta["method"] == "grass" and meta["in_chans"] == 4 and meta["encoder"] == "test_resnet"
    assert len(meta["band_stats"]["mean"]) == 4 and "torch" in meta["versions"]
    assert any(key.startswith("encoder.") for key in checkpoint["state_dict"])
    assert load_recipe(run / "config.yaml") == recipe
    assert len(_epoch_losses(run)) == 2
    assert (run / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    maps = sorted((run / "maps" / "final").glob("*.tif"))
    assert len(maps) == 2 and len(list((run / "plots").glob("regions_*.png"))) == 2
    with rasterio.open(maps[0]) as region, rasterio.open(tiny_tiles / "images" / maps[0].name) as tile:
        assert region.transform == tile.transform and region.crs == tile.crs and region.shape == tile.shape
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 6


def test_warmup_epochs_never_call_the_crop(tmp_path: Path, tiny_tiles: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    import geocl.methods.grass as grass

    real = grass.GraSS.sample_regions

    def counting(self: grass.GraSS, views: torch.Tensor):  # type: ignore[no-untyped-def]
        calls.append(self.current_epoch)
        return real(self, views)

    monkeypatch.setattr(grass.GraSS, "sample_regions", counting)
    recipe = load_recipe(write_recipe(tmp_path, tiny_tiles, {**GRASS, "warmup_epochs": 1, "map_tiles": 0}))
    run_pretrain(recipe)
    assert calls and set(calls) == {1}


def test_geo_sampling_writes_maps_for_all_train_tiles_and_trains_on_regions(tmp_path: Path, tiny_tiles: Path) -> None:
    method = {**GRASS, "stage2_sampling": "geo", "region_size": 32, "regions_per_epoch": 24, "map_tiles": 0}
    recipe = load_recipe(write_recipe(tmp_path, tiny_tiles, method))
    result = run_pretrain(recipe)
    maps = list((result.out / "maps" / "epoch001").glob("*.tif"))
    assert len(maps) == len(TileDataset(tiny_tiles, "train", progress=False))
    assert result.global_step == 6 and len(_epoch_losses(result.out)) == 2


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, tiny_tiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = SimCLR.contrast

    def poisoned(self: SimCLR, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        loss = real(self, view_a, view_b)
        return loss * float("nan") if self.current_epoch == 1 else loss

    monkeypatch.setattr(SimCLR, "contrast", poisoned)
    recipe = load_recipe(write_recipe(tmp_path, tiny_tiles, {"name": "simclr"}))
    with pytest.raises(GeoclError, match="loss became nan at epoch 1"):
        run_pretrain(recipe)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 3
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values() if value.is_floating_point())


# Slow (two resnet18 runs): the default suite resumes after Ctrl-C, a full disk and a
# truncated checkpoint in test_pretrain_faults.py; this one kills with SIGKILL mid-epoch.
@pytest.mark.slow
def test_pretrain_killed_mid_epoch_resumes_to_the_same_steps_and_loss(tmp_path: Path, tiny_tiles: Path) -> None:
    # steps long enough (resnet18, 64 px views) that a kill can land inside an epoch
    budget = {
        "trainer": {"max_epochs": 3, "limit_train_batches": 1.0},
        "encoder": {"name": "resnet18"},
        "data": {"view_size": 64, "batch_size": 12},
    }
    clean = write_recipe(tmp_path / "clean", tiny_tiles, {"name": "simclr"}, **budget)
    killed = write_recipe(tmp_path / "killed", tiny_tiles, {"name": "simclr"}, **budget)
    command = [sys.executable, "-m", "geocl.cli", "pretrain"]
    subprocess.run([*command, str(clean)], check=True, capture_output=True, timeout=300)

    process = subprocess.Popen([*command, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 1, well before its end
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert last.exists(), "the run never reached its first checkpoint"
    assert torch.load(last, weights_only=True)["epoch"] == 0, "the kill did not land in epoch 1"
    assert not (tmp_path / "killed" / "run" / "metrics.json").exists()

    subprocess.run([*command, str(killed), "--resume"], check=True, capture_output=True, timeout=300)
    done = json.loads((tmp_path / "killed" / "run" / "metrics.json").read_text())
    reference = json.loads((tmp_path / "clean" / "run" / "metrics.json").read_text())
    assert (
        done["global_step"]
        == reference["global_step"]
        == 3 * (len(TileDataset(tiny_tiles, "train", progress=False)) // 12)
    )
    assert done["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-3)


def test_resume_refuses_a_changed_recipe_and_a_run_folder_is_not_reused(tmp_path: Path, tiny_tiles: Path) -> None:
    path = write_recipe(tmp_path, tiny_tiles, {"name": "simclr"}, trainer={"max_epochs": 1})
    assert run_pretrain(load_recipe(path)).findings == ()  # SimCLR has nothing to add to its final line
    with pytest.raises(GeoclError, match="--resume"):
        run_pretrain(load_recipe(path))
    with pytest.raises(GeoclError, match="method"):
        run_pretrain(load_recipe(path, ["method.temperature=0.2"]), resume=True)
    extended = run_pretrain(load_recipe(path, ["trainer.max_epochs=2"]), resume=True)
    assert extended.global_step == 6


def test_a_recipe_the_method_refuses_writes_nothing(tmp_path: Path, tiny_tiles: Path) -> None:
    method = {"name": "grass", "box_placement": "random", "stage2_sampling": "geo"}
    fresh = load_recipe(write_recipe(tmp_path / "fresh", tiny_tiles, method), [f"out={tmp_path}/new/deeper/run"])
    with pytest.raises(GeoclError, match="method.box_placement"):
        run_pretrain(fresh)
    assert not (tmp_path / "new").exists()  # the folders it would have created are gone again

    earlier = tmp_path / "earlier"  # a folder the user already had: kept, with its files as they were
    (earlier / "run").mkdir(parents=True)
    (earlier / "run" / "notes.txt").write_text("mine")
    with pytest.raises(GeoclError, match="method.box_placement"):
        run_pretrain(load_recipe(write_recipe(earlier, tiny_tiles, method)))
    assert sorted(p.name for p in (earlier / "run").iterdir()) == ["notes.txt"]


def test_gradient_clip_val_bounds_the_gradient_norm_of_every_step(
    tmp_path: Path, tiny_tiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    norms: list[float] = []

    def clip_and_record(
        self: SimCLR, optimizer: torch.optim.Optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    monkeypatch.setattr(SimCLR, "configure_gradient_clipping", clip_and_record)
    path = write_recipe(tmp_path, tiny_tiles, {"name": "simclr"}, trainer={"max_epochs": 1, "gradient_clip_val": 0.01})
    run_pretrain(load_recipe(path))
    assert len(norms) == 3
    assert max(norms) == pytest.approx(0.01, rel=1e-3)  # unclipped norms of this run are ~1


# Slow (two processes start Lightning); in the default suite the losses' two-process gloo
# tests check that every rank contrasts against the gathered batch.
@pytest.mark.slow
def test_same_recipe_runs_on_two_cpu_processes_with_ddp(tmp_path: Path, tiny_tiles: Path) -> None:
    # a snapshot too: every rank must take part in saving it (a barrier), or the run hangs
    path = write_recipe(tmp_path, tiny_tiles, GRASS, trainer={"limit_train_batches": 1.0, "snapshot_steps": [1]})
    overrides = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]
    result = subprocess.run(
        [sys.executable, "-m", "geocl.cli", "pretrain", str(path), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("final loss") == 1  # printed by the main process only
    train = len(TileDataset(tiny_tiles, "train", progress=False))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 2 * (-(-train // 2) // 8)  # 2 epochs; each process takes half the tiles
    assert len(list((tmp_path / "run" / "maps" / "final").glob("*.tif"))) == 2
    assert torch.load(tmp_path / "run" / "snapshots" / "step1.ckpt", weights_only=True)["global_step"] == 1


def test_a_step_budget_stops_at_that_many_steps_and_counts_samples(tmp_path: Path, tiny_tiles: Path) -> None:
    path = write_recipe(tmp_path, tiny_tiles, {"name": "simclr"}, trainer={"max_epochs": -1, "max_steps": 5})
    result = run_pretrain(load_recipe(path))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result.global_step == metrics["global_step"] == 5
    assert metrics["samples_seen"] == 5 * 8  # steps x batch size (write_recipe: batch 8) x one device


def test_a_snapshot_holds_the_state_of_its_step_and_workers_that_outlive_epochs_load_the_same_batches(
    tmp_path: Path, tiny_tiles: Path
) -> None:
    # No schedule, so the first 2 steps of a 5-step run are a 2-step run. The long run loads
    # with 2 persistent workers, the short one in this process: equal weights say that the
    # snapshot is the state of step 2 and that persistence changed no batch.
    flat = {"scheduler": {"name": "none"}}
    steps = {"max_epochs": -1, "limit_train_batches": 2}
    long = write_recipe(
        tmp_path / "long",
        tiny_tiles,
        {"name": "simclr"},
        trainer={**steps, "max_steps": 5, "snapshot_steps": [4, 2]},
        data={"num_workers": 2},
        **flat,
    )
    short = write_recipe(tmp_path / "short", tiny_tiles, {"name": "simclr"}, trainer={**steps, "max_steps": 2}, **flat)
    run_pretrain(load_recipe(long))
    run_pretrain(load_recipe(short))
    folder = tmp_path / "long" / "run" / "snapshots"
    assert sorted(path.name for path in folder.iterdir()) == ["step2.ckpt", "step4.ckpt"]
    metrics = json.loads((tmp_path / "long" / "run" / "metrics.json").read_text())
    assert metrics["snapshots"] == {"2": str(folder / "step2.ckpt"), "4": str(folder / "step4.ckpt")}
    snapshot = torch.load(folder / "step2.ckpt", weights_only=True)
    reference = torch.load(tmp_path / "short" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert snapshot["global_step"] == reference["global_step"] == 2
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(snapshot["state_dict"][key], value, msg=key)
    later = torch.load(folder / "step4.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(later[key], value) for key, value in snapshot["state_dict"].items())


def test_checkpoints_are_paced_and_the_last_epoch_is_always_saved(
    tmp_path: Path, tiny_tiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning

    saved: list[str] = []
    save = lightning.Trainer.save_checkpoint

    def recording(self: lightning.Trainer, filepath: Any, *args: Any, **kwargs: Any) -> None:
        saved.append(Path(filepath).name)
        save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(lightning.Trainer, "save_checkpoint", recording)
    path = write_recipe(tmp_path, tiny_tiles, {"name": "simclr"}, trainer={"max_epochs": 4, "checkpoint_every_s": 3600})
    result = run_pretrain(load_recipe(path))
    # the first epoch (something to resume from at once), then nothing until the last
    assert saved == ["epoch000.ckpt", "last.ckpt", "epoch003.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == result.global_step == 4 * 3 and last["epoch"] == 3

    # a step budget that ends inside an epoch is saved at its last step too
    saved.clear()
    budget = {"max_epochs": -1, "max_steps": 5, "limit_train_batches": 2, "checkpoint_every_s": 3600}
    path = write_recipe(tmp_path / "steps", tiny_tiles, {"name": "simclr"}, trainer=budget)
    run_pretrain(load_recipe(path))
    assert saved[-1] == "last.ckpt" and saved[0] == "epoch000.ckpt" and len(saved) == 4
    assert torch.load(tmp_path / "steps" / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
