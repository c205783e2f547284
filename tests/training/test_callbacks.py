"""geocl's progress bar on real pretraining and finetuning runs."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from geocl.finetune.train import run_finetune
from geocl.methods import load_recipe
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe


def _bar_lines(captured: pytest.CaptureResult[str]) -> list[str]:
    """The training bar's lines (Lightning draws them on stdout)."""
    return [line for line in re.split(r"[\r\n]", captured.out + captured.err) if line.lstrip().startswith("epoch ")]


def test_pretraining_bar_shows_the_loss_by_its_short_name_the_probe_and_no_logger_version(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_pretrain(load_recipe(write_recipe(tmp_path, tiny_tiles, {"name": "simclr"}, trainer={"max_epochs": 1})))
    lines = _bar_lines(capsys.readouterr())
    assert lines, "no progress bar was drawn"
    last = lines[-1]
    assert "loss=" in last
    assert "v_num" not in last and "train/" not in last and "_step" not in last and "_epoch" not in last
    # the representation monitor (on by default for a labelled tile set): last probe and the random init's
    assert "monitor/" not in last
    shown = re.search(r"probe=(\d\.\d\d) \(init (\d\.\d\d)\)", last)
    assert shown, last
    probed = pd.read_csv(tmp_path / "run" / "logs" / "version_0" / "metrics.csv").dropna(subset=["monitor/miou"])
    assert probed["step"].tolist() == [0, 3]  # the random init and the last step
    assert shown.groups() == (f"{probed['monitor/miou'].iloc[-1]:.2f}", f"{probed['monitor/miou'].iloc[0]:.2f}")


def test_finetuning_draws_one_bar_with_the_validation_score(
    tmp_path: Path, tiny_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_finetune(
        tiles=tiny_tiles,
        out=tmp_path / "ft",
        label_fraction=0.5,
        max_epochs=2,
        val_every=1,
        steps_per_epoch=2,
        batch_size=4,
        crop=32,
        encoder="test_resnet",
        progress=True,
    )
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Validation" not in text and "Testing" not in text  # the passes draw no bars of their own
    assert "Training" not in text and "Epoch" not in text  # Lightning's labels
    lines = _bar_lines(captured)
    assert lines and "val/miou=" in lines[-1] and "loss=" in lines[-1] and "v_num" not in text
    assert lines[0].startswith("epoch 1/2") and lines[-1].startswith("epoch 2/2")  # counted from 1, of the budget


def test_the_loss_plot_is_redrawn_at_most_once_an_interval_and_always_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one-step epochs of a small tile set would otherwise redraw the PNG at every step
    from geocl.training import callbacks

    clock = [100.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    plot = callbacks.LossCurvePlot(Path("unused.png"), every_s=30.0)
    drawn: list[float] = []
    monkeypatch.setattr(plot, "_draw", lambda trainer, module: drawn.append(clock[0]))
    for now in (100.0, 110.0, 129.9, 130.0, 140.0, 175.0):
        clock[0] = now
        plot.on_train_epoch_end(None, None)  # type: ignore[arg-type]
    assert drawn == [100.0, 130.0, 175.0]
    plot.on_train_end(None, None)  # type: ignore[arg-type]
    assert drawn == [100.0, 130.0, 175.0, 175.0]
