"""`geocl pretrain --resume` after a kill between two checkpoint writes, and checkpoints that are not what they seem.

A run killed (SIGKILL) after writing ``epochNNN.ckpt`` and before ``last.ckpt`` left
``last.ckpt`` older than the epoch file, or absent; resuming it must finish with a real
``last.ckpt`` and the run's true final loss, with no hand-editing. Every checkpoint is
read with ``torch.load(weights_only=True)``, Lightning's resume included: a crafted
payload never runs, and a file that is no checkpoint of the run is named in one line.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections import OrderedDict
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods' recipe sections)
from geocl.cli import main
from geocl.errors import GeoclError
from geocl.training.checkpoint_io import AtomicCheckpointIO, plain_data, storage_error
from tests.conftest import write_recipe

SIMCLR = {"name": "simclr"}
ROOT = Path(__file__).resolve().parents[2]
#: Runs ``geocl pretrain RECIPE`` and SIGKILLs it as it opens last.ckpt's temporary file for the Nth time.
KILLER = """
import os, signal, sys
from pathlib import Path
import geocl.training.checkpoint_io as checkpoint_io
from geocl.cli import main
recipe, nth = sys.argv[1], int(sys.argv[2])
seen = [0]
def killing_open(path, mode="r", *args, **kwargs):
    if Path(path).name.startswith(".last.tmp-") and "w" in mode:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return open(path, mode, *args, **kwargs)
checkpoint_io.open = killing_open
sys.exit(main(["pretrain", recipe]))
"""


class Payload:
    """Unpickling it writes ``marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _pretrain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``geocl pretrain ARGS`` in-process: (exit status, stdout, stderr), with no traceback allowed."""
    code = main(["pretrain", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("geocl pretrain: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _loss_line(out: str) -> str:
    return next(line for line in out.splitlines() if "final loss" in line)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_tiles: Path) -> Path:
    """A finished two-epoch run (3 steps an epoch), never interrupted."""
    folder = tmp_path_factory.mktemp("reference")
    assert main(["pretrain", str(write_recipe(folder, tiny_tiles, SIMCLR))]) == 0
    return folder / "run"


def test_sigkill_between_the_epoch_checkpoint_and_last_ckpt_resumes_to_a_real_last_ckpt_and_the_true_loss(
    tmp_path: Path,
    tiny_tiles: Path,
    reference: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR))
    checkpoints = tmp_path / "run" / "checkpoints"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, recipe, "2"], cwd=ROOT, capture_output=True, timeout=300, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch001.ckpt", "last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 3  # epoch 0's
    assert torch.load(checkpoints / "epoch001.ckpt", weights_only=True)["global_step"] == 6  # the finished run
    assert not (tmp_path / "run" / "metrics.json").exists()
    epoch_file = (checkpoints / "epoch001.ckpt").read_bytes()

    code, out, err = _pretrain(capsys, recipe, "--resume")
    assert code == 0, err
    assert f"{checkpoints / 'last.ckpt'} is older; resuming from {checkpoints / 'epoch001.ckpt'}" in caplog.text
    done = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ref = json.loads((reference / "metrics.json").read_text())
    assert done["global_step"] == ref["global_step"] == 6 and done["epochs"] == ref["epochs"] == 2
    assert done["final_loss"] == ref["final_loss"] is not None  # the true loss, not nan
    assert _loss_line(out).startswith(f"simclr: 6 steps, final loss {ref['final_loss']:.4f}, ")
    assert done["checkpoint"] == str(checkpoints / "last.ckpt")
    assert (checkpoints / "epoch001.ckpt").read_bytes() == epoch_file  # resumed from: kept
    assert (checkpoints / "last.ckpt").read_bytes() == epoch_file  # a real last.ckpt: the newest checkpoint
    ours = torch.load(checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    theirs = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)

    # a rerun finds the run complete: the same loss, and nothing rewritten
    before = _files(tmp_path / "run" / "checkpoints") | {
        "metrics.json": (tmp_path / "run" / "metrics.json").read_bytes()
    }
    code, out, err = _pretrain(capsys, recipe, "--resume")
    assert code == 0, err
    assert _loss_line(out).startswith(f"simclr: 6 steps, final loss {ref['final_loss']:.4f}")
    after = _files(tmp_path / "run" / "checkpoints") | {
        "metrics.json": (tmp_path / "run" / "metrics.json").read_bytes()
    }
    assert after == before


@pytest.mark.parametrize("damage", ["deleted", "truncated", "text"])
def test_a_finished_run_whose_last_ckpt_is_gone_or_damaged_resumes_to_its_true_loss_and_a_real_last_ckpt(
    damage: str, tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR, trainer={"max_epochs": 1}))
    assert main(["pretrain", recipe]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    last, epoch = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "epoch000.ckpt"
    record, epoch_file = (run / "metrics.json").read_bytes(), epoch.read_bytes()
    if damage == "deleted":
        last.unlink()
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[:1000])
    else:
        last.write_text("not a checkpoint\n")

    code, out, err = _pretrain(capsys, recipe, "--resume")
    assert code == 0, err
    assert _loss_line(out).startswith(f"simclr: 3 steps, final loss {json.loads(record)['final_loss']:.4f}")
    assert f"checkpoint: {last}" in out
    assert last.read_bytes() == epoch.read_bytes() == epoch_file
    assert (run / "metrics.json").read_bytes() == record


def test_the_loss_of_a_resumed_finished_run_comes_from_its_logs_when_its_checkpoint_keeps_none(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a checkpoint of an older geocl (no EpochLoss state) with metrics.json gone: the CSV log has the loss
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR, trainer={"max_epochs": 1}))
    assert main(["pretrain", recipe]) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    loss = json.loads((run / "metrics.json").read_text())["final_loss"]
    (run / "metrics.json").unlink()
    (run / "checkpoints" / "last.ckpt").unlink()
    epoch = run / "checkpoints" / "epoch000.ckpt"
    checkpoint = torch.load(epoch, weights_only=True)
    checkpoint["callbacks"] = {key: value for key, value in checkpoint["callbacks"].items() if "EpochLoss" not in key}
    torch.save(checkpoint, epoch)

    code, out, err = _pretrain(capsys, recipe, "--resume")
    assert code == 0, err
    assert json.loads((run / "metrics.json").read_text())["final_loss"] == pytest.approx(loss, rel=1e-6)
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == epoch.read_bytes()


def test_every_checkpoint_read_of_a_resume_is_weights_only_lightnings_included(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR, trainer={"max_epochs": 1, "limit_train_batches": 1}))
    assert main(["pretrain", recipe]) == 0
    capsys.readouterr()
    calls: list[Any] = []
    real_load = torch.load

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    code, out, err = _pretrain(capsys, recipe, "trainer.max_epochs=2", "--resume")
    assert code == 0, err
    assert len(calls) >= 2 and all(value is True for value in calls), calls  # progress probe and Lightning's restore
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == 2


def test_lightnings_load_through_the_checkpoint_writer_refuses_a_payload_even_when_asked_for_pickles(
    tmp_path: Path,
) -> None:
    marker, crafted = tmp_path / "marker", tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 1, "payload": Payload(marker)}, crafted)
    with pytest.raises(GeoclError) as error:
        AtomicCheckpointIO().load_checkpoint(crafted, weights_only=False)
    assert str(error.value).startswith(f"{crafted}: holds a Python object (exec)")
    assert "\n" not in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["payload", "text", "empty", "folder", "finetune"])
def test_resume_from_a_last_ckpt_that_is_no_checkpoint_of_the_run_names_it_in_one_line(
    kind: str, tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = str(write_recipe(tmp_path, tiny_tiles, SIMCLR))
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    last, marker = checkpoints / "last.ckpt", tmp_path / "marker"
    expected = {
        "payload": "last.ckpt holds a Python object (exec), and geocl reads only tensors and plain data from files",
        "text": "last.ckpt is not a checkpoint: torch.save writes a zip archive, this file begins with 'epoch: 3'",
        "empty": "last.ckpt is empty (0 bytes), not a checkpoint",
        "folder": "last.ckpt is a folder, not a checkpoint file",
        "finetune": "last.ckpt is a finetuning checkpoint, made by `geocl finetune`, not a pretraining checkpoint",
    }[kind]
    if kind == "payload":
        torch.save(
            {"state_dict": {}, "geocl": {"in_chans": 4}, "epoch": 9, "global_step": 99, "x": Payload(marker)}, last
        )
    elif kind == "text":
        last.write_text("epoch: 3\nglobal_step: 9\n")
    elif kind == "empty":
        last.write_bytes(b"")
    elif kind == "folder":
        last.mkdir()
    else:
        torch.save({"state_dict": {}, "epoch": 0, "global_step": 3, "geocl_segmenter": {"classes": [1]}}, last)
    before = _files(tmp_path / "run")

    code, _, err = _pretrain(capsys, recipe, "--resume")
    assert code == 2
    line = _error_line(err)
    assert line.startswith(f"geocl pretrain: error: {checkpoints}: cannot resume: {expected}"), line
    assert line.endswith("no other checkpoint of the run is left; start a new run (another out, or remove this folder)")
    assert not marker.exists()
    assert _files(tmp_path / "run") == before


class _Colour(Enum):
    RED = "red"


def test_checkpoints_store_plain_data_only(tmp_path: Path) -> None:
    state = torch.nn.BatchNorm2d(2).state_dict()
    checkpoint = {
        "state_dict": state,
        "hyper_parameters": {
            "scale": np.float32(0.5),
            "steps": np.int64(3),
            "mean": np.array([1.0, 2.0]),
            "root": Path("/data"),
            "colour": _Colour.RED,
            "pair": (1, np.float64(2.0)),
            "nested": OrderedDict(a=[Path("x")]),
        },
    }
    plain = plain_data(checkpoint)
    assert plain["state_dict"] is state  # tensors untouched, the state dict (and its _metadata) kept as it is
    assert plain["hyper_parameters"] == {
        "scale": 0.5,
        "steps": 3,
        "mean": [1.0, 2.0],
        "root": "/data",
        "colour": "red",
        "pair": (1, 2.0),
        "nested": OrderedDict(a=["x"]),
    }
    AtomicCheckpointIO().save_checkpoint(checkpoint, tmp_path / "plain.ckpt")
    loaded = torch.load(tmp_path / "plain.ckpt", weights_only=True)
    assert loaded["hyper_parameters"]["root"] == "/data" and loaded["state_dict"]._metadata == state._metadata
    with pytest.raises(TypeError, match=r"checkpoint\['hyper_parameters'\]\['hook'\] holds a builtins.function"):
        plain_data({"hyper_parameters": {"hook": lambda: None}})


def test_a_full_disk_under_a_finetuning_run_does_not_point_at_resume(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    error = storage_error(full, tmp_path / "best.ckpt", tmp_path / "best.ckpt", resumable=False)
    assert str(error) == f"no space left writing {tmp_path / 'best.ckpt'}; free space and rerun"


def test_a_run_folder_moved_elsewhere_resumes_there(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the recipe's out follows the folder (as compare's pretrain/<recipe> does when a comparison is moved)
    first = write_recipe(tmp_path / "a", tiny_tiles, SIMCLR, trainer={"max_epochs": 1})
    assert main(["pretrain", str(first)]) == 0
    capsys.readouterr()
    moved = tmp_path / "b" / "run"
    moved.parent.mkdir()
    (tmp_path / "a" / "run").rename(moved)
    code, out, err = _pretrain(capsys, str(first), f"out={moved}", "trainer.max_epochs=2", "--resume")
    assert code == 0, err
    assert _loss_line(out).startswith("simclr: 6 steps") and f"checkpoint: {moved / 'checkpoints' / 'last.ckpt'}" in out
