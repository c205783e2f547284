"""The demo pipeline end to end on a small embedded scene."""

from __future__ import annotations

from pathlib import Path

import pytest

from geocl.data.synthetic import CLASS_NAMES
from geocl.demo import run_demo


def test_demo_makes_scene_tiles_plot_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = run_demo(tmp_path / "demo", size=1024)
    printed = capsys.readouterr().out
    assert all(count > 0 for count in summary["splits"].values())
    shares = summary["class_shares"]
    assert set(shares) <= set(CLASS_NAMES) and len(shares) >= 5
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert 0.0 < summary["baseline_miou"] < 0.9
    plot = Path(summary["plots"][0])
    assert plot.read_bytes()[:4] == b"\x89PNG" and str(plot) in printed
    # a rerun reuses the scene and the tiles
    again = run_demo(tmp_path / "demo", size=1024)
    assert again["splits"] == summary["splits"]
    assert "already there" in capsys.readouterr().out
