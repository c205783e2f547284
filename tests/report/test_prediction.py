"""The prediction preview picture (geocl/report/prediction.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geocl.report.prediction import plot_prediction_preview
from tests.conftest import RasterWriter


def test_preview_png_is_written_beside_the_prediction(tmp_path: Path, write_raster: RasterWriter) -> None:
    scene = write_raster(tmp_path / "scene.tif", np.arange(3 * 30 * 40, dtype=np.uint16).reshape(3, 30, 40))
    classes = np.where(np.arange(40)[None, :] < 20, 3, 7).repeat(30, axis=0).astype(np.uint8)
    classes[:5] = 255
    prediction = write_raster(tmp_path / "out" / "pred.tif", classes, nodata=255)
    png = plot_prediction_preview(scene, prediction, [3, 7], [(255, 0, 0), (0, 0, 255)], 255)
    assert png == tmp_path / "out" / "pred.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in png.parent.iterdir()) == ["pred.png", "pred.tif"]  # no temporary left
