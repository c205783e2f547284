"""The main job on the embedded scene, as ``make demo`` runs it.

make the labelled scene -> tile it with its mask -> pretrain SimCLR and GraSS (small
budgets) -> finetune at 5 % labels, with a random-init row -> print the comparison
table and where the PNGs are. Every step reuses what a previous run finished.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geocl.data.synthetic import make_scene
from geocl.data.tiler import TilingOptions, tile_scene
from geocl.evaluation.spectral_baseline import nearest_class_mean_miou
from geocl.report.maps import plot_tile_index

#: Recipes the demo compares (CPU-sized).
DEMO_RECIPES = ("simclr.yaml", "grass.yaml")
#: Finetuning options of the demo: run_finetune's training budget (15 epochs x 10 steps,
#: as for the figures of `geocl compare`; 10 epochs left SimCLR at 0.18), validated every
#: 5 epochs instead of 3, which saves two val passes (about 20 s) per finetune.
DEMO_FINETUNE: dict[str, Any] = {"val_every": 5}


def recipes_folder() -> Path:
    """The ``recipes/`` folder of the checkout geocl runs from."""
    return Path(__file__).resolve().parents[1] / "recipes"


def run_demo(
    out: str | os.PathLike[str],
    *,
    size: int = 4096,
    seed: int = 0,
    label_fraction: float = 0.05,
    overrides: Sequence[str] = (),
    finetune: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the demo pipeline into ``out`` and print what it made.

    Args:
        out: output folder (``scene/``, ``tiles/``, ``compare/``, ``plots/``).
        size: side of the embedded scene (px).
        seed: seed of the scene and the split.
        label_fraction: labelled fraction of the train tiles for finetuning.
        overrides: recipe overrides for every pretraining (e.g. a smaller budget).
        finetune: finetuning options (default :data:`DEMO_FINETUNE`).

    Returns:
        A summary dict: split counts, the spectral baseline, the results table and plots.
    """
    import geocl.methods  # noqa: F401  (registers the methods' recipe sections)
    from geocl.recipes.options import CompareOptions, FinetuneOptions
    from geocl.training.compare import run_compare

    out = Path(out)
    start = time.perf_counter()
    scene = make_scene(out / "scene", size=size, seed=seed)
    baseline = nearest_class_mean_miou(scene.image, scene.mask, seed=seed)
    print(f"[1/4] scene     {scene.image} ({size} x {size} px) + {scene.mask.name}")
    print(f"                per-pixel spectral baseline (nearest class mean): mIoU {baseline:.3f}")

    # 4 x 4 split blocks whatever the scene size, so every split gets some
    options = TilingOptions(size=256, stride=256, max_nodata=0.2, split_block=max(256, size // 4), seed=seed)
    tiles = out / "tiles"
    tiling = tile_scene(scene.image, tiles, mask=scene.mask, options=options)
    split_map = plot_tile_index(tiles, out / "plots" / "tiles.png")
    print("[2/4] tiles     " + tiling.describe().replace("\n", "\n                "))

    print(f"[3/4] pretrain  {', '.join(DEMO_RECIPES)} -> [4/4] finetune at {label_fraction:.0%} labels")
    compare_out = out / "compare"
    results = run_compare(
        CompareOptions(
            recipes=[recipes_folder() / name for name in DEMO_RECIPES],
            label_fractions=[label_fraction],
            seeds=1,
            out=compare_out,
            overrides=[f"data.tiles={tiles}", f"seed={seed}", *overrides],
            finetune=FinetuneOptions(**(DEMO_FINETUNE if finetune is None else finetune)),
        )
    )
    plots = [split_map, compare_out / "results.png", *sorted(compare_out.glob("pretrain/*/plots/*.png"))]
    print("plots:\n  " + "\n  ".join(str(path) for path in plots))
    print(f"done in {time.perf_counter() - start:.0f} s")
    return {
        "baseline_miou": baseline,
        "splits": tiling.splits,
        "results": results,
        "plots": [str(path) for path in plots],
    }
