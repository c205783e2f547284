"""A TorchGeo dataset as input: LoveDA (as TorchGeo reads it from disk) -> tile set -> pretrain -> finetune.

geocl reads TorchGeo's segmentation benchmarks ISPRS Potsdam, ISPRS Vaihingen and LoveDA
(``potsdam``, ``vaihingen``, ``loveda``, ``loveda-urban``, ``loveda-rural``) with their
TorchGeo classes from the folder you downloaded them to (nothing is downloaded), and
writes them as a geocl tile set: the official train/test split kept, whole images never
shared between splits, val drawn from the train images. From there everything works as
on your own GeoTIFFs. A recipe can also name the dataset itself (``data.dataset``,
``data.root``): pretraining then tiles it on first use.

So that the example runs anywhere, it writes a tiny copy in LoveDA's own on-disk layout
(``Train/Urban/images_png/*.png`` with ``masks_png/*.png`` beside, ``Val/Urban/...``),
cut from the embedded scene, its land-cover classes mapped to LoveDA's. With the real
LoveDA, pass ``--root`` (the folder holding the extracted Train/ and Val/).

TorchGeo's *raster* datasets (Sentinel-2, Landsat, NAIP, ...) are folders of GeoTIFFs:
give those files to ``geocl.tile_scene`` as in example 01.

Run:    python examples/06_torchgeo_dataset.py [--out DIR] [--smoke] [--root LOVEDA]
Time:   about a minute on 2 CPU cores (--smoke: seconds, tiny sizes, meaningless numbers).
Writes: DIR/loveda/ (the tiny copy, unless --root), DIR/tiles/ (tiles.json, tiles.gpkg, images/, masks/),
        DIR/pretrain/ (checkpoints, loss.png), DIR/finetune/ (best.ckpt, metrics.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

import geocl

#: The CPU-sized recipes shipped with geocl, beside this folder.
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
#: The embedded scene's classes (water, forest, cropland, grassland, buildings, roads,
#: bare soil) as LoveDA's mask values (1 background, 2 building, 3 road, 4 water,
#: 5 barren, 6 forest, 7 agriculture); its nodata (255) is LoveDA's no-data, 0.
TO_LOVEDA = np.zeros(256, dtype=np.uint8)
TO_LOVEDA[:7] = [4, 6, 7, 1, 2, 3, 5]


def write_loveda_copy(image: Path, mask: Path, root: Path, side: int) -> Path:
    """Cut a scene into ``side`` px images in LoveDA's layout: 3 of 4 rows Train, the last row Val."""
    with rasterio.open(image) as src:
        bands = src.read([3, 2, 1]).astype(np.float64)  # red, green, blue
    with rasterio.open(mask) as src:
        labels = TO_LOVEDA[src.read(1)]
    valid = bands.min(axis=0) > 0
    low, high = np.percentile(bands[:, valid], [1, 99])  # reflectance x 10000 -> 8-bit, as LoveDA's PNGs
    rgb = np.clip((bands - low) / (high - low) * 255, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    rows = rgb.shape[0] // side
    for row in range(rows):
        split = "Val" if row == rows - 1 else "Train"
        for col in range(rgb.shape[1] // side):
            window = np.s_[row * side : (row + 1) * side, col * side : (col + 1) * side]
            for kind, array in (("images_png", rgb[window]), ("masks_png", labels[window])):
                folder = root / split / "Urban" / kind
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / f"{row * 100 + col}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples_out/06_torchgeo_dataset"), help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the example runs")
    parser.add_argument("--root", type=Path, help="a real LoveDA folder (Train/, Val/); default: a tiny copy")
    args = parser.parse_args()
    if args.out.is_dir() and any((args.out / name).exists() for name in ("pretrain", "finetune")):
        # geocl refuses to mix two runs in one folder; say so before any work
        sys.exit(f"error: {args.out} holds an earlier run of this example; delete it or pass another --out")
    geocl.configure_output()  # geocl's own lines only: no Lightning banners, no third-party warnings
    out = args.out

    # 1. The dataset on disk, as TorchGeo's LoveDA reads it: 16 images of 256 px (smoke: 64 px).
    size, tile = (256, 32) if args.smoke else (1024, 64)
    if args.root is None:
        scene = geocl.make_scene(out / "scene", size=size, seed=0)
        root = write_loveda_copy(scene.image, scene.mask, out / "loveda", side=size // 4)
        print(f"LoveDA-style copy: {root} (12 Train and 4 Val images of {size // 4} px, Urban)")
    else:
        root = args.root

    # 2. TorchGeo's LoveDA class reads it (download=False, checksum=False) and geocl writes
    # the tile set: official Train -> train (15 % of the images -> val), official Val -> test
    # (LoveDA's test labels are not public). Tiles are cut from each image at the stride.
    tiling = geocl.export_benchmark("loveda-urban", root, out / "tiles", size=tile, progress=False)
    print(tiling.describe().splitlines()[0])

    # 3. Pretrain. The recipe names the dataset; since DIR/tiles already holds its tile
    # set, pretraining uses it as it is (a recipe alone would tile it with 256 px tiles).
    overrides = [
        "data.dataset=loveda-urban",
        f"data.root={root}",
        f"data.tiles={out / 'tiles'}",
        f"out={out / 'pretrain'}",
        "data.num_workers=0",
        "trainer.max_epochs=-1",
    ]
    if args.smoke:
        overrides += ["encoder.name=test_resnet", "data.view_size=32", "data.batch_size=8", "trainer.max_steps=2"]
    else:
        overrides += ["data.view_size=64", "data.batch_size=16", "trainer.max_steps=30"]
    run = geocl.run_pretrain(geocl.load_recipe(RECIPES / "simclr.yaml", overrides))
    print(f"pretrained {run.global_step} steps in {run.seconds:.0f} s, final loss {run.final_loss:.3f}")

    # 4. Finetune on a fifth of the train tiles; mIoU on the test (official Val) tiles.
    # LoveDA's no-data pixels (0) are ignored by the loss and the metric.
    finetune = (
        dict(max_epochs=1, steps_per_epoch=2, val_every=1, batch_size=4, crop=32)
        if args.smoke
        else dict(max_epochs=4, steps_per_epoch=10, val_every=2, batch_size=8, crop=tile)
    )
    result = geocl.run_finetune(
        tiles=out / "tiles",
        out=out / "finetune",
        encoder_checkpoint=run.checkpoint,
        label_fraction=0.2,
        progress=False,
        **finetune,
    )
    names = geocl.TileDataset(out / "tiles", "test").metadata["class_names"]
    print(f"finetuned on {result.train_tiles} labelled tiles: test mIoU {result.miou:.3f}")
    print("  IoU per class: " + ", ".join(f"{name} {iou:.2f}" for name, iou in zip(names, result.iou, strict=False)))


if __name__ == "__main__":
    try:
        main()
    except geocl.GeoclError as error:  # a user error: one line, as the geocl command prints it
        sys.exit(f"error: {error}")
