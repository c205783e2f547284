"""Model speed after and during scene streaming, as ratios against a fresh process (one run).

Streaming a scene fixes glibc's mmap threshold low so that memory does not grow with the
scene (geocl.data.rasters.bounded_memory); a model run under that threshold maps every
activation afresh and ran 1.9x slower. This prints the forward-pass time of a resnet18
(batch 8, 4 bands, 128 px) after a tiling, while streaming, and in a model call while
streaming, each against the same process before any streaming. Targets: <= 1.15.

    .venv/bin/python benchmarks/compute_after_streaming.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import timm
import torch

from geocl.data.malloc import computing, malloc_tuning
from geocl.data.rasters import bounded_memory
from geocl.data.synthetic import make_scene
from geocl.data.tiler import TilingOptions, tile_scene


def forward_seconds(model: torch.nn.Module, batch: torch.Tensor, repeats: int = 20) -> float:
    with torch.no_grad():
        for _ in range(3):
            model(batch)
        start = time.perf_counter()
        for _ in range(repeats):
            model(batch)
    return time.perf_counter() - start


def main() -> None:
    with malloc_tuning():  # as every geocl command runs
        measure()


def measure() -> None:
    model = timm.create_model("resnet18", in_chans=4, features_only=True).eval()
    batch = torch.randn(8, 4, 128, 128)
    with tempfile.TemporaryDirectory() as folder:
        scene = make_scene(Path(folder) / "scene", size=1024, seed=0)
        fresh = forward_seconds(model, batch)
        tile_scene(scene.image, Path(folder) / "tiles", options=TilingOptions(size=128, stride=128), progress=False)
        after = forward_seconds(model, batch)
        with bounded_memory():
            with computing():
                inside = forward_seconds(model, batch)
    print(f"resnet18 forward, fresh process: {fresh:.2f} s")
    print(f"after a tiling:          {after / fresh:.2f} x (target <= 1.15)")
    print(f"model call in streaming: {inside / fresh:.2f} x (target <= 1.15)")


if __name__ == "__main__":
    main()
