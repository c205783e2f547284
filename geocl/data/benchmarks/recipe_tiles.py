"""The tile set of a recipe whose data is a benchmark, prepared on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geocl.data.benchmarks.base import RECIPE_KEYS
from geocl.data.benchmarks.export import export_benchmark
from geocl.data.tileset import read_recorded, recorded_section
from geocl.errors import OutputExistsError


def ensure_recipe_tiles(recipe: Any, *, progress: bool = True) -> Path | None:
    """Prepare the tile set of a recipe whose data is a benchmark (``data.dataset``), on first use.

    The tile set goes to ``data.tiles``. A complete one there made from the same dataset
    is used as it is, whatever its tile options (so ``geocl tile --dataset ... --size 512``
    into that folder beforehand chooses them) and wherever its root was (a tile set copied
    to another machine stays usable); otherwise the dataset is exported with the default
    options (:data:`DEFAULT_TILE_SIZE` px tiles), resuming an interrupted export.

    Args:
        recipe: a validated recipe (only its ``data`` section is read).
        progress: show a tqdm bar while exporting.

    Returns:
        The tile-set folder, or None when the recipe names no benchmark.

    Raises:
        GeoclError: ``data.tiles`` holds another tile set, or the export fails (keys named
            as the recipe's: ``data.dataset``, ``data.root``, ``data.tiles``).
    """
    data = recipe.data
    if getattr(data, "format", "tiles") != "tiles" or not getattr(data, "dataset", ""):
        return None
    out, root = Path(data.tiles), Path(data.root)
    earlier = read_recorded(out)
    if earlier is not None:
        options, sources = recorded_section(earlier, "options"), recorded_section(earlier, "sources")
        if earlier.get("complete") and options.get("dataset") == data.dataset:
            return out
        if earlier.get("complete"):
            what = f"dataset {options['dataset']} (from {sources.get('root')})" if options.get("dataset") else "a scene"
            raise OutputExistsError(
                f"holds the tiles of {what}, not of dataset {data.dataset} (given by data.tiles); "
                "point data.tiles at another folder",
                path=out,
                key="data.tiles",
            )
    export_benchmark(data.dataset, root, out, progress=progress, keys=RECIPE_KEYS)
    return out
