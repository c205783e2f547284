"""Training curves as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from geocl.io import save_figure


def read_lightning_csv(logs: str | os.PathLike[str]) -> pd.DataFrame:
    """All ``metrics.csv`` under a Lightning CSV log folder, one row per step.

    A resumed run writes a new ``version_*`` folder and repeats the steps after its
    checkpoint; the later version wins.
    """
    frames = []
    for number, path in enumerate(sorted(Path(logs).glob("version_*/metrics.csv"), key=_version)):
        frame = pd.read_csv(path)
        frame["version"] = number
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    metrics = pd.concat(frames, ignore_index=True)
    return metrics


def _version(path: Path) -> int:
    return int(path.parent.name.removeprefix("version_"))


#: The representation monitor's logged score (:mod:`geocl.training.monitor`).
MONITOR_KEY = "monitor/miou"


def plot_loss_curve(logs: str | os.PathLike[str], out_png: str | os.PathLike[str], title: str = "") -> Path | None:
    """Plot step and epoch training loss from Lightning CSV logs; None when nothing is logged yet.

    Where the logs hold the representation monitor's ``monitor/miou``, a second panel
    below draws it against the same steps, with its step-0 value (the random-init
    encoder) as a dashed horizontal line.
    """
    metrics = read_lightning_csv(logs)
    if metrics.empty or "train/loss_step" not in metrics:
        return None
    monitor = pd.DataFrame()
    if MONITOR_KEY in metrics:
        monitor = metrics.dropna(subset=[MONITOR_KEY]).drop_duplicates("step", keep="last").sort_values("step")
    # a bare Figure draws with the Agg canvas: no pyplot state, no backend switch
    figure = Figure(figsize=(7, 4) if monitor.empty else (7, 6))
    if monitor.empty:
        axes = figure.subplots()
    else:
        axes, probe = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    steps = metrics.dropna(subset=["train/loss_step"]).drop_duplicates("step", keep="last")
    axes.plot(steps["step"], steps["train/loss_step"], lw=0.8, alpha=0.6, label="step")
    if "train/loss_epoch" in metrics:
        epochs = metrics.dropna(subset=["train/loss_epoch"]).drop_duplicates("epoch", keep="last")
        axes.plot(epochs["step"], epochs["train/loss_epoch"], "o-", label="epoch mean")
    axes.set_ylabel("contrastive loss")
    axes.set_title(title)
    axes.legend()
    if not monitor.empty:
        probe.plot(monitor["step"], monitor[MONITOR_KEY], "o-", color="tab:green", label="kNN probe, val tiles")
        initial = monitor[monitor["step"] == 0]
        if not initial.empty:
            value = float(initial[MONITOR_KEY].iloc[-1])
            probe.axhline(value, ls="--", color="grey", label=f"random init ({value:.2f})")
        probe.set_ylabel("probe mIoU")
        probe.legend()
        axes = probe
    axes.set_xlabel("optimizer step")
    figure.tight_layout()
    return save_figure(figure, out_png)
