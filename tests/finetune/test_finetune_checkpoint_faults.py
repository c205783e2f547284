"""Checkpoints given to `geocl finetune --encoder`, `geocl predict` and `geocl evaluate` that are not what they seem,
and `geocl finetune` into a folder holding a run made otherwise.

Each bad file ends the command with exit 2 and one line naming it, no traceback; a
crafted payload never runs (every read is ``torch.load(weights_only=True)``). A folder
holding a finetuning run is refused with each option that differs named, the encoder
checkpoint compared by path and by content.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.cli import main
from geocl.models.checkpoints import read_checkpoint
from geocl.recipes.schema import OptimizerConfig
from tests.conftest import write_recipe

#: Fast finetuning options of the command line.
FAST = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--crop", "32", "--no-progress"]


class Payload:
    """Unpickling it writes ``marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``geocl ARGS`` in-process: (exit status, the one error line), with no traceback allowed."""
    code = main(list(args))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith(f"geocl {args[0]}: error: ")]
    assert code == 0 or len(lines) == 1, captured.err
    return code, lines[0] if lines else ""


def _digests(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, tiny_tiles: Path) -> Path:
    folder = tmp_path_factory.mktemp("pretrain")
    recipe = write_recipe(folder, tiny_tiles, {"name": "simclr"}, trainer={"max_epochs": 1, "limit_train_batches": 1})
    assert main(["pretrain", str(recipe)]) == 0
    return folder / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory, tiny_tiles: Path, pretrained: Path) -> Path:
    out = tmp_path_factory.mktemp("finetune") / "run"
    assert main(["finetune", "--tiles", str(tiny_tiles), "--out", str(out), "--encoder", str(pretrained), *FAST]) == 0
    return out


@pytest.fixture(scope="module")
def bad_files(
    tmp_path_factory: pytest.TempPathFactory, pretrained: Path, finetuned: Path
) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the one line says about it)."""
    folder = tmp_path_factory.mktemp("bad")
    text, empty, directory = folder / "notes.ckpt", folder / "empty.ckpt", folder / "folder.ckpt"
    text.write_text("epoch: 3\nlr: 0.1\n")
    empty.write_bytes(b"")
    directory.mkdir()
    truncated = folder / "truncated.ckpt"
    truncated.write_bytes(pretrained.read_bytes()[:4096])
    # an older geocl stored recipe sections as pydantic models in the hyper-parameters
    old = folder / "old.ckpt"
    checkpoint = torch.load(pretrained, weights_only=True)
    checkpoint["hyper_parameters"]["optimizer"] = OptimizerConfig()
    torch.save(checkpoint, old)
    binary = folder / "legacy.ckpt"  # a pickle as PyTorch wrote before 1.6
    binary.write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.")
    damaged = folder / "damaged.ckpt"  # entries of geocl's left out
    torch.save(
        {"state_dict": {"w": torch.zeros(1)}, "geocl": {}, "geocl_segmenter": {}, "hyper_parameters": {}}, damaged
    )
    return {
        "text": (text, "is not a checkpoint: torch.save writes a zip archive, this file begins with 'epoch: 3'"),
        "binary": (
            binary,
            "is not a checkpoint: torch.save writes a zip archive, this file begins with the bytes "
            "80 02 8a 0a 6c fc 9c 46",
        ),
        "empty": (empty, "is empty (0 bytes), not a checkpoint"),
        "folder": (directory, "is a folder, not a checkpoint file"),
        "missing": (folder / "missing.ckpt", "does not exist (no such checkpoint file)"),
        "truncated": (
            truncated,
            "cannot be read: truncated or damaged (PytorchStreamReader failed reading zip archive",
        ),
        "damaged": (damaged, ""),
        "old": (
            old,
            "holds a Python object (geocl.recipes.schema.OptimizerConfig), and geocl reads only tensors and "
            "plain data from files, so that opening a file runs no code; it was written by an older geocl or "
            "another program: make it again with this geocl",
        ),
    }


def _commands(tiny_tiles: Path, tmp_path: Path, checkpoint: Path) -> dict[str, list[str]]:
    scene = tiny_tiles.parent / "scene" / "image.tif"
    return {
        "finetune": [
            "finetune",
            "--tiles",
            str(tiny_tiles),
            "--out",
            str(tmp_path / "ft"),
            "--encoder",
            str(checkpoint),
            *FAST,
        ],
        "predict": ["predict", str(checkpoint), str(scene), "--out", str(tmp_path / "pred.tif")],
        "evaluate": ["evaluate", str(checkpoint), "--data", str(tmp_path), "--format", "image_folder"],
    }


@pytest.mark.parametrize("command", ["finetune", "predict", "evaluate"])
@pytest.mark.parametrize("name", ["text", "binary", "empty", "folder", "missing", "truncated", "old"])
def test_a_file_that_is_no_usable_checkpoint_is_named_in_one_line(
    command: str,
    name: str,
    bad_files: dict[str, tuple[Path, str]],
    tiny_tiles: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, says = bad_files[name]
    code, line = _run(capsys, *_commands(tiny_tiles, tmp_path, path)[command])
    assert code == 2
    assert line.startswith(f"geocl {command}: error: {path}: {says}"), line
    assert not (tmp_path / "pred.tif").exists() and not (tmp_path / "ft" / "metrics.json").exists()


@pytest.mark.parametrize("command", ["finetune", "predict", "evaluate"])
def test_a_crafted_payload_never_runs(
    command: str, tiny_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker, crafted = tmp_path / "marker", tmp_path / "crafted.ckpt"
    stolen = {"state_dict": {}, "geocl": {"in_chans": 4}, "geocl_segmenter": {"in_chans": 4}, "x": Payload(marker)}
    torch.save(stolen, crafted)
    code, line = _run(capsys, *_commands(tiny_tiles, tmp_path, crafted)[command])
    assert code == 2
    assert line == (
        f"geocl {command}: error: {crafted}: holds a Python object (exec), and geocl reads only tensors and plain data "
        "from files, so that opening a file runs no code; it was written by an older geocl or another program: "
        "make it again with this geocl"
    )
    assert not marker.exists()


def test_a_checkpoint_of_the_other_kind_says_which_kind_it_is(
    pretrained: Path, finetuned: Path, tiny_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = finetuned / "checkpoints" / "best.ckpt"
    for command in ("finetune", "evaluate"):
        code, line = _run(capsys, *_commands(tiny_tiles, tmp_path, best)[command])
        assert code == 2 and line == (
            f"geocl {command}: error: {best}: is a finetuning checkpoint, made by `geocl finetune`, "
            "not a pretraining checkpoint (made by `geocl pretrain`)"
        )
    code, line = _run(capsys, *_commands(tiny_tiles, tmp_path, pretrained)["predict"])
    assert code == 2 and line == (
        f"geocl predict: error: {pretrained}: is a pretraining checkpoint, made by `geocl pretrain`, not a finetuning "
        "checkpoint (made by `geocl finetune`): finetune it first (geocl finetune --encoder ...)"
    )
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 0}, foreign)
    code, line = _run(capsys, *_commands(tiny_tiles, tmp_path, foreign)["predict"])
    assert code == 2 and line.startswith(f"geocl predict: error: {foreign}: is a checkpoint not made by geocl, not a")


@pytest.mark.parametrize("command", ["finetune", "predict", "evaluate"])
def test_a_checkpoint_missing_geocls_entries_is_called_damaged(
    command: str,
    bad_files: dict[str, tuple[Path, str]],
    tiny_tiles: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = bad_files["damaged"][0]
    code, line = _run(capsys, *_commands(tiny_tiles, tmp_path, path)[command])
    kind = (
        "finetuning checkpoint without its in_chans, classes"
        if command == "predict"
        else ("pretraining checkpoint without its band count or encoder name")
    )
    assert code == 2 and line.startswith(f"geocl {command}: error: {path}: is a {kind}"), line


def test_checkpoints_geocl_writes_read_back_with_weights_only(pretrained: Path, finetuned: Path) -> None:
    for path in (pretrained, finetuned / "checkpoints" / "best.ckpt"):
        assert torch.load(path, weights_only=True)["state_dict"]
        assert read_checkpoint(path)["state_dict"]


# ------------------------------------------------------------------ a folder holding a run


def _refusal(capsys: pytest.CaptureFixture[str], tiles: Path, out: Path, *args: str) -> str:
    before = _digests(out)
    code, line = _run(capsys, "finetune", "--tiles", str(tiles), "--out", str(out), *FAST, *args)
    assert code == 2
    assert _digests(out) == before  # the run found there is left as it was
    assert line.startswith(
        f"geocl finetune: error: {out}: holds a finetuning run (metrics.json, checkpoints/best.ckpt)"
    )
    assert line.endswith(
        "a new run there would mix its model and figures with the old ones: choose another --out, "
        "or delete the folder to redo the run"
    )
    return line


def test_a_finished_folder_names_each_option_that_differs_the_encoder_checkpoint_by_path_and_content(
    tmp_path: Path,
    tiny_tiles: Path,
    pretrained: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoder = tmp_path / "encoder.ckpt"
    shutil.copyfile(pretrained, encoder)
    out = tmp_path / "ft"
    assert main(["finetune", "--tiles", str(tiny_tiles), "--out", str(out), "--encoder", str(encoder), *FAST]) == 0
    options = json.loads((out / "metrics.json").read_text())["options"]
    assert options["encoder_checkpoint"] == str(encoder) and options["lr"] == 0.001 and options["max_epochs"] == 1
    assert options["encoder_checkpoint_sha256"] == hashlib.sha256(encoder.read_bytes()).hexdigest()

    # the same options, the checkpoint named by a relative path
    monkeypatch.chdir(tmp_path)
    assert "made with the same options;" in _refusal(capsys, tiny_tiles, out, "--encoder", "encoder.ckpt")
    # another encoder checkpoint, or none
    other = tmp_path / "other.ckpt"
    shutil.copyfile(pretrained, other)
    assert f"made with other options: encoder checkpoint {encoder} (now {other});" in _refusal(
        capsys, tiny_tiles, out, "--encoder", str(other)
    )
    assert f"made with other options: encoder checkpoint {encoder} (now none (random init));" in _refusal(
        capsys, tiny_tiles, out, "--encoder-name", "test_resnet"
    )
    # the options the old message did not compare
    assert "made with other options: max_epochs 1 (now 2), lr 0.001 (now 0.01), freeze_encoder False (now True);" in (
        _refusal(
            capsys, tiny_tiles, out, "--encoder", str(encoder), "--epochs", "2", "--lr", "0.01", "--freeze-encoder"
        )
    )
    # the same path holding another pretraining since
    old_sha = options["encoder_checkpoint_sha256"]
    checkpoint = torch.load(encoder, weights_only=True)
    checkpoint["global_step"] += 1
    torch.save(checkpoint, encoder)
    new_sha = hashlib.sha256(encoder.read_bytes()).hexdigest()
    assert (
        f"made with other options: encoder checkpoint content sha256 {old_sha[:12]} (now sha256 {new_sha[:12]});"
    ) in _refusal(capsys, tiny_tiles, out, "--encoder", str(encoder))


def test_a_folder_of_an_older_geocl_never_says_the_same_options_for_options_it_did_not_record(
    tmp_path: Path, tiny_tiles: Path, finetuned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "old"
    shutil.copytree(finetuned, out)
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["options"]  # what geocl recorded before
    (out / "metrics.json").write_text(json.dumps(metrics))
    encoder = metrics["encoder_checkpoint"]
    line = _refusal(capsys, tiny_tiles, out, "--encoder", encoder, "--lr", "0.5")
    assert "made with the same options" not in line
    assert "it does not record tiles, max_epochs, steps_per_epoch, val_every, patience, batch_size, lr" in line
    assert "encoder checkpoint content" in line
    # a random init is told apart from a run that started from a checkpoint, recorded or not
    assert f"encoder checkpoint {encoder} (now none (random init))" in _refusal(
        capsys, tiny_tiles, out, "--encoder-name", "test_resnet"
    )
    assert os.path.exists(out / "checkpoints" / "best.ckpt")
