"""``geocl <command>``: the command line.

Thin: the flags, defaults and help of ``tile``, ``finetune``, ``evaluate``, ``predict``,
``index``, ``search``, ``serve`` and ``compare`` come from the option models of
:mod:`geocl.recipes.options` and :mod:`geocl.recipes.compare_options`, and
their values are validated there before anything heavy (torch, Lightning, rasterio) is
imported, so a bad value is answered at once. User errors (:class:`GeoclError`) print
as one line ``geocl <command>: error: ...`` and exit 2, and so does a write the disk
refuses (full, quota, read-only, permission, I/O error: :func:`geocl.io.write_failure`),
naming the file; an interrupt exits 130 with the hint to rerun. Output is quiet unless
``--verbose`` (:mod:`geocl.console`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from geocl.console import configure_output
from geocl.data.malloc import malloc_tuning
from geocl.errors import GeoclError
from geocl.io import write_failure
from geocl.recipes.cli_args import FLAGS_ATTRIBUTE, add_model_arguments, options_from_args
from geocl.recipes.compare_options import CompareOptions
from geocl.recipes.options import (
    EvaluateCommand,
    FinetuneCommand,
    IndexOptions,
    PredictCommand,
    SearchOptions,
    ServeOptions,
    TileOptions,
)

#: What ``geocl --help`` says first.
DESCRIPTION = (
    "Self-supervised contrastive pretraining on GeoTIFF scenes: cut scenes into tiles, pretrain an "
    "encoder as a recipe says, finetune it with few labels, predict whole scenes and compare methods."
)
EPILOG = "Run 'geocl COMMAND --help' for the options of a command."

#: Flags that differ from the option field they set (the names users know).
TILE_ARGUMENTS = {"split": {"metavar": ("TRAIN", "VAL", "TEST")}}
FINETUNE_FLAGS = {"encoder_checkpoint": "--encoder", "encoder": "--encoder-name", "max_epochs": "--epochs"}
FINETUNE_ARGUMENTS = {"probe_stages": {"metavar": "STAGE"}}
EVALUATE_FLAGS = {"checkpoint": "CHECKPOINT", "encoder": "--encoder-name"}
PREDICT_FLAGS = {"checkpoint": "CHECKPOINT", "scene": "SCENE"}
COMPARE_FLAGS = {
    "recipes": "RECIPE",
    "overrides": "--override",
    "finetune.max_epochs": "--epochs",
    "evaluate.k": "--k",
    "evaluate.temperature": "--temperature",
    "evaluate.probe_epochs": "--probe-epochs",
    "finetune.probe_stages": "--probe-stages",
    "retrieval.overrides": "--retrieval-override",
}
INDEX_FLAGS = {"checkpoint": "CHECKPOINT", "tiles": "TILES"}
SEARCH_FLAGS = {"index": "INDEX", "query": "QUERY", "k": "-k"}
SERVE_FLAGS = {"index": "INDEX", "k": "-k"}
COMPARE_ARGUMENTS = {
    "overrides": {"action": "append", "metavar": "KEY=VALUE"},
    "finetune.probe_stages": {"metavar": "STAGE"},
    "retrieval.overrides": {"action": "append", "metavar": "KEY=VALUE"},
}


def _make_scene(args: argparse.Namespace) -> None:
    from geocl.data.synthetic import make_scene

    files = make_scene(
        args.dir, kind=args.kind, size=args.size, seed=args.seed, bands=args.bands, overwrite=args.overwrite
    )
    print(f"scene: {files.image}\nmask:  {files.mask}")


#: ``--assets`` of ``tile`` and ``predict`` (not an option model field: it names no file or setting of its own).
ASSETS_HELP = (
    "for a STAC scene (an Item, ItemCollection, Catalog or Collection as a .json file or URL): the asset keys "
    "stacked as bands, in this order, e.g. --assets B04 B03 B02 B08 (default: the items' one raster asset)"
)
#: What ``tile`` and ``predict`` say about remote scenes in their help.
REMOTE_HELP = (
    "SCENE may also be a remote file (https://, http://, s3://, gs:// or a GDAL /vsi... path), read in windows "
    "without downloading it, or a STAC document (.json, a file or an http(s) URL) whose items are mosaicked; "
    "credentials come from the environment only (AWS_*, GS_*, GOOGLE_APPLICATION_CREDENTIALS, GDAL_HTTP_*), "
    "never from the command line."
)


def _add_assets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--assets", nargs="+", metavar="KEY", default=None, help=ASSETS_HELP)
    parser.set_defaults(**{FLAGS_ATTRIBUTE: {**(parser.get_default(FLAGS_ATTRIBUTE) or {}), "assets": "--assets"}})


def _as_given(typed: Sequence[str] | None, validated: Sequence[Path] | None) -> list[str | Path] | None:
    """The scenes (or masks) as typed where they are URLs or GDAL paths (``Path`` folds the
    ``//`` of ``https://``), the validated paths elsewhere."""
    if validated is None or typed is None or len(typed) != len(validated):
        return None if validated is None else list(validated)
    return [
        raw if "://" in raw or raw.startswith("/vsi") else path for raw, path in zip(typed, validated, strict=False)
    ]


def _tile(args: argparse.Namespace) -> None:
    options: TileOptions = options_from_args(TileOptions, args)
    from geocl.commands import run_tile

    _print_result(
        run_tile(
            options,
            scenes=_as_given(getattr(args, "scene", None), options.scene),
            masks=_as_given(getattr(args, "mask", None), options.mask),
            assets=args.assets,
            verbose=getattr(args, "verbose", False),
        )
    )


def _print_result(result: Any) -> None:
    """Print what a command did; several scenes of which some failed: the one-line error too."""
    print(result.describe())
    failures = result.failure_message() if hasattr(result, "failure_message") else None
    if failures is not None:  # the others are done; the command must not look like a success
        raise GeoclError(failures)


def _pretrain(args: argparse.Namespace) -> None:
    from geocl.methods import load_recipe
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
    for line in result.findings:
        print(f"  {line}")


def _finetune(args: argparse.Namespace) -> None:
    options: FinetuneCommand = options_from_args(FinetuneCommand, args)
    from geocl.finetune.train import run_finetune

    result = run_finetune(**options.model_dump())
    iou = ", ".join("-" if value != value else f"{value:.3f}" for value in result.iou)
    print(
        f"test mIoU {result.miou:.4f} (val {result.val_miou:.4f}) with {result.train_tiles} labelled tiles\n"
        f"  per class: {iou}\n  checkpoint: {result.checkpoint}"
    )


def _predict(args: argparse.Namespace) -> None:
    options: PredictCommand = options_from_args(PredictCommand, args)
    from geocl.commands import run_predict

    _print_result(
        run_predict(
            options,
            scenes=_as_given(getattr(args, "scene", None), options.scene),
            assets=args.assets,
            verbose=getattr(args, "verbose", False),
        )
    )


def _make_volumes(args: argparse.Namespace) -> None:
    from geocl.data.medical.synthetic import make_volumes

    files = make_volumes(
        args.dir,
        cases=args.cases,
        min_size=args.size[0],
        max_size=args.size[1],
        seed=args.seed,
        overwrite=args.overwrite,
    )
    state = "found (same parameters)" if files.reused else "written"
    print(
        f"{len(files.images)} volumes {state}: {files.root / 'images'}\nlabel maps: {files.root / 'labels'}\n"
        f"  preview: {files.preview}"
    )


def _compare(args: argparse.Namespace) -> None:
    options: CompareOptions = options_from_args(CompareOptions, args)
    from geocl.experiments import describe_failures, run_compare

    # failed rows do not stop the others, but the command must not look like a success
    failures = describe_failures(run_compare(options), options.out)
    if failures is not None:
        raise GeoclError(failures)


def _evaluate(args: argparse.Namespace) -> None:
    options: EvaluateCommand = options_from_args(EvaluateCommand, args)
    from geocl.evaluation import run_evaluation
    from geocl.evaluation.evaluate import default_out

    out = options.out or (default_out(options.checkpoint) if options.checkpoint is not None else Path("."))
    result = run_evaluation(**{**options.model_dump(), "encoder": options.encoder or "resnet18", "out": out})
    print(
        f"{result.method} ({result.encoder}) on {result.val_images} images, {result.num_classes} classes:\n"
        f"  kNN top-1 (k={result.k}, T={result.temperature:g}): {result.knn_top1:.4f}\n"
        f"  linear-probe top-1 ({result.probe_epochs} epochs): {result.probe_top1:.4f}\n"
        f"  written: {result.path}"
    )


def _make_natural(args: argparse.Namespace) -> None:
    from geocl.data.natural_toy import write_toy_cifar, write_toy_image_folder

    cifar = write_toy_cifar(
        args.out / "cifar",
        num_classes=args.classes,
        per_class=args.per_class,
        test_per_class=max(1, args.per_class // 5),
        seed=args.seed,
    )
    images = write_toy_image_folder(args.out / "images", args.classes, args.per_class, size=args.size, seed=args.seed)
    print(f"CIFAR-style batches: {cifar}\nimage folder:        {images}")


def _index(args: argparse.Namespace) -> None:
    options: IndexOptions = options_from_args(IndexOptions, args)
    from geocl.retrieval.index import build_index

    summary = build_index(
        options.checkpoint,
        options.tiles,
        options.out,
        split=options.split,
        batch_size=options.batch_size,
        thumbnail_px=options.thumbnail_px,
        overwrite=options.overwrite,
    )
    print(
        f"indexed {summary.count} tiles ({summary.dim}-d embeddings) in {summary.seconds:.0f} s\n"
        f'  index: {summary.out}\n  search: geocl search {summary.out} "QUERY"   page: geocl serve {summary.out}'
    )


def _search(args: argparse.Namespace) -> None:
    options: SearchOptions = options_from_args(SearchOptions, args)
    from geocl.io import check_output_file
    from geocl.retrieval.search import SearchIndex, format_hits, write_contact_sheet, write_hits_geopackage

    for key in ("gpkg", "png"):  # before the search: a bad output path is answered at once
        if getattr(options, key) is not None:
            check_output_file(getattr(options, key), key=key)
    index = SearchIndex(options.index)
    hits = index.search(options.query, options.k)
    print(format_hits(hits))
    if options.gpkg is not None:
        print(f"  footprints: {write_hits_geopackage(index, hits, options.gpkg, options.query)}")
    if options.png is not None:
        print(f"  contact sheet: {write_contact_sheet(index, hits, options.png, options.query)}")


def _serve(args: argparse.Namespace) -> None:
    options: ServeOptions = options_from_args(ServeOptions, args)
    from geocl.retrieval.server import serve

    serve(options.index, host=options.host, port=options.port, k=options.k)


def _demo(args: argparse.Namespace) -> None:
    from geocl.demo import run_demo

    run_demo(args.out, kind=args.kind, size=args.size)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose complaint about a missing positional argument says which
    flag of several values took it (``--label-fractions 0.05 0.2 recipe.yaml`` reads the
    recipe as a third fraction)."""

    def parse_known_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        given = None if args is None else list(args)
        self._given = sys.argv[1:] if given is None else given
        return super().parse_known_args(given, namespace)

    def error(self, message: str) -> NoReturn:
        if "arguments are required" in message:
            message += _swallowed(self, getattr(self, "_given", []))
        super().error(message)


def _swallowed(parser: argparse.ArgumentParser, given: list[str]) -> str:
    """Where a flag that takes several values read a positional argument: the hint, else ''."""
    several = {flag for action in parser._actions if action.nargs in ("+", "*") for flag in action.option_strings}
    flag = None
    for token in given:
        if token == "--":
            return ""
        if token.startswith("-") and not _is_number(token):
            flag = token if token in several else None
        elif flag is not None and not _is_number(token):
            return f" ({token!r} was read as a value of {flag}: give the positional arguments first)"
    return ""


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


#: Adds a command: ``command(name, summary, details)`` -> its parser.
CommandAdder = Callable[..., argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    """The ``geocl`` argument parser."""
    common = _Parser(add_help=False)  # only a parent: the subparsers (``_Parser``\ s) copy its flags
    # SUPPRESS: given before or after the command, neither parser overwrites the other
    common.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show everything: Lightning's banners and tips, the libraries' warnings",
    )
    parser = _Parser(prog="geocl", description=DESCRIPTION, epilog=EPILOG, parents=[common])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
        first = summary[:2] if summary[1:2].isupper() else summary[0].upper() + summary[1:2]  # "kNN" stays
        description = first + summary[2:] + "." + (f" {details}" if details else "")
        return commands.add_parser(name, help=summary, description=description, parents=[common])

    _add_scene_commands(command)
    _add_model_commands(command)
    _add_example_data_commands(command)
    _add_search_commands(command)
    return parser


def _add_scene_commands(command: CommandAdder) -> None:
    """``make-scene`` and ``tile``."""
    scene = command("make-scene", "write the embedded labelled demo scene")
    scene.add_argument("dir", type=Path, help="output folder (image.tif, mask.tif)")
    scene.add_argument(
        "--kind",
        default="rural",
        metavar="{rural,urban}",  # checked by make_scene (no import at start-up)
        help="rural: 1 m landscape, 7 land-cover classes (default); urban: 0.2 m city, the ISPRS "
        "Potsdam/Vaihingen classes, many objects smaller than a 64 px view",
    )
    scene.add_argument("--size", type=int, default=4096, help="side in px (default: 4096)")
    scene.add_argument("--seed", type=int, default=0, help="seed of the scene (default: 0)")
    scene.add_argument("--bands", type=int, default=4, help="band count, at least 4 (default: 4)")
    scene.add_argument("--overwrite", action="store_true", help="regenerate even if cached")
    scene.set_defaults(run=_make_scene)

    tile = command(
        "tile",
        "cut a scene into GeoTIFF tiles with a GeoPackage index",
        "Tiles are assigned to train, val and test by square blocks, so the splits lie apart; "
        "rerun the same command to resume. --dataset NAME --root DIR tiles a TorchGeo benchmark "
        "(ISPRS Potsdam, Vaihingen, LoveDA) already on disk instead, in its official splits.",
    )
    add_model_arguments(tile, TileOptions, positional=("scene",), flags={"scene": "SCENE"}, arguments=TILE_ARGUMENTS)
    _add_assets(tile)
    tile.description = f"{tile.description} {REMOTE_HELP}"
    tile.set_defaults(run=_tile)


def _add_model_commands(command: CommandAdder) -> None:
    """``pretrain``, ``finetune``, ``predict``, ``compare`` and ``evaluate``."""
    pretrain = command("pretrain", "pretrain an encoder as a recipe says")
    pretrain.add_argument("recipe", type=Path, help="recipe YAML (see recipes/)")
    pretrain.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted recipe overrides, e.g. trainer.max_epochs=1 data.batch_size=8 out=runs/x",
    )
    pretrain.add_argument("--resume", action="store_true", help="continue the run in `out` from its last checkpoint")
    pretrain.set_defaults(run=_pretrain)

    finetune = command(
        "finetune",
        "finetune a segmentation model with few labels",
        "The encoder starts from a pretrain checkpoint, from pretrained weights (--encoder-weights) or from random init; the test mIoU is measured "
        "on the test tiles with the best checkpoint on val.",
    )
    add_model_arguments(finetune, FinetuneCommand, flags=FINETUNE_FLAGS, arguments=FINETUNE_ARGUMENTS)
    finetune.set_defaults(run=_finetune)

    predict = command(
        "predict",
        "predict a whole scene with a finetuned checkpoint",
        "A NIfTI volume (.nii, .nii.gz) gives a NIfTI label map with the volume's affine, a PNG of slices and, "
        "when its label map lies in the labels/ folder beside its images/ folder, its metrics as CSV.",
    )
    add_model_arguments(predict, PredictCommand, positional=("checkpoint", "scene"), flags=PREDICT_FLAGS)
    _add_assets(predict)
    predict.description = f"{predict.description} {REMOTE_HELP}"
    predict.set_defaults(run=_predict)

    compare = command(
        "compare",
        "pretrain and finetune several recipes; results table",
        "Tile-set recipes are finetuned at each label fraction and seed (mIoU); natural-image recipes "
        "are evaluated by kNN and linear probe per seed (top-1). A random-init row is added when a recipe pretrains "
        "an encoder. Rerun the "
        "same command to resume.",
    )
    add_model_arguments(
        compare, CompareOptions, positional=("recipes",), flags=COMPARE_FLAGS, arguments=COMPARE_ARGUMENTS
    )
    compare.set_defaults(run=_compare)

    evaluate = command(
        "evaluate",
        "kNN and linear-probe top-1 of an encoder on natural images",
        "Give a pretrain checkpoint, or --encoder-name for a randomly initialised encoder.",
    )
    add_model_arguments(evaluate, EvaluateCommand, positional=("checkpoint",), flags=EVALUATE_FLAGS)
    evaluate.set_defaults(run=_evaluate)


def _add_example_data_commands(command: CommandAdder) -> None:
    """``make-natural`` and ``make-volumes``."""
    natural = command("make-natural", "write toy natural-image data (CIFAR-style batches, image folder)")
    natural.add_argument("out", type=Path, help="output folder (cifar/, images/)")
    natural.add_argument("--classes", type=int, default=10, help="classes (default: 10)")
    natural.add_argument(
        "--per-class", type=int, default=100, help="train images per class, test: a fifth (default: 100)"
    )
    natural.add_argument(
        "--size", type=int, default=48, help="side of the image-folder images in px, CIFAR: 32 (default: 48)"
    )
    natural.add_argument("--seed", type=int, default=0, help="seed of the images (default: 0)")
    natural.set_defaults(run=_make_natural)

    volumes = command(
        "make-volumes",
        "write the embedded synthetic medical volumes (NIfTI images and label maps)",
        "Seeded MRI-like volumes with a smooth organ of varying shape, size and position, intensity "
        "inhomogeneity, noise and anisotropic spacing; point recipes with data.format nifti at DIR.",
    )
    volumes.add_argument("dir", type=Path, help="output folder (images/, labels/, preview.png)")
    volumes.add_argument("--cases", type=int, default=20, help="number of cases (default: 20)")
    volumes.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(64, 96),
        metavar=("MIN", "MAX"),
        help="range of the volume sides in voxels (default: 64 96)",
    )
    volumes.add_argument("--seed", type=int, default=0, help="seed of the volumes (default: 0)")
    volumes.add_argument("--overwrite", action="store_true", help="rewrite the folder even if it holds volumes")
    volumes.set_defaults(run=_make_volumes)


def _add_search_commands(command: CommandAdder) -> None:
    """``index``, ``search``, ``serve``, and ``demo``."""
    index = command(
        "index",
        "embed every tile of a tile set for text search",
        "CHECKPOINT is a checkpoint of the retrieval method (geocl pretrain recipes/retrieval.yaml); every tile "
        "is embedded once, with its footprint, path, caption and thumbnail.",
    )
    add_model_arguments(index, IndexOptions, positional=("checkpoint", "tiles"), flags=INDEX_FLAGS)
    index.set_defaults(run=_index)

    search = command(
        "search",
        "the tiles of an index that best match a text query",
        "Prints the top k tiles (score, path, caption); --gpkg writes their footprints and scores, --png a "
        "contact sheet.",
    )
    add_model_arguments(search, SearchOptions, positional=("index", "query"), flags=SEARCH_FLAGS)
    search.set_defaults(run=_search)

    serve = command(
        "serve",
        "a local search page over an index",
        "A text box, the top-k thumbnails with scores and captions, and the scene overview with the hits' "
        "footprints; listens on 127.0.0.1 unless --host says otherwise. Ctrl-C stops it.",
    )
    add_model_arguments(serve, ServeOptions, positional=("index",), flags=SERVE_FLAGS)
    serve.set_defaults(run=_serve)

    demo = command("demo", "run the main job on the embedded scene")
    demo.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    demo.add_argument("--size", type=int, default=2048, help="scene side in px (default: 2048)")
    demo.add_argument(
        "--kind",
        choices=("urban", "rural"),
        default="urban",
        help="the embedded scene: urban (0.2 m city, objects smaller than a view) or rural (default: urban)",
    )
    demo.set_defaults(run=_demo)


def _as_typed(error: GeoclError, args: argparse.Namespace) -> str:
    """The error's message, naming an option field by the flag the user typed."""
    flags = getattr(args, FLAGS_ATTRIBUTE, None) or {}
    text, key = str(error), error.key
    if key is None or key not in flags:
        return text
    flag = flags[key]
    if error.path is None and text.startswith(f"{key}: "):
        return flag + text[len(key) :]
    # a message led by its file names the option in its body (io.check_output_*)
    return re.sub(rf"\b(given by|another) {re.escape(key)}\b", rf"\1 {flag}", text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``geocl``; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and getattr(args, "command", None) == "pretrain" and not any(x.startswith("-") for x in extras):
        # argparse gives a '*' positional only the words before the first flag
        # (`pretrain RECIPE --resume trainer.max_epochs=200`): the words after it are overrides too
        args.overrides = [*args.overrides, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    configure_output(verbose=getattr(args, "verbose", False))
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        with malloc_tuning():  # the command's entry: glibc's malloc tuned while it streams, restored after
            run(args)
    except GeoclError as error:
        print(f"geocl {args.command}: error: {_as_typed(error, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # pretrain continues only when asked to: a plain rerun refuses the folder
        hint = (
            "rerun the same command with --resume to continue from the last checkpoint"
            if args.command == "pretrain"
            else "rerun the same command to resume"
        )
        print(f"geocl {args.command}: interrupted; {hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`geocl tile ... | head -1`): stop quietly, as shell tools do;
        # stdout is pointed at devnull so that Python's flush at exit does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as error:
        # a write the disk refused outside geocl.io's atomic writers (they raise GeoclError
        # themselves): a full disk or quota, a read-only mount, no permission, an I/O error,
        # also wrapped by GDAL or SQLite. Anything else is a bug and keeps its traceback.
        failure = write_failure(error)
        if failure is None:
            raise
        print(f"geocl {args.command}: error: {failure}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
