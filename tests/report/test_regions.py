"""The region-map overlay picture (geocl/report/regions.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geocl.report.regions import plot_box_areas, plot_region_overlay


def test_overlay_png_is_written(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:96, 0:128]
    rgb = np.stack([rows / 96, cols / 128, np.full((96, 128), 0.3)], axis=-1)
    heat = np.exp(-((rows - 30.0) ** 2 + (cols - 90.0) ** 2) / 300.0)
    heat[80:, :20] = np.nan
    out = plot_region_overlay(tmp_path / "plots" / "overlay.png", rgb, heat, [(20, 41, 78, 103), None, (0, 10, 0, 10)])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
    assert [p.name for p in out.parent.iterdir()] == ["overlay.png"]


def test_box_area_curve_is_drawn_from_the_logged_epochs_and_skipped_without_them(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "version_0").mkdir(parents=True)
    rows = "epoch,step,train/box_area,train/loss_step\n0,0,,4.0\n1,1,0.62,\n2,2,0.55,\n"
    (logs / "version_0" / "metrics.csv").write_text(rows)
    png = plot_box_areas(logs, tmp_path / "plots" / "box_area.png", title="grass")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (logs / "version_0" / "metrics.csv").write_text("epoch,step,train/loss_step\n0,0,4.0\n")
    assert plot_box_areas(logs, tmp_path / "other.png") is None and not (tmp_path / "other.png").exists()
