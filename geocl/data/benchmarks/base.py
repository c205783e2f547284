"""A TorchGeo benchmark segmentation dataset and how its files become a tile set; the defaults
and error keys every benchmark shares.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchgeo.datasets.errors import DatasetNotFoundError

from geocl.errors import MissingInputError

#: Tile side (px) of a tile set prepared for a recipe, as ``geocl tile``'s default. The released
#: GraSS code (arXiv 2306.15868, github.com/GeoX-Lab/GraSS) does not give the size of its
#: pretraining patches; 256 px is the crop side of the finetuning configs of the same authors'
#: FALSE (github.com/GeoX-Lab/FALSE).
DEFAULT_TILE_SIZE = 256
#: Share of the official train images held out as val by default.
DEFAULT_VAL_FRACTION = 0.15
#: The dtype of every benchmark's images on disk (TorchGeo hands them over as floats).
IMAGE_DTYPE = "uint8"
#: Option and input keys in error messages: the flags of ``geocl tile``.
TILE_KEYS = {"dataset": "dataset", "root": "root", "out": "out"}
#: The same keys in a recipe.
RECIPE_KEYS = {"dataset": "data.dataset", "root": "data.root", "out": "data.tiles"}


@dataclass(frozen=True)
class Benchmark:
    """A TorchGeo segmentation dataset and how its files become a tile set.

    Attributes:
        name: the name in recipes and on the command line.
        title: the dataset's name for people.
        dataset_class: its TorchGeo class.
        official_splits: geocl split -> the TorchGeo split read for it (``train`` and ``test``).
        gsd: ground sample distance (m per px) of the pixel grid.
        bands: image bands as TorchGeo returns them.
        class_values: mask values of the classes, in order.
        class_names: names of those classes.
        mask_nodata: mask value of unlabelled pixels, or None when every value is a class.
        expected: what TorchGeo looks for under the root, for the error when it is missing.
        dataset_args: further constructor arguments (LoveDA's ``scene``).
        image_id: image file path -> the image's name in tile names and ``tiles.json``.
    """

    name: str
    title: str
    dataset_class: type[Any]
    official_splits: Mapping[str, str]
    gsd: float
    bands: int
    class_values: tuple[int, ...]
    class_names: tuple[str, ...]
    mask_nodata: int | None
    expected: str
    dataset_args: Mapping[str, Any] = field(default_factory=dict)
    image_id: Callable[[str], str] = lambda path: Path(path).stem

    @property
    def crs_wkt(self) -> str:
        """The local engineering CRS of the pixel grid (metres, x east, y north)."""
        return (
            f'LOCAL_CS["{self.title} pixel grid",LOCAL_DATUM["image",0],UNIT["metre",1],AXIS["x",EAST],AXIS["y",NORTH]]'
        )

    def open(self, root: Path, split: str, keys: Mapping[str, str] = TILE_KEYS) -> Any:
        """The TorchGeo dataset of one geocl split (train or test), read from ``root``.

        Raises:
            GeoclError: naming the root and what TorchGeo expected there, when the
                dataset is not found (nothing is downloaded).
        """
        arguments: dict[str, Any] = {
            "root": str(root),
            "split": self.official_splits[split],
            "checksum": False,
            **self.dataset_args,
        }
        if "download" in inspect.signature(self.dataset_class).parameters:
            arguments["download"] = False
        try:
            return self.dataset_class(**arguments)
        except DatasetNotFoundError:
            raise MissingInputError(
                f"no {self.title} here (given by {keys['root']}): TorchGeo's {self.dataset_class.__name__} "
                f"expects {self.expected}; nothing is downloaded",
                path=root,
                key=keys["root"],
            ) from None
