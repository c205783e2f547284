"""The export of a benchmark to a tile set: the val draw, the grid of tiles on the pixel grid,
the pass over the images (see :mod:`geocl.data.benchmarks`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import shapely
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from torchgeo.samplers.utils import convolution_arithmetic
from tqdm.auto import tqdm

from geocl.data.benchmarks.base import DEFAULT_TILE_SIZE, DEFAULT_VAL_FRACTION, IMAGE_DTYPE, TILE_KEYS, Benchmark
from geocl.data.benchmarks.catalog import get_benchmark
from geocl.data.stats import BandStats, RunningBandStats
from geocl.data.tileset import (
    INDEX_FILE,
    SPLITS,
    TileLayout,
    TileSetWriter,
    TileSpec,
    TilingSummary,
    check_tile_folder,
    class_histogram,
    start_metadata,
    write_index,
    write_metadata,
)
from geocl.errors import GeoclError, InvalidInputError, MissingInputError
from geocl.io import check_output_folder


@dataclass(frozen=True)
class BenchmarkOptions:
    """What defines a benchmark tile set; a rerun into the same folder must use the same options.

    Attributes:
        dataset: the benchmark's name.
        size: tile side (px).
        stride: distance between tile origins in an image (px); ``stride < size`` overlaps tiles.
        val_fraction: share of the official train images held out as val.
        seed: seed of the val draw.
    """

    dataset: str
    size: int = DEFAULT_TILE_SIZE
    stride: int = DEFAULT_TILE_SIZE
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`GeoclError` naming the first bad option."""
        if self.size < 8:
            raise InvalidInputError(f"tile size must be >= 8 px, got {self.size}", key="size")
        if not 1 <= self.stride:
            raise InvalidInputError(f"stride must be >= 1 px, got {self.stride}", key="stride")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InvalidInputError(f"must be within [0, 1), got {self.val_fraction}", key="val_fraction")


@dataclass(frozen=True)
class _Image:
    """One image of the dataset: where TorchGeo holds it and where it goes."""

    id: str
    split: str
    source: Any  # the TorchGeo dataset holding it
    index: int
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class _Tile:
    """One tile: its image, grid cell, top-left pixel in the image and bounds on the pixel grid."""

    image: _Image
    row: int
    col: int
    y: int
    x: int
    bounds: tuple[float, float, float, float]

    @property
    def name(self) -> str:
        return f"{self.image.id}_r{self.row:03d}_c{self.col:03d}.tif"


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding its pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # PNGs and plain TIFFs
        try:
            with rasterio.open(path) as src:
                return src.width, src.height
        except rasterio.errors.RasterioError as error:
            raise InvalidInputError(f"cannot be read (corrupt file?): {error}", path=path) from None


def _collect_images(
    benchmark: Benchmark, root: Path, options: BenchmarkOptions, keys: Mapping[str, str]
) -> list[_Image]:
    """Every image of the official train and test splits, with train images drawn into train and val."""
    images: list[_Image] = []
    for split in ("train", "test"):
        dataset = benchmark.open(root, split, keys)
        if len(dataset) == 0:
            official = benchmark.official_splits[split]
            raise MissingInputError(
                f"TorchGeo's {benchmark.dataset_class.__name__} finds no {official} image with its mask here "
                f"(given by {keys['root']}); it expects {benchmark.expected}",
                path=root,
                key=keys["root"],
            )
        found = [
            (benchmark.image_id(files["image"]), index, Path(files["image"]))
            for index, files in enumerate(dataset.files)
        ]
        found.sort()
        names = _val_draw([name for name, _, _ in found], options) if split == "train" else set()
        for name, index, path in found:
            width, height = _image_size(path)
            images.append(_Image(name, "val" if name in names else split, dataset, index, path, width, height))
    order = {name: rank for rank, name in enumerate(SPLITS)}
    return sorted(images, key=lambda image: (order[image.split], image.id))


def _val_draw(names: list[str], options: BenchmarkOptions) -> set[str]:
    """The official train images held out as val: a seeded draw of ``val_fraction`` of them.

    At least one when there are two or more images and the fraction is above 0; train
    always keeps one.
    """
    n = len(names)
    n_val = round(options.val_fraction * n)
    if options.val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, n - 1)
    order = np.random.default_rng(options.seed).permutation(n)
    return {names[position] for position in order[:n_val]}


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Tile origins along one image side: every ``stride`` px, the last one flush with the edge."""
    count = convolution_arithmetic(length, size, stride)
    return sorted({min(step * stride, length - size) for step in range(count)})


def _plan(images: list[_Image], options: BenchmarkOptions, res: float) -> tuple[list[_Tile], list[_Image]]:
    """The tiles of every image on the pixel grid, and the images too small for a tile."""
    gap = options.size  # one tile between images keeps the footprints apart on the map
    columns = max(1, math.ceil(math.sqrt(len(images))))
    cell_width = max(image.width for image in images) + gap
    cell_height = max(image.height for image in images) + gap
    tiles: list[_Tile] = []
    too_small: list[_Image] = []
    for position, image in enumerate(images):
        if image.width < options.size or image.height < options.size:
            too_small.append(image)
            continue
        left = (position % columns) * cell_width * res
        top = -(position // columns) * cell_height * res
        for row, y in enumerate(_starts(image.height, options.size, options.stride)):
            for col, x in enumerate(_starts(image.width, options.size, options.stride)):
                xmin, ymax = left + x * res, top - y * res
                bounds = (xmin, ymax - options.size * res, xmin + options.size * res, ymax)
                tiles.append(_Tile(image, row, col, y, x, bounds))
    return tiles, too_small


def _to_image_dtype(array: np.ndarray, path: Path) -> np.ndarray:
    """TorchGeo's float pixels ``[C, H, W]`` back in the 8 bits they were stored in (checked a band
    at a time: a Potsdam band is 144 MB as float32)."""
    pixels = np.empty(array.shape, dtype=IMAGE_DTYPE)
    for band, values in enumerate(array):
        np.copyto(pixels[band], values, casting="unsafe")
        if not np.array_equal(pixels[band], values):
            raise InvalidInputError(
                f"band {band + 1} holds values that are not 8-bit integers ({values.min():g} to {values.max():g}); "
                "the benchmark's images are 8-bit",
                path=path,
            )
    return pixels


def _read_image(image: _Image) -> tuple[np.ndarray, np.ndarray]:
    """(image ``[C, H, W]`` uint8, mask ``[H, W]`` uint8) of one image, read by TorchGeo."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            sample = image.source[image.index]
        except (OSError, rasterio.errors.RasterioError, ValueError) as error:
            raise InvalidInputError(f"cannot be read (corrupt file?): {error}", path=image.path) from None
    pixels = _to_image_dtype(sample["image"].numpy(), image.path)
    mask = sample["mask"].numpy().astype(np.uint8)
    if pixels.shape[1:] != (image.height, image.width) or mask.shape != pixels.shape[1:]:
        raise InvalidInputError(
            f"image is {image.width} x {image.height} px but TorchGeo read {pixels.shape[2]} x {pixels.shape[1]} "
            f"px of pixels and a {mask.shape[1]} x {mask.shape[0]} px mask",
            path=image.path,
        )
    return pixels, mask


def export_benchmark(
    name: str,
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = DEFAULT_TILE_SIZE,
    stride: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    progress: bool = True,
    keys: Mapping[str, str] = TILE_KEYS,
) -> TilingSummary:
    """Write a benchmark dataset on disk as a geocl tile set (see the module docstring).

    Args:
        name: a key of :data:`BENCHMARKS` (``potsdam``, ``vaihingen``, ``loveda``, ...).
        root: the folder TorchGeo reads the dataset from (its own layout).
        out: output folder; rerunning into it resumes an interrupted export.
        size: tile side (px).
        stride: px between tile origins in an image (default: ``size``).
        val_fraction: share of the official train images held out as val (whole images).
        seed: seed of that draw.
        progress: show a tqdm bar.
        keys: how errors name the dataset, root and output folder (:data:`TILE_KEYS`
            for ``geocl tile``'s flags, :data:`RECIPE_KEYS` for a recipe's keys).

    Returns:
        A :class:`~geocl.data.tileset.TilingSummary`; its ``classes`` are all the dataset's
        class values and ``class_pixels`` the labelled pixels per class in each split.

    Raises:
        GeoclError: an unknown name, a root where TorchGeo finds no dataset (nothing is
            downloaded), a bad option, a folder made with other options, a file that
            cannot be read or written.
    """
    benchmark = get_benchmark(name, key=keys["dataset"])
    options = BenchmarkOptions(
        dataset=benchmark.name,
        size=size,
        stride=size if stride is None else stride,
        val_fraction=val_fraction,
        seed=seed,
    )
    options.validate()
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(
            f"no such folder (given by {keys['root']}); TorchGeo's {benchmark.dataset_class.__name__} "
            f"expects {benchmark.expected} there",
            path=root,
            key=keys["root"],
        )
    out = check_output_folder(out, key=keys["out"])
    # no scene files: nothing to draw under the tile map
    sources: dict[str, Any] = {"root": str(root.resolve()), "scene": [], "mask": []}
    check_tile_folder(out, asdict(options), sources, keys)
    images = _collect_images(benchmark, root, options, keys)
    tiles, too_small = _plan(images, options, benchmark.gsd)
    if not tiles:
        raise InvalidInputError(
            f"every image is smaller than the tile size ({options.size} px); use a smaller size", key="size"
        )
    start_metadata(out, asdict(options), sources)
    summary, rows, stats = _export(benchmark, options, out, tiles, progress)
    if too_small:
        summary.warnings.append(
            f"{len(too_small)} image(s) smaller than the tile size ({options.size} px) left out, "
            f"e.g. {too_small[0].id} ({too_small[0].width} x {too_small[0].height} px)"
        )
    for split in SPLITS:
        if summary.splits[split] == 0:
            why = "val_fraction is 0" if split == "val" and options.val_fraction == 0 else "no image of it has a tile"
            summary.warnings.append(f"no {split} tiles ({why}); finetuning needs val and test tiles")
    write_index(summary.index, rows, ProjCRS.from_wkt(benchmark.crs_wkt))
    layout = TileLayout(
        crs=benchmark.crs_wkt,
        res=(benchmark.gsd, benchmark.gsd),
        bands=benchmark.bands,
        dtype=IMAGE_DTYPE,
        nodata=None,
        mask_nodata=benchmark.mask_nodata,
    )
    write_metadata(
        out,
        asdict(options),
        sources,
        layout,
        summary,
        stats,
        class_names=benchmark.class_names,
        dataset=_dataset_record(benchmark, images),
    )
    return summary


def _export(
    benchmark: Benchmark, options: BenchmarkOptions, out: Path, tiles: list[_Tile], progress: bool
) -> tuple[TilingSummary, list[dict[str, Any]], BandStats]:
    """Write (or reuse) every tile: the summary (with the class pixels), the index rows and the
    band statistics of the train tiles."""
    summary = TilingSummary(out=out, index=out / INDEX_FILE)
    summary.classes = list(benchmark.class_values)
    summary.class_pixels = {split: dict.fromkeys(benchmark.class_values, 0) for split in SPLITS}
    writer = TileSetWriter(
        summary,
        CRS.from_wkt(benchmark.crs_wkt),
        (benchmark.gsd, benchmark.gsd),
        TileSpec(benchmark.bands, IMAGE_DTYPE, options.size),
        TileSpec(1, "uint8", options.size),
        nodata=None,
        mask_nodata=benchmark.mask_nodata,
        classes=benchmark.class_values,
    )
    running = RunningBandStats(benchmark.bands)
    by_image: dict[str, list[_Tile]] = {}
    for tile in tiles:
        by_image.setdefault(tile.image.id, []).append(tile)
    bar = tqdm(list(by_image.values()), desc=f"tiling {benchmark.name}", unit="image", disable=not progress)
    for image_tiles in bar:
        image = image_tiles[0].image
        stored = [writer.stored(tile.name, tile.bounds) for tile in image_tiles]
        whole: tuple[np.ndarray, np.ndarray] | None = None
        for tile, found in zip(image_tiles, stored, strict=True):
            if found is not None:
                pixels_tile, stored_label = found
                assert stored_label is not None  # the writer has a mask spec: a stored tile comes with its mask
                label = stored_label
                summary.reused += 1
            else:
                if whole is None:  # read only images that have a tile to write
                    whole = _read_image(image)
                window = (slice(tile.y, tile.y + options.size), slice(tile.x, tile.x + options.size))
                pixels_tile, label = np.ascontiguousarray(whole[0][(slice(None), *window)]), whole[1][window]
                writer.write(tile.name, tile.bounds, pixels_tile, label)
            histogram = class_histogram(label, np.ones(label.shape, dtype=bool), benchmark.mask_nodata)
            if image.split == "train":
                running.update(pixels_tile.reshape(benchmark.bands, -1))
            writer.keep(
                image.split,
                {
                    "path": f"images/{tile.name}",
                    "mask_path": f"masks/{tile.name}",
                    "split": image.split,
                    "image": image.id,
                    "row": tile.row,
                    "col": tile.col,
                    "nodata_fraction": 0.0,  # images have no nodata value; unlabelled pixels are the mask's
                    **{f"class_{value}": histogram.get(value, 0) for value in benchmark.class_values},
                    "geometry": shapely.box(*tile.bounds),
                },
                histogram,
            )
    summary.warn_if_replaced()
    if running.count == 0:
        raise GeoclError("no train tile: nothing to compute band statistics from", path=out)
    return summary, writer.rows, running.result()


def _dataset_record(benchmark: Benchmark, images: list[_Image]) -> dict[str, Any]:
    """What ``tiles.json`` records of the dataset a benchmark tile set was made from."""
    return {
        "name": benchmark.name,
        "title": benchmark.title,
        "torchgeo": f"{benchmark.dataset_class.__module__}.{benchmark.dataset_class.__name__}",
        "official_splits": dict(benchmark.official_splits),
        "images": {split: [image.id for image in images if image.split == split] for split in SPLITS},
    }
