"""Your own GeoTIFF -> tiles -> pretrain (SimCLR) -> finetune a segmenter -> predict the whole scene.

The whole geocl pipeline from Python, one call a step. Without arguments the example
writes the embedded labelled scene (4 bands, 7 land-cover classes) and uses it as
"your" GeoTIFF; give your own image and its class mask instead with

    python examples/01_own_geotiff.py --image my_scene.tif --mask my_labels.tif

Any band count works (the recipe adapts the encoder's first layer); the mask is a
one-band GeoTIFF of class values overlapping the image (it may have another CRS).

Run:    python examples/01_own_geotiff.py [--out DIR] [--smoke]
Time:   about a minute on 2 CPU cores (--smoke: seconds, tiny sizes, meaningless numbers).
Writes: DIR/scene/ (unless --image), DIR/tiles/, DIR/pretrain/ (checkpoints, loss.png),
        DIR/finetune/ (best.ckpt, metrics.json), DIR/prediction.tif + .png + .gpkg.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import geocl

#: The CPU-sized recipes shipped with geocl, beside this folder.
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples_out/01_own_geotiff"), help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the example runs")
    parser.add_argument("--image", type=Path, help="your GeoTIFF (default: the embedded scene)")
    parser.add_argument("--mask", type=Path, help="its class mask (needed with --image: finetuning needs labels)")
    args = parser.parse_args()
    if (args.image is None) != (args.mask is None):
        parser.error("--image and --mask go together")
    if args.out.is_dir() and any((args.out / name).exists() for name in ("pretrain", "finetune")):
        # geocl refuses to mix two runs in one folder; say so before any work
        sys.exit(f"error: {args.out} holds an earlier run of this example; delete it or pass another --out")
    geocl.configure_output()  # geocl's own lines only: no Lightning banners, no third-party warnings

    # Full mode: 1024 px scene, 64 px tiles, ResNet-18, sized for about a minute on 2 CPU
    # cores. Smoke: 256 px, 32 px tiles and timm's tiny test ResNet: every call runs,
    # nothing is learnt.
    size, tile = (256, 32) if args.smoke else (1024, 64)
    out = args.out

    # 1. The scene. make_scene stands in for your own data; it returns the two paths.
    if args.image is None:
        scene = geocl.make_scene(out / "scene", size=size, seed=0)
        image, mask = scene.image, scene.mask
    else:
        image, mask = args.image, args.mask
    print(f"scene: {image} with labels {mask}")

    # 2. Tiles with train/val/test splits. Splits go by square blocks of split_block px,
    # so that neighbouring (correlated) tiles do not land in train and test at once; 4 x 4
    # blocks or more let every split get some, spread over the scene (on your own
    # scene: blocks of 4 x 4 tiles).
    block = size // 4 if args.image is None else 4 * tile
    options = geocl.TilingOptions(size=tile, stride=tile, max_nodata=0.2, split_block=block, seed=0)
    tiling = geocl.tile_scene(image, out / "tiles", mask=mask, options=options, progress=False)
    print(tiling.describe())

    # 3. Pretrain without labels. A recipe is YAML plus dotted overrides, validated before
    # any work (a misspelt key stops with the closest valid one). trainer.max_steps sets
    # the budget in optimizer steps whatever the tile count; max_epochs=-1 lifts the
    # recipe's epoch limit so that the steps decide. num_workers=0: the tiles are a
    # memory map, and worker processes would take longer to start than to read them.
    overrides = [
        f"data.tiles={out / 'tiles'}",
        f"out={out / 'pretrain'}",
        "data.num_workers=0",
        "trainer.max_epochs=-1",
    ]
    if args.smoke:
        overrides += ["encoder.name=test_resnet", "data.view_size=32", "data.batch_size=8", "trainer.max_steps=2"]
    else:
        overrides += ["data.view_size=64", "data.batch_size=16", "trainer.max_steps=30"]
    recipe = geocl.load_recipe(RECIPES / "simclr.yaml", overrides)
    run = geocl.run_pretrain(recipe)
    print(
        f"pretrained {run.global_step} steps in {run.seconds:.0f} s, final loss {run.final_loss:.3f}: {run.checkpoint}"
    )

    # 4. Finetune a U-Net whose encoder starts from the pretrained one, on 20 % of the
    # labelled train tiles; mIoU is measured on the test tiles with the best val checkpoint.
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
    print(f"finetuned on {result.train_tiles} labelled tiles: test mIoU {result.miou:.3f} (val {result.val_miou:.3f})")

    # 5. Predict the whole scene with overlapping windows (blended, streamed block by
    # block, so any scene size fits in memory): a classified GeoTIFF on the scene's grid
    # with a colour table, a PNG preview beside it and the class polygons.
    prediction = geocl.predict_with_checkpoint(
        result.checkpoint,
        image,
        out / "prediction.tif",
        polygons=out / "prediction.gpkg",
        window=2 * tile,
        overlap=tile // 4,
        progress=False,
    )
    print(f"prediction: {prediction.path} ({prediction.shape[1]} x {prediction.shape[0]} px)")
    print(f"  preview: {prediction.png}\n  polygons: {prediction.polygons}")


if __name__ == "__main__":
    try:
        main()
    except geocl.GeoclError as error:  # a user error: one line, as the geocl command prints it
        sys.exit(f"error: {error}")
