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
    evaluate = {"k": args.k, "temperature": args.temperature, "probe_epochs": args.probe_epochs}
    run_compare(
        CompareOptions(
            recipes=list(args.recipes), label_fractions=list(args.label_fractions), seeds=args.seeds,
            out=args.out, overrides=list(args.override), finetune=finetune, evaluate=evaluate,
        )
    )


def _evaluate(args: argparse.Namespace) -> None:
    from geocl.evaluation import run_evaluation
    from geocl.evaluation.evaluate import default_out

    if (args.checkpoint is None) == (args.encoder_name is None):
        raise GeoclError("give a checkpoint or --encoder-name (a randomly initialised encoder), not both", key="CKPT")
    out = args.out or (default_out(args.checkpoint) if args.checkpoint is not None else Path("."))
    result = run_evaluation(
        args.checkpoint, args.data, args.format, out=out, encoder=args.encoder_name or "resnet18", k=args.k,
        temperature=args.temperature, probe_epochs=args.probe_epochs, probe_lr=args.probe_lr,
        image_size=args.image_size, batch_size=args.batch_size, seed=args.seed,
        momentum_encoder=args.momentum_encoder,
    )
    print(
        f"{result.method} ({result.encoder}) on {result.val_images} images, {result.num_classes} classes:\n"
        f"  kNN top-1 (k={result.k}, T={result.temperature:g}): {result.knn_top1:.4f}\n"
        f"  linear-probe top-1 ({result.probe_epochs} epochs): {result.probe_top1:.4f}\n"
        f"  written: {result.path}"
    )


def _make_natural(args: argparse.Namespace) -> None:
    from geocl.data.natural import write_toy_cifar, write_toy_image_folder

    cifar = write_toy_cifar(
        args.out / "cifar", num_classes=args.classes, per_class=args.per_class,
        test_per_class=max(1, args.per_class // 5), seed=args.seed,
    )
    images = write_toy_image_folder(args.out / "images", args.classes, args.per_class, size=args.size, seed=args.seed)
    print(f"CIFAR-style batches: {cifar}\nimage folder:        {images}")


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
    finetune.add_argument("--arch", default="unet", choices=["unet", "deeplabv3plus", "dpt"],
                          help="segmentation decoder; a ViT encoder always gets dpt")
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
    compare.add_argument("--k", type=int, default=20, help="natural images: kNN neighbours (default 20)")
    compare.add_argument("--temperature", type=float, default=0.07, help="natural images: kNN temperature (default 0.07)")
    compare.add_argument("--probe-epochs", type=int, default=100, help="natural images: linear-probe epochs (default 100)")
    compare.set_defaults(run=_compare)

    evaluate = commands.add_parser("evaluate", help="kNN and linear-probe top-1 of an encoder on natural images")
    evaluate.add_argument("checkpoint", type=Path, nargs="?", help="a geocl pretrain checkpoint (omit with --encoder-name)")
    evaluate.add_argument("--data", type=Path, required=True, help="image folder or CIFAR python-batch folder")
    evaluate.add_argument("--format", required=True, choices=["cifar", "image_folder"])
    evaluate.add_argument("--k", type=int, default=20, help="kNN neighbours (default 20)")
    evaluate.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature (default 0.07)")
    evaluate.add_argument("--probe-epochs", type=int, default=100, help="linear-probe epochs (default 100)")
    evaluate.add_argument("--probe-lr", type=float, default=0.1, help="linear-probe SGD learning rate (default 0.1)")
    evaluate.add_argument("--image-size", type=int, help="resize images to this side (default: as in pretraining)")
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the probe (and of a random encoder)")
    evaluate.add_argument("--encoder-name", help="evaluate a randomly initialised encoder of this name instead")
    evaluate.add_argument("--momentum-encoder", action="store_true", help="evaluate the momentum (EMA) encoder (MoCo, PatchMix, MultiNet), as the PatchMix spec does")
    evaluate.add_argument("--out", type=Path, help="folder for evaluation.json (default: the checkpoint's run folder)")
    evaluate.set_defaults(run=_evaluate)

    natural = commands.add_parser("make-natural", help="write toy natural-image data (CIFAR-style batches, image folder)")
    natural.add_argument("out", type=Path, help="output folder (cifar/, images/)")
    natural.add_argument("--classes", type=int, default=10)
    natural.add_argument("--per-class", type=int, default=100, help="train images per class (test: a fifth)")
    natural.add_argument("--size", type=int, default=48, help="side of the image-folder images in px (CIFAR: 32)")
    natural.add_argument("--seed", type=int, default=0)
    natural.set_defaults(run=_make_natural)

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
