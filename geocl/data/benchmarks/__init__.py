"""TorchGeo's benchmark segmentation datasets as geocl tile sets: ISPRS Potsdam, ISPRS Vaihingen, LoveDA.

``export_benchmark("potsdam", root, out)`` reads a dataset already on disk with its
TorchGeo class (:class:`~torchgeo.datasets.Potsdam2D`, :class:`~torchgeo.datasets.Vaihingen2D`,
:class:`~torchgeo.datasets.LoveDA`; ``download=False`` where the class has it and
``checksum=False``: nothing is fetched, the files are trusted) and writes the folder
``geocl tile`` writes, so that :class:`~geocl.data.tile_dataset.TileDataset`, finetuning,
``geocl compare`` and the pretraining methods read it like any other tile set::

    OUT/tiles.json          options, band statistics, classes and their names, split counts,
                            labelled pixels per class and split ("class_pixels"), the images of each split
    OUT/tiles.gpkg          layer "tiles": one polygon per tile (see "Grid" below)
    OUT/images/<image>_r000_c000.tif
    OUT/masks/<image>_r000_c000.tif

Splits are the dataset's official ones, whole images never shared between splits:
train and test as TorchGeo defines them (LoveDA's test labels are not public, so its
official *val* images are the test split here, those TorchGeo's LoveDA data module validates on);
val is a seeded draw of ``val_fraction`` of the official train images (at least one
when there are two or more, and train keeps at least one).

Grid: the datasets are TorchGeo ``NonGeoDataset``\\ s (no map coordinates), so each image
is placed on a local engineering CRS ("<dataset> pixel grid", metres at the dataset's
ground sample distance) in a grid of cells one tile apart, ordered by split and image
name: footprints never overlap, areas are in m², and the index map shows the splits
as bands of images. Tiles are cut at ``stride`` px from the top-left corner of an
image; where the image side is not a multiple of the stride, the last tile of a row or
column is moved to lie flush with the image edge (it overlaps its neighbour, inside
the same image and split), as TorchGeo's ``convolution_arithmetic`` counts them. An image smaller
than a tile is left out, with a warning.

Masks hold the class values TorchGeo returns: ISPRS Potsdam and Vaihingen 0-5 with
0 = clutter/background, a class (TorchGeo defines no ignore value for them; colours
outside the legend also become 0, as in TorchGeo's ``rgb_to_mask``); LoveDA 1-7 with
0 = no-data, which becomes the mask nodata (ignored in training and mIoU, as TorchGeo
says it "should be ignored"). ``tiles.json`` lists every class of the dataset, present
in the copy on disk or not, so that models have the benchmark's class count.

Images are 8-bit (Potsdam RGB + near infrared, Vaihingen IR-R-G, LoveDA RGB) with no
nodata value; the band statistics are those of the train tiles (the pixels a model
is fitted on; test pixels inform nothing).

Reruns: every file is written atomically; a rerun into the same folder goes on only
with the same options and root (a changed one is named) and rewrites only the tiles
that are missing or do not match, so an interrupted export resumes. One image is in
memory at a time (a Potsdam image is 6000 x 6000 px: about 0.9 GB as TorchGeo's float
and long tensors).

Several processes (``torchrun``) must not prepare the same folder at once: run
``geocl tile --dataset`` first, or let one process start (Lightning's own DDP launcher
starts the others after the data is read).
"""

from geocl.data.benchmarks.base import (
    DEFAULT_TILE_SIZE,
    DEFAULT_VAL_FRACTION,
    IMAGE_DTYPE,
    RECIPE_KEYS,
    TILE_KEYS,
    Benchmark,
)
from geocl.data.benchmarks.catalog import BENCHMARKS, get_benchmark
from geocl.data.benchmarks.export import BenchmarkOptions, export_benchmark
from geocl.data.benchmarks.recipe_tiles import ensure_recipe_tiles

__all__ = [
    "BENCHMARKS",
    "DEFAULT_TILE_SIZE",
    "DEFAULT_VAL_FRACTION",
    "IMAGE_DTYPE",
    "RECIPE_KEYS",
    "TILE_KEYS",
    "Benchmark",
    "BenchmarkOptions",
    "ensure_recipe_tiles",
    "export_benchmark",
    "get_benchmark",
]
