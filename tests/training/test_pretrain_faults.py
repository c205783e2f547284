"""`geocl pretrain` when things go wrong: one line, exit != 0, nothing lost, `--resume` gets there.

Faults are injected (the tests run as root, where a read-only folder does not stop a
write): the checkpoint writer's ``open`` fails as a full disk (some bytes written, then
``ENOSPC``) or a read-only folder (``EACCES`` at creation) would. Every faulty run is
compared with one uninterrupted run of the same recipe: same steps, same final loss,
same weights bit for bit (CPU, seeded), and the outputs of before the fault unchanged.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods' recipe sections)
import geocl.training.checkpoint_io as checkpoint_io
from geocl.cli import main
from geocl.data.synthetic import make_scene
from geocl.data.tiler import TilingOptions, tile_scene
from geocl.methods import SimCLR, load_recipe
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe

SIMCLR = {"name": "simclr"}
#: 3 epochs of 3 steps: faults land at the end of epoch 0 or 1, the reference runs all 9 steps.
BUDGET = {"trainer": {"max_epochs": 3}}


def _pretrain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run ``geocl pretrain ARGS`` in-process; (exit status, stderr), with no traceback allowed."""
    code = main(["pretrain", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("geocl pretrain: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True, map_location="cpu")["state_dict"]


def _assert_same_run(run: Path, reference: Path) -> None:
    done = json.loads((run / "metrics.json").read_text())
    ref = json.loads((reference / "metrics.json").read_text())
    assert done["global_step"] == ref["global_step"] == 9
    assert done["final_loss"] == ref["final_loss"]
    ours, theirs = _weights(run / "checkpoints" / "last.ckpt"), _weights(reference / "checkpoints" / "last.ckpt")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


class _FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, file: Any, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) > self.room:
            self.file.write(view[: self.room])
            self.file.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(view)
        return self.file.write(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def _inject(
    monkeypatch: pytest.MonkeyPatch, name: str, fault: Callable[[Any, Path], Any], seen: dict[str, dict[str, bytes]]
) -> None:
    """Make the checkpoint writer's first file whose name holds ``name`` fail with ``fault``.

    ``seen["before"]`` receives the checkpoint folder as it was just before the fault.
    """

    def faulty_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        path = Path(path)
        if name in path.name and "before" not in seen:
            seen["before"] = _files(path.parent)
            return fault(open(path, mode, *args, **kwargs) if "w" in mode else None, path)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io, "open", faulty_open, raising=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_tiles: Path) -> Path:
    """The uninterrupted run every faulty run is compared with."""
    folder = tmp_path_factory.mktemp("reference")
    assert main(["pretrain", str(write_recipe(folder, tiny_tiles, SIMCLR, **BUDGET))]) == 0
    return folder / "run"


def test_disk_full_while_writing_a_checkpoint_leaves_no_partial_file_and_resume_finishes_the_same_run(
    tmp_path: Path,
    tiny_tiles: Path,
    reference: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR, **BUDGET))
    checkpoints = tmp_path / "run" / "checkpoints"
    seen: dict[str, dict[str, bytes]] = {}
    _inject(monkeypatch, "epoch001", lambda file, path: _FullDisk(file, room=4096), seen)

    code, err = _pretrain(capsys, recipe)

    assert code == 2
    assert _error_line(err) == (
        f"geocl pretrain: error: no space left writing {checkpoints / 'epoch001.ckpt'}; "
        f"the last complete checkpoint is {checkpoints / 'last.ckpt'}; free space and rerun with --resume"
    )
    assert set(seen["before"]) == {"epoch000.ckpt", "last.ckpt"}
    assert _files(checkpoints) == seen["before"]  # no partial epoch001.ckpt, no temporary file, nothing rewritten
    assert not (tmp_path / "run" / "metrics.json").exists()

    monkeypatch.undo()
    code, err = _pretrain(capsys, recipe, "--resume")
    assert code == 0, err
    _assert_same_run(tmp_path / "run", reference)
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        p.name for p in (reference / "checkpoints").iterdir()
    )


def test_checkpoint_folder_turned_read_only_names_the_newest_complete_checkpoint_which_resume_continues_from(
    tmp_path: Path,
    tiny_tiles: Path,
    reference: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR, **BUDGET))
    checkpoints = tmp_path / "run" / "checkpoints"
    seen: dict[str, dict[str, bytes]] = {}
    writes = {"last": 0}
    real_open = open

    def faulty_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        # last.ckpt of epoch 0 goes through; that of epoch 1 (after epoch001.ckpt) meets a read-only folder
        path = Path(path)
        if "last" in path.name and "w" in mode:
            writes["last"] += 1
            if writes["last"] == 2:
                seen["before"] = _files(path.parent)
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io, "open", faulty_open, raising=False)
    code, err = _pretrain(capsys, recipe)

    assert code == 2
    assert _error_line(err) == (
        f"geocl pretrain: error: permission denied writing {checkpoints / 'last.ckpt'}; "
        f"the last complete checkpoint is {checkpoints / 'epoch001.ckpt'}; make {checkpoints} writable "
        "and rerun with --resume"
    )
    assert set(seen["before"]) == {"epoch001.ckpt", "last.ckpt"}
    assert _files(checkpoints) == seen["before"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 3  # epoch 0's, intact

    monkeypatch.undo()
    code, err = _pretrain(capsys, recipe, "--resume")
    assert code == 0, err
    assert f"is older; resuming from {checkpoints / 'epoch001.ckpt'} (epoch 1, step 6)" in caplog.text
    _assert_same_run(tmp_path / "run", reference)


def test_ctrl_c_exits_130_and_a_truncated_last_ckpt_is_resumed_from_the_intact_epoch_checkpoint(
    tmp_path: Path,
    tiny_tiles: Path,
    reference: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR, **BUDGET))
    checkpoints = tmp_path / "run" / "checkpoints"
    real = SimCLR.contrast

    def interrupted(self: SimCLR, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        if self.current_epoch == 2:
            raise KeyboardInterrupt
        return real(self, view_a, view_b)

    monkeypatch.setattr(SimCLR, "contrast", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    code, err = _pretrain(capsys, recipe)
    assert code == 130 and "rerun the same command with --resume" in err
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's SIG_IGN does not outlive the run
    monkeypatch.undo()

    # last.ckpt cut short (a crash of an older geocl, a copy that stopped), a dead writer's temporary
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (checkpoints / ".last.tmp-99999999-deadbeef.ckpt").write_bytes(b"half")
    intact = (checkpoints / "epoch001.ckpt").read_bytes()

    code, err = _pretrain(capsys, recipe, "--resume")
    assert code == 0, err
    assert (
        f"{last} cannot be read: truncated or damaged (PytorchStreamReader failed reading zip archive: failed "
        f"finding central directory); resuming from {checkpoints / 'epoch001.ckpt'} (epoch 1, step 6)"
    ) in caplog.text
    _assert_same_run(tmp_path / "run", reference)
    assert (checkpoints / "epoch001.ckpt").read_bytes() == intact  # resumed from: kept
    assert not list(checkpoints.glob(".*"))


def test_resume_with_no_readable_checkpoint_says_so_in_one_line(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR))
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"PK\x03\x04 cut")
    code, err = _pretrain(capsys, recipe, "--resume")
    assert code == 2
    assert _error_line(err) == (
        f"geocl pretrain: error: {checkpoints}: cannot resume: last.ckpt cannot be read: truncated or damaged "
        "(PytorchStreamReader failed reading zip archive: not a ZIP archive); and no other "
        "checkpoint of the run is left; start a new run (another out, or remove this folder)"
    )


def test_resume_names_each_changed_key_with_its_old_and_new_value_and_leaves_the_run_as_it_was(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR, trainer={"max_epochs": 1}))
    assert main(["pretrain", recipe]) == 0
    before = _files(tmp_path / "run")
    capsys.readouterr()

    code, err = _pretrain(
        capsys, recipe, "optimizer.lr=0.01", "method.temperature=0.2", "trainer.max_epochs=2", "--resume"
    )
    assert code == 2
    assert _error_line(err) == (
        f"geocl pretrain: error: {tmp_path / 'run' / 'config.yaml'}: cannot resume with a changed recipe: "
        "method.temperature was 0.5, now 0.2; optimizer.lr was 0.001, now 0.01 (only trainer.*, monitor.* may change on "
        "--resume; put the values back, or start a new run in another out)"
    )
    assert _files(tmp_path / "run") == before

    # the same recipe resumes; a finished run trains nothing and keeps its record
    code, err = _pretrain(capsys, recipe, "--resume")
    assert code == 0, err
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before["metrics.json"]


def test_a_log_cut_short_by_an_earlier_start_does_not_stop_the_resumed_run(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR, trainer={"max_epochs": 1, "limit_train_batches": 1}))
    assert main(["pretrain", recipe]) == 0
    log = tmp_path / "run" / "logs" / "version_0" / "metrics.csv"
    log.write_bytes(b"")  # the disk was full when its header was due
    png = (tmp_path / "run" / "plots" / "loss.png").read_bytes()
    capsys.readouterr()
    code, err = _pretrain(capsys, recipe, "trainer.max_epochs=2", "--resume")
    assert code == 0, err
    assert f"loss.png not redrawn: a CSV log under {tmp_path / 'run' / 'logs'} cannot be read" in caplog.text
    assert (tmp_path / "run" / "plots" / "loss.png").read_bytes() == png
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == 2


def test_resume_refuses_tiles_whose_band_count_changed_naming_data_tiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiles = tmp_path / "tiles"
    options = TilingOptions(size=64, stride=64, max_nodata=0.3, split_block=128)
    four = make_scene(tmp_path / "four", size=256, seed=0, bands=4)
    tile_scene(four.image, tiles, mask=four.mask, options=options, progress=False)
    recipe = str(write_recipe(tmp_path, tiles, SIMCLR, trainer={"max_epochs": 1, "limit_train_batches": 1}))
    assert main(["pretrain", recipe]) == 0
    capsys.readouterr()
    before = _files(tmp_path / "run" / "checkpoints")

    import shutil

    shutil.rmtree(tiles)
    five = make_scene(tmp_path / "five", size=256, seed=0, bands=5)
    tile_scene(five.image, tiles, mask=five.mask, options=options, progress=False)
    code, err = _pretrain(capsys, recipe, "trainer.max_epochs=2", "--resume")
    assert code == 2
    assert _error_line(err) == (
        f"geocl pretrain: error: {tiles}: has 5 bands now, but the run being resumed "
        f"({tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}) was trained on 4; point data.tiles at the data it "
        "was trained on, or start a new run in another out"
    )
    assert _files(tmp_path / "run" / "checkpoints") == before


def test_snapshot_steps_beyond_a_step_budget_are_refused_before_any_work(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR))
    code, err = _pretrain(capsys, recipe, "trainer.max_steps=3", "trainer.snapshot_steps=[2,5]")
    assert code == 2
    line = _error_line(err)
    assert "trainer.snapshot_steps" in line and "trainer.max_steps (3)" in line and "no snapshot" in line
    assert not (tmp_path / "run").exists()


def test_snapshot_steps_an_epoch_budget_never_reaches_are_named_at_the_end(
    tmp_path: Path, tiny_tiles: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # an epoch budget's length is known only once the data is: the run goes on and says so
    path = write_recipe(tmp_path, tiny_tiles, SIMCLR, trainer={"max_epochs": 1, "snapshot_steps": [1, 500]})
    with caplog.at_level(logging.WARNING, logger="geocl"):
        result = run_pretrain(load_recipe(path))
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir()) == ["step1.ckpt"]
    warned = [r.getMessage() for r in caplog.records if "snapshot_steps" in r.getMessage()]
    assert warned == [
        f"trainer.snapshot_steps [500]: the run ended at step {result.global_step}, no snapshot written for them"
    ]


def test_a_run_without_an_end_is_refused_by_the_schema_before_any_work(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR))
    code, err = _pretrain(capsys, recipe, "trainer.max_epochs=-1")
    assert code == 2
    line = _error_line(err)
    assert "trainer.max_epochs" in line and "trainer.max_steps" in line and "nothing would stop the run" in line
    assert not (tmp_path / "run").exists()
    # a step limit alone is a fine end
    code, err = _pretrain(capsys, recipe, "trainer.max_epochs=-1", "trainer.max_steps=2")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == 2


def test_an_out_that_is_a_file_is_refused_before_any_work(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR))
    (tmp_path / "run").write_text("not a folder")
    code, err = _pretrain(capsys, recipe)
    assert code == 2
    assert _error_line(err) == (
        f"geocl pretrain: error: {tmp_path / 'run'}: is a file, not a folder (given by out); choose another output folder"
    )
    assert (tmp_path / "run").read_text() == "not a folder"


@pytest.mark.parametrize("epoch", [0, 1])
def test_nan_loss_names_the_last_good_checkpoint_file_or_that_none_was_written(
    epoch: int, tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = SimCLR.contrast

    def poisoned(self: SimCLR, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        loss = real(self, view_a, view_b)
        return loss * float("nan") if self.current_epoch == epoch else loss

    monkeypatch.setattr(SimCLR, "contrast", poisoned)
    code, err = _pretrain(capsys, str(write_recipe(tmp_path, tiny_tiles, SIMCLR)))
    assert code == 2
    kept = (
        f"the last good checkpoint is {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"
        if epoch
        else ("no checkpoint was written yet")
    )
    assert _error_line(err) == (
        f"geocl pretrain: error: optimizer.lr: loss became nan at epoch {epoch}, step {3 * epoch}; "
        f"training stopped, {kept} (lower optimizer.lr or check the data)"
    )
