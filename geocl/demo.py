"""The main job on the embedded scene, as ``make demo`` runs it.

Today: make the labelled scene, tile it with its mask, open the training tiles
through the fast tile dataset and print a summary. Later stages (pretraining,
finetuning, the comparison table) extend this pipeline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from geocl.data.synthetic import CLASS_NAMES, make_scene, nearest_class_mean_miou
from geocl.data.tile_dataset import IGNORE_INDEX, TileDataset
from geocl.data.tiler import TilingOptions, tile_scene
from geocl.report.maps import plot_tile_index


def run_demo(out: str | os.PathLike[str], *, size: int = 4096, seed: int = 0) -> dict[str, object]:
    """Run the demo pipeline into ``out`` and print what it made.

    Args:
        out: output folder (``scene/``, ``tiles/``, ``plots/``); reruns reuse finished steps.
        size: side of the embedded scene (px).
        seed: seed of the scene and of the split.

    Returns:
        A summary dict (tile counts per split, class shares of the train tiles, paths).
    """
    out = Path(out)
    start = time.perf_counter()
    scene = make_scene(out / "scene", size=size, seed=seed)
    baseline = nearest_class_mean_miou(scene.image, scene.mask, seed=seed)
    print(f"[1/3] scene   {scene.image} ({size} x {size} px) + {scene.mask.name}")
    print(f"              per-pixel spectral baseline (nearest class mean): mIoU {baseline:.3f}")

    # 4 x 4 split blocks whatever the scene size, so every split gets some
    options = TilingOptions(size=256, stride=256, max_nodata=0.2, split_block=max(256, size // 4), seed=seed)
    tiling = tile_scene(scene.image, out / "tiles", mask=scene.mask, options=options)
    print("[2/3] tiles   " + tiling.describe().replace("\n", "\n              "))
    split_map = plot_tile_index(out / "tiles", out / "plots" / "tiles.png")

    train = TileDataset(out / "tiles", "train")
    loader = DataLoader(train, batch_size=16, num_workers=2, shuffle=False)
    counts = torch.zeros(len(train.classes), dtype=torch.long)
    for batch in loader:
        labels = batch["mask"][batch["mask"] != IGNORE_INDEX]
        counts += torch.bincount(labels, minlength=len(train.classes))
    shares = (counts / counts.sum()).tolist()
    names = [CLASS_NAMES[value] if value < len(CLASS_NAMES) else str(value) for value in train.classes]
    print(f"[3/3] loader  {len(train)} train tiles, image {tuple(batch['image'].shape[1:])}, bands normalised")
    print("              train class shares: " + ", ".join(f"{n} {s:.1%}" for n, s in zip(names, shares)))
    print(f"plots: {split_map}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return {
        "baseline_miou": baseline,
        "splits": tiling.splits,
        "class_shares": dict(zip(names, np.round(shares, 4).tolist())),
        "plots": [str(split_map)],
    }
