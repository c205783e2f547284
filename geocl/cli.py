"""``geocl <command>``: parses arguments, calls the packages, prints user errors in one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from geocl.errors import GeoclError


def _make_scene(args: argparse.Namespace) -> None:
    from geocl.data.synthetic import make_scene

    files = make_scene(args.dir, size=args.size, seed=args.seed, bands=args.bands, overwrite=args.overwrite)
    print(f"scene: {files.image}\nmask:  {files.mask}")


def _tile(args: argparse.Namespace) -> None:
    from geocl.data.tiler import TilingOptions, tile_scene

    options = TilingOptions(
        size=args.size,
        stride=args.stride if args.stride is not None else args.size,
        max_nodata=args.max_nodata,
        split_block=args.split_block if args.split_block is not None else 4 * args.size,
        split_fractions=tuple(args.split),
        seed=args.seed,
        roi=None if args.roi is None else str(args.roi),
    )
    from geocl.report.maps import plot_tile_index

    summary = tile_scene(args.scene, args.out, mask=args.mask, options=options, progress=not args.quiet)
    plot = plot_tile_index(args.out, args.out / "tiles.png")
    print(summary.describe())
    print(f"  map: {plot}")


def _pretrain(args: argparse.Namespace) -> None:
    from geocl.methods import METHODS  # noqa: F401  (registers every method's parameters)
    from geocl.recipes import load_recipe
    from geocl.training.pretrain import run_pretrain

    recipe = load_recipe(args.recipe, args.overrides)
    result = run_pretrain(recipe, resume=args.resume)
    if not result.is_global_zero:
        return
    print(
        f"{recipe.method.name}: {result.global_step} steps, final loss {result.final_loss:.4f}, "
        f"{result.seconds:.0f} s\n  checkpoint: {result.checkpoint}\n  run folder: {result.out} "
        "(config.yaml, logs/, plots/, maps/, metrics.json)"
    )


def _finetune(args: argparse.Namespace) -> None:
    from geocl.finetune.train import run_finetune

    result = run_finetune(
        tiles=args.tiles, out=args.out, encoder_checkpoint=args.encoder, encoder=args.encoder_name,
        arch=args.arch, label_fraction=args.label_fraction, seed=args.seed, max_epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, freeze_encoder=args.freeze_encoder, num_workers=args.num_workers,
    )
    iou = ", ".join("-" if value != value else f"{value:.3f}" for value in result.iou)
    print(
        f"test mIoU {result.miou:.4f} (val {result.val_miou:.4f}) with {result.train_tiles} labelled tiles\n"
        f"  per class: {iou}\n  checkpoint: {result.checkpoint}"
    )


def _predict(args: argparse.Namespace) -> None:
    from geocl.finetune.inference import predict_with_checkpoint

    result = predict_with_checkpoint(
        args.checkpoint, args.scene, args.out, polygons=args.polygons, window=args.window, overlap=args.overlap
    )
    print(f"prediction: {result.path}\n  preview: {result.png}" + (f"\n  polygons: {result.polygons}" if result.polygons else ""))


def _compare(args: argparse.Namespace) -> None:
    import geocl.methods  # noqa: F401  (registers every method's parameters)
    from geocl.training.compare import CompareOptions, run_compare

    finetune = {"max_epochs": args.epochs} if args.epochs else {}
    run_compare(
        CompareOptions(
            recipes=list(args.recipes), label_fractions=list(args.label_fractions), seeds=args.seeds,
            out=args.out, overrides=list(args.override), finetune=finetune,
        )
    )


def _demo(args: argparse.Namespace) -> None:
    from geocl.demo import run_demo

    run_demo(args.out, size=args.size)


def build_parser() -> argparse.ArgumentParser:
    """The ``geocl`` argument parser."""
    parser = argparse.ArgumentParser(prog="geocl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scene = commands.add_parser("make-scene", help="write the embedded labelled demo scene")
    scene.add_argument("dir", type=Path, help="output folder (image.tif, mask.tif)")
    scene.add_argument("--size", type=int, default=4096, help="side in px (default 4096)")
    scene.add_argument("--seed", type=int, default=0)
    scene.add_argument("--bands", type=int, default=4, help="band count, >= 4 (default 4)")
    scene.add_argument("--overwrite", action="store_true", help="regenerate even if cached")
    scene.set_defaults(run=_make_scene)

    tile = commands.add_parser("tile", help="cut a scene into GeoTIFF tiles with a GeoPackage index")
    tile.add_argument("scene", type=Path, help="a GeoTIFF or a folder of GeoTIFFs")
    tile.add_argument("--out", type=Path, required=True, help="output folder (rerun to resume)")
    tile.add_argument("--mask", type=Path, help="one-band class mask (file or folder)")
    tile.add_argument("--roi", type=Path, help="vector file of the region of interest")
    tile.add_argument("--size", type=int, default=256, help="tile side in px (default 256)")
    tile.add_argument("--stride", type=int, help="px between tile origins (default: size)")
    tile.add_argument("--max-nodata", type=float, default=0.2, help="skip tiles above this nodata fraction")
    tile.add_argument("--split-block", type=int, help="side of split blocks in px (default: 4 x size)")
    tile.add_argument(
        "--split", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of blocks per split (default 0.7 0.15 0.15)",
    )
    tile.add_argument("--seed", type=int, default=0, help="seed of the split draw")
    tile.add_argument("--quiet", action="store_true", help="no progress bars")
    tile.set_defaults(run=_tile)

    pretrain = commands.add_parser("pretrain", help="pretrain an encoder as a recipe says")
    pretrain.add_argument("recipe", type=Path, help="recipe YAML (see recipes/)")
    pretrain.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dotted recipe overrides, e.g. trainer.max_epochs=1 data.batch_size=8 out=runs/x",
    )
    pretrain.add_argument("--resume", action="store_true", help="continue the run in `out` from its last checkpoint")
    pretrain.set_defaults(run=_pretrain)

    finetune = commands.add_parser("finetune", help="finetune a segmentation model with few labels")
    finetune.add_argument("--tiles", type=Path, required=True, help="tile set with masks (geocl tile --mask)")
    finetune.add_argument("--encoder", type=Path, help="a geocl pretrain checkpoint (default: random init)")
    finetune.add_argument("--encoder-name", default="resnet18", help="encoder for random init (default resnet18)")
    finetune.add_argument("--arch", default="unet", choices=["unet", "deeplabv3plus"])
    finetune.add_argument("--label-fraction", type=float, default=0.05)
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--epochs", type=int, default=15)
    finetune.add_argument("--batch-size", type=int, default=8)
    finetune.add_argument("--lr", type=float, default=1e-3)
    finetune.add_argument("--freeze-encoder", action="store_true", help="train the decoder only")
    finetune.add_argument("--num-workers", type=int, default=0)
    finetune.add_argument("--out", type=Path, required=True, help="run folder")
    finetune.set_defaults(run=_finetune)

    predict = commands.add_parser("predict", help="predict a whole scene with a finetuned checkpoint")
    predict.add_argument("checkpoint", type=Path)
    predict.add_argument("scene", type=Path)
    predict.add_argument("--out", type=Path, required=True, help="prediction GeoTIFF")
    predict.add_argument("--polygons", type=Path, help="also write class polygons (GeoPackage)")
    predict.add_argument("--window", type=int, default=256)
    predict.add_argument("--overlap", type=int, default=64)
    predict.set_defaults(run=_predict)

    compare = commands.add_parser("compare", help="pretrain and finetune several recipes; results table")
    compare.add_argument("recipes", type=Path, nargs="+")
    compare.add_argument("--label-fractions", type=float, nargs="+", default=[0.01, 0.05, 0.2])
    compare.add_argument("--seeds", type=int, default=3)
    compare.add_argument("--out", type=Path, default=Path("runs/compare"))
    compare.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="recipe override for every recipe")
    compare.add_argument("--epochs", type=int, help="finetuning epochs")
    compare.set_defaults(run=_compare)

    demo = commands.add_parser("demo", help="run the main job on the embedded scene")
    demo.add_argument("--out", type=Path, default=Path("demo_out"))
    demo.add_argument("--size", type=int, default=4096, help="scene side in px")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``geocl``; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except GeoclError as error:
        print(f"geocl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"geocl {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
