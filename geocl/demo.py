"""The main job on the embedded scene, as ``make demo`` runs it.

make the labelled scene -> tile it with its mask (test blocks spread over the scene,
stratified by class) -> pretrain SimCLR and GraSS on the same step budget, each with the
online representation monitor (its curve: the lower panel of each run's
``plots/loss.png``) -> score each encoder, and a random one, with the frozen protocol (a
dense linear probe) at 5 % labels on several label subsets -> print the table with 95 %
intervals and the paired differences, and where the PNGs are. Every step reuses what a
previous run finished.

The scene is the urban one (``geocl make-scene --kind urban``, 0.2 m, the ISPRS
Potsdam/Vaihingen classes): the kind of imagery GraSS was made for (Zhang et al., TGRS
2023, arXiv 2306.15868: Potsdam and LoveDA), with cars, trees and buildings smaller than
a view, so that a crop box can hold one object. ``kind="rural"`` runs the 1 m landscape,
whose fields are larger than a view. GraSS's run also draws its mean crop-box area per
stage-2 epoch (``plots/box_area.png``) and region maps of a few tiles.

Why the frozen protocol: on 2 CPU cores the demo has minutes, and one finetuning run
moves by more than the methods differ; the probe trains only a 1x1 classifier, so
several label subsets fit the budget and the paired intervals can say something.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geocl.data.synthetic import SceneKind, make_scene
from geocl.data.tiler import TilingOptions, tile_scene
from geocl.errors import GeoclError
from geocl.evaluation.spectral_baseline import nearest_class_mean_miou
from geocl.report.maps import plot_tile_index

#: Recipes the demo compares (CPU-sized).
DEMO_RECIPES = ("simclr.yaml", "grass.yaml")
#: Probe options of the demo: 8 epochs x 10 steps at lr 1e-2, validated every 4 epochs. A linear
#: probe takes a larger step than finetuning's default 1e-3: on the rural demo's tiles (SimCLR at 40
#: steps and random init, 6 label subsets each) it reached the test mIoU of 150 steps at 1e-3
#: (0.437 vs 0.434, 0.440 vs 0.426) in 80 steps, 8.5 s a row instead of 25 s.
DEMO_FINETUNE: dict[str, Any] = {"max_epochs": 8, "val_every": 4, "lr": 1e-2}
#: Label subsets per recipe: every recipe meets the same ones, so the differences pair up; 6 is the
#: fewest pairs for which the report gives a verdict (geocl.report.paired.MIN_PAIRS).
DEMO_SUBSETS = 6
#: The scene kind of ``make demo``: urban, where objects are smaller than a view (GraSS's premise).
DEMO_KIND: SceneKind = "urban"
#: Pretraining of both recipes: the same optimizer steps and views. 96 px views, the shipped
#: recipes' size, leave GraSS a 3 x 3 map (ResNet layer4, stride 32) where 64 px left 2 x 2,
#: which no threshold can turn into a box around one object (the paper's map: 7 x 7 on 224 px).
DEMO_PRETRAIN = ["data.view_size=96", "data.num_workers=1"]
DEMO_PRETRAIN_STEPS = 40


def recipes_folder() -> Path:
    """The ``recipes/`` folder of the checkout geocl runs from."""
    return Path(__file__).resolve().parents[1] / "recipes"


def run_demo(
    out: str | os.PathLike[str],
    *,
    kind: SceneKind = DEMO_KIND,
    size: int = 2048,
    seed: int = 0,
    label_fraction: float = 0.05,
    overrides: Sequence[str] = (),
    finetune: dict[str, Any] | None = None,
    subsets: int = DEMO_SUBSETS,
    pretrain_steps: int = DEMO_PRETRAIN_STEPS,
) -> dict[str, Any]:
    """Run the demo pipeline into ``out`` and print what it made.

    Args:
        out: output folder (``scene/``, ``tiles/``, ``compare/``, ``plots/``).
        kind: the embedded scene, ``"urban"`` (0.2 m city) or ``"rural"`` (1 m landscape).
        size: side of the embedded scene (px).
        seed: seed of the scene and the split.
        label_fraction: labelled fraction of the train tiles for finetuning.
        overrides: recipe overrides for every pretraining (e.g. a smaller budget).
        finetune: probe options (default :data:`DEMO_FINETUNE`).
        subsets: label subsets per recipe (each with one training seed).
        pretrain_steps: optimizer steps of every pretraining.

    Returns:
        A summary dict: split counts, the spectral baseline, the results table and plots.

    Raises:
        GeoclError: ``out`` holds the demo of the other scene kind (its tiles and runs
            would be reused for the wrong scene; nothing is removed).
    """
    import geocl.methods  # noqa: F401  (registers the methods' recipe sections)
    from geocl.experiments import run_compare
    from geocl.recipes.compare_options import CompareOptions
    from geocl.recipes.options import FinetuneOptions

    out = Path(out)
    start = time.perf_counter()
    held = _scene_kind(out / "scene")
    if held is not None and held != kind:
        raise GeoclError(
            f"holds the demo of the {held} scene (its tiles and runs would be reused for the {kind} one): "
            "remove the folder or give another --out",
            path=out,
        )
    scene = make_scene(out / "scene", kind=kind, size=size, seed=seed)
    baseline = nearest_class_mean_miou(scene.image, scene.mask, seed=seed)
    print(f"[1/4] scene     {scene.image} ({kind}, {size} x {size} px) + {scene.mask.name}")
    print(f"                per-pixel spectral baseline (nearest class mean): mIoU {baseline:.3f}")

    # 128 px tiles (256 of them on the default scene) and 8 x 8 split blocks whatever the
    # scene size, so that the val and test blocks can be spread over the whole scene
    options = TilingOptions(size=128, stride=128, max_nodata=0.2, split_block=max(128, size // 8), seed=seed)
    tiles = out / "tiles"
    tiling = tile_scene(scene.image, tiles, mask=scene.mask, options=options)
    split_map = plot_tile_index(tiles, out / "plots" / "tiles.png")
    print("[2/4] tiles     " + tiling.describe().replace("\n", "\n                "))

    print(
        f"[3/4] pretrain  {', '.join(DEMO_RECIPES)} ({pretrain_steps} steps each) -> [4/4] frozen-encoder probe "
        f"at {label_fraction:.0%} labels on {subsets} label subsets"
    )
    compare_out = out / "compare"
    results = run_compare(
        CompareOptions(
            recipes=[recipes_folder() / name for name in DEMO_RECIPES],
            label_fractions=[label_fraction],
            seeds=1,
            subset_seeds=subsets,
            pretrain_steps=[pretrain_steps],
            protocol="frozen",
            out=compare_out,
            overrides=[f"data.tiles={tiles}", f"seed={seed}", *DEMO_PRETRAIN, *overrides],
            finetune=FinetuneOptions(**(DEMO_FINETUNE if finetune is None else finetune)),
        )
    )
    plots = [
        split_map,
        compare_out / "results.png",
        compare_out / "results_paired.png",
        *sorted(compare_out.glob("pretrain/*/plots/*.png")),
    ]
    print("plots:\n  " + "\n  ".join(str(path) for path in plots))
    print(
        "  (loss.png: the contrastive loss and, below it, the monitor's kNN probe of the frozen encoder "
        "against random init; box_area.png: the part of each view GraSS's crops kept)"
    )
    if kind == "urban":
        # minutes of pretraining do not yet move an encoder away from random init; say where the
        # budget that does is, rather than leave the table to suggest pretraining never pays
        print(
            f"  {pretrain_steps} steps is a demo's budget: recipes/urban/ pretrains on this kind of scene for 3,000 "
            "steps (about 2.5 h on 2 CPU cores), where docs/methods/grass.md measures what pretraining buys"
        )
    print(f"done in {time.perf_counter() - start:.0f} s")
    return {
        "baseline_miou": baseline,
        "splits": tiling.splits,
        "results": results,
        "plots": [str(path) for path in plots],
    }


def _scene_kind(folder: Path) -> str | None:
    """The kind recorded in a folder's ``scene.json`` (None: no readable scene; no kind recorded = rural)."""
    try:
        meta = json.loads((folder / "scene.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    held = meta.get("kind", "rural") if isinstance(meta, dict) else None
    return held if isinstance(held, str) else None
