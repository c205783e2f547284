"""Memory of predict does not grow with the scene's width or height.

Two measures, both as ratios (stable where times are not):

* in the default suite, the peak of the Python-tracked allocations (numpy buffers:
  strips, reads, probabilities, polygon coordinates) in this process, by
  ``tracemalloc``: cheap and exact, but blind to GDAL's and torch's own memory;
* marked slow, the peak resident memory (``VmHWM``) of a fresh process running the
  whole prediction (classes, probabilities, COGs, polygons), which sees everything.

Each compares a scene with one 4 times wider and one 4 times taller.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from geocl.data.normalize import BandNormalizer
from geocl.finetune.predict import predict_scene

CLASSES = 8
NORMALIZER = BandNormalizer([128.0] * 3, [64.0] * 3, nodata=0)


def smooth_scene(path: Path, height: int, width: int) -> Path:
    """3 bands of uint8 waves: a smooth class map of regions some tens of px across."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    bands = [128 + 100 * np.sin(rows / 23 + k) * np.cos(cols / 31 - 2 * k) for k in range(3)]
    data = np.clip(np.stack(bands), 1, 255).astype(np.uint8)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000.0, 5_100_000.0, 10.0, 10.0),
        "tiled": True,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def model(kernel: int = 3) -> torch.nn.Module:
    """A small conv net (kernel 1: per pixel, the cheapest)."""
    torch.manual_seed(0)
    pad = kernel // 2
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, kernel, padding=pad), torch.nn.Tanh(), torch.nn.Conv2d(8, CLASSES, kernel, padding=pad)
    )


def traced_peak(scene: Path, out: Path, **options: object) -> int:
    """Peak bytes allocated through Python (numpy included) while predicting ``scene``."""
    network = model(kernel=1)
    tracemalloc.start()
    try:
        predict_scene(
            network,
            scene,
            out / "pred.tif",
            normalizer=NORMALIZER,
            class_values=range(CLASSES),
            probabilities="uint8",
            polygons=out / "pred.gpkg",
            progress=False,
            **options,  # type: ignore[arg-type]
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_traced_memory_does_not_grow_with_width_or_height(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two buffers are bounded by constants that scenes this small do not reach: the preview
    # (the scene decimated to at most 1024 px a side) and the batch of polygons written at
    # once. The first is left out, the second made small; the slow test below runs both as shipped.
    monkeypatch.setattr("geocl.finetune.predict.plot_prediction_preview", lambda *args: tmp_path / "no.png")
    monkeypatch.setattr("geocl.finetune.polygons._BATCH", 100)
    # a stride of 64 px: strips fill a 256 px row of output tiles exactly (what the writers hold back)
    options = {"window": 96, "overlap": 32, "block": 256}
    base_scene = smooth_scene(tmp_path / "base.tif", 288, 384)
    traced_peak(base_scene, tmp_path / "warm-up", **options)  # first-call imports and caches aside
    base = traced_peak(base_scene, tmp_path / "base", **options)
    wide = traced_peak(smooth_scene(tmp_path / "wide.tif", 288, 1536), tmp_path / "wide", **options)
    tall = traced_peak(smooth_scene(tmp_path / "tall.tif", 1152, 384), tmp_path / "tall", **options)
    assert wide / base <= 1.15, (base, wide)
    assert tall / base <= 1.15, (base, tall)
    # the measure sees a buffer that does grow with the width: one block as wide as the scene
    whole = traced_peak(tmp_path / "wide.tif", tmp_path / "whole", **{**options, "block": 1536})
    assert whole / base > 1.5, (base, whole)


# The child reports the high-water mark of its own address space: ru_maxrss of a child
# would also count the pages it shared with this (large) process before exec.
_CHILD = """
import sys
from pathlib import Path
import torch
from geocl.finetune.predict import predict_scene
from tests.finetune.test_predict_memory import CLASSES, NORMALIZER, model
scene, out, block = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
predict_scene(model(), scene, out / "pred.tif", normalizer=NORMALIZER, class_values=range(CLASSES), window=256,
              overlap=64, batch_size=4, probabilities="uint8", polygons=out / "pred.gpkg", block=block, progress=False)
print(next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def peak_rss(scene: Path, out: Path, block: int) -> int:
    """Peak resident memory (bytes) of a fresh process predicting ``scene``."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(scene), str(out), str(block)],
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
    )
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # three fresh processes importing torch: about a minute on 2 busy cores
def test_peak_rss_does_not_grow_with_width_or_height(tmp_path: Path) -> None:
    # 256 px windows and 8 classes over 4096 px: a strip buffer as wide as the scene would
    # take about 100 MB more at 16 384 px (ratio > 1.15); blocks of 1024 px do not grow
    base = peak_rss(smooth_scene(tmp_path / "base.tif", 256, 4096), tmp_path / "base", 1024)
    wide = peak_rss(smooth_scene(tmp_path / "wide.tif", 256, 16384), tmp_path / "wide", 1024)
    tall = peak_rss(smooth_scene(tmp_path / "tall.tif", 1024, 4096), tmp_path / "tall", 1024)
    assert wide / base <= 1.15, (base, wide)
    assert tall / base <= 1.15, (base, tall)
