"""The tile-set format: what a tile-set folder holds, how a run checks, reuses and writes it.

A tile set is what ``geocl tile`` writes, from a scene (:mod:`geocl.data.tiler`) or from
a TorchGeo benchmark (:mod:`geocl.data.benchmarks`), and what
:class:`~geocl.data.tile_dataset.TileDataset`, finetuning, retrieval and the maps read::

    OUT/tiles.json          options, sources, band statistics, classes, split counts
    OUT/tiles.gpkg          layer "tiles": one polygon per tile (path, split, row, col, class pixels)
    OUT/images/<name>.tif
    OUT/masks/<name>.tif    (when labelled)

Both writers go through this module, so the folder means the same whoever wrote it:

* **Before any work** :func:`check_tile_folder` refuses a folder whose tiles were made
  otherwise (tiles without ``tiles.json`` are refused; a changed option or input is
  named), and :func:`start_metadata` records the options and inputs, ``complete: false``.
* **Each tile** is reused only when :func:`stored_tile` reads it back as this run would
  write it (size, bounds, band count, dtype, pixels); otherwise :func:`write_tile` writes
  it, atomically.
* **At the end** :func:`write_index` writes the GeoPackage index and
  :func:`write_metadata` the finished ``tiles.json`` (``complete: true``), which
  :func:`read_metadata` requires.

Every write is atomic (:mod:`geocl.io`); one the disk refuses is a
:class:`~geocl.errors.GeoclError` naming the file and saying that a rerun resumes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.errors
from rasterio.crs import CRS
from rasterio.transform import from_origin

from geocl.data.rasters import geotiff_profile
from geocl.data.stats import BandStats
from geocl.errors import GeoclError, MissingInputError, OutputExistsError
from geocl.io import atomic_path, atomic_write_bytes, atomic_write_text, write_failure

__all__ = [
    "FORMAT_VERSION",
    "INDEX_FILE",
    "INDEX_LAYER",
    "INDEX_TIMESTAMP",
    "METADATA_FILE",
    "SPLITS",
    "TileLayout",
    "TileSetWriter",
    "TileSpec",
    "TilingSummary",
    "check_tile_folder",
    "class_histogram",
    "read_metadata",
    "start_metadata",
    "stored_tile",
    "write_index",
    "write_metadata",
    "write_tile",
    "writing",
]

SPLITS = ("train", "val", "test")
INDEX_FILE = "tiles.gpkg"
INDEX_LAYER = "tiles"
METADATA_FILE = "tiles.json"
#: ``format_version`` of ``tiles.json``.
FORMAT_VERSION = 1
#: ``last_change`` written into the tile index. GeoPackage stamps the write time there
#: otherwise, the only byte that differs between two runs on the same inputs; fixed, the
#: same scene and options give the same files (serial or on a cluster, now or later).
INDEX_TIMESTAMP = "2000-01-01T00:00:00.000Z"
#: Sub-folders of the tile files.
TILE_FOLDERS = ("images", "masks")

Box = tuple[float, float, float, float]


@dataclass
class TilingSummary:
    """What a run writing a tile set did.

    Attributes:
        out: the output folder.
        index: the GeoPackage tile index.
        written: tiles written by this run.
        reused: tiles found complete from an earlier run.
        skipped_nodata: tiles skipped for too much nodata.
        dropped_overlap: val/test tiles dropped because they overlap a train tile.
        splits: tiles kept per split.
        classes: class values seen in the mask (empty without a mask).
        replaced: tiles found damaged or not matching this run, written again (in ``written``).
        class_pixels: labelled pixels per class in each split's tiles, ``{split: {class: count}}``
            (empty without a mask); ``tiles.json`` stores it with the classes as strings.
        warnings: what the user should know about the result, with the option to change.
    """

    out: Path
    index: Path
    written: int = 0
    reused: int = 0
    skipped_nodata: int = 0
    dropped_overlap: int = 0
    splits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    classes: list[int] = field(default_factory=list)
    replaced: int = 0
    class_pixels: dict[str, dict[int, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def warn_if_replaced(self) -> None:
        """Add the warning that tiles already there were written again, when some were."""
        if self.replaced:
            self.warnings.append(
                f"{self.replaced} tile(s) already there were unreadable or did not match this run "
                "and were written again"
            )

    def describe(self) -> str:
        """A short human-readable report."""
        kept = sum(self.splits.values())
        parts = ", ".join(f"{name} {count}" for name, count in self.splits.items())
        lines = [
            f"{kept} tiles in {self.out} ({parts})",
            f"  written {self.written}, already there {self.reused}, "
            f"skipped for nodata {self.skipped_nodata}, dropped for train overlap {self.dropped_overlap}",
            f"  index: {self.index}",
        ]
        if self.classes:
            lines.append(f"  mask classes: {self.classes}")
        for name, pixels in self.class_pixels.items():
            shown = ", ".join(f"{value}: {count:,}" for value, count in pixels.items())
            lines.append(f"  {name} pixels per class: {shown}")
        lines.extend(f"  warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


# ------------------------------------------------------------------ tile files


@dataclass(frozen=True)
class TileSpec:
    """What a tile file of this run holds besides its bounds: band count, dtype, side (px)."""

    count: int
    dtype: str
    size: int


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """A write the disk refused (full, permissions changed: :func:`geocl.io.write_failure`) as a
    user error naming the file and how to go on; any other error (a bug) passes with its traceback."""
    try:
        yield
    except Exception as error:
        failure = write_failure(error, path)
        if failure is None:
            raise
        failure.args = (f"{failure.args[0]}; free some space or fix the permissions, then rerun to resume",)
        raise failure from None


def _write_geotiff(path: Path, array: np.ndarray, transform: Any, crs: CRS, nodata: float | None) -> None:
    predictor = 3 if np.issubdtype(array.dtype, np.floating) else 2
    profile = geotiff_profile(
        array.shape,
        array.dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress="deflate",
        predictor=predictor,
    )
    with atomic_path(path) as temp, rasterio.open(temp, "w", **profile) as dst:
        dst.write(array)


def write_tile(path: Path, array: np.ndarray, transform: Any, crs: CRS, nodata: float | None) -> None:
    """Write one tile ``[C, size, size]`` atomically as a deflate GeoTIFF (predictor 3 for floats, 2 for integers).

    Raises:
        GeoclError: a write the disk refused, naming the file (see :func:`writing`).
    """
    with writing(path):
        _write_geotiff(path, array, transform, crs, nodata)


def _reusable(path: Path, spec: TileSpec, bounds: Box, res: tuple[float, float]) -> np.ndarray | None:
    """The pixels of an existing tile file if it is what this run would write there, else None.

    None for a missing, truncated or unreadable file, and for one whose band count, dtype,
    size or bounds (within a thousandth of a pixel) differ.
    """
    if not path.exists():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a cut header: rewritten
            with rasterio.open(path) as src:
                shape = (src.count, src.dtypes[0], src.width, src.height)
                if shape != (spec.count, spec.dtype, spec.size, spec.size):
                    return None
                tolerance = min(res) * 1e-3
                if not np.allclose(tuple(src.bounds), bounds, rtol=0, atol=tolerance):
                    return None
                return src.read()
    except (rasterio.errors.RasterioError, OSError):
        return None


def stored_tile(
    image_path: Path,
    mask_path: Path,
    image_spec: TileSpec,
    mask_spec: TileSpec | None,
    bounds: Box,
    res: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """A tile already on disk as this run would write it: (image ``[C, H, W]``, mask ``[H, W]`` or None), else None.

    The image is read back first; the mask (when ``mask_spec`` is given) only if the image
    is usable. None when either is missing, unreadable, or differs in band count, dtype,
    size or bounds (within a thousandth of a pixel): the tile is then written again.
    """
    image = _reusable(image_path, image_spec, bounds, res)
    if image is None or mask_spec is None:
        return None if image is None else (image, None)
    mask = _reusable(mask_path, mask_spec, bounds, res)
    return None if mask is None else (image, mask[0])


class TileSetWriter:
    """The tiles of one run into a tile-set folder: each reused when already there as this run
    would write it, else written; the kept ones counted in the summary with their index rows.

    Args:
        summary: the run's summary (``out``; counts and class pixels are updated here).
        crs: the tiles' CRS.
        res: pixel size (x, y) in CRS units.
        image_spec: band count, dtype and side of the image tiles.
        mask_spec: the same of the mask tiles, or None without a mask.
        nodata: image nodata value, or None.
        mask_nodata: mask value of unlabelled pixels, or None.
        classes: the class values counted in ``summary.class_pixels`` (None: every value seen).
    """

    def __init__(
        self,
        summary: TilingSummary,
        crs: CRS,
        res: tuple[float, float],
        image_spec: TileSpec,
        mask_spec: TileSpec | None,
        nodata: float | None,
        mask_nodata: int | None,
        classes: Sequence[int] | None = None,
    ) -> None:
        self.summary, self.crs, self.res = summary, crs, (res[0], res[1])
        self.image_spec, self.mask_spec = image_spec, mask_spec
        self.nodata, self.mask_nodata = nodata, mask_nodata
        self.classes = None if classes is None else set(classes)
        #: the index rows of the tiles kept, in the order kept
        self.rows: list[dict[str, Any]] = []

    def paths(self, name: str) -> tuple[Path, Path]:
        """(image, mask) file of the tile called ``name``."""
        out = self.summary.out
        return out / TILE_FOLDERS[0] / name, out / TILE_FOLDERS[1] / name

    def stored(self, name: str, bounds: Box) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(image, mask or None) of a tile already written as this run would write it (:func:`stored_tile`),
        else None; a file there that is not is counted in ``summary.replaced``."""
        image_path, mask_path = self.paths(name)
        found = stored_tile(image_path, mask_path, self.image_spec, self.mask_spec, bounds, self.res)
        if found is None:
            self.summary.replaced += image_path.exists()
        return found

    def write(self, name: str, bounds: Box, image: np.ndarray, label: np.ndarray | None) -> None:
        """Write a tile: the mask ``[H, W]`` first (when given), then the image ``[C, H, W]``."""
        image_path, mask_path = self.paths(name)
        transform = from_origin(bounds[0], bounds[3], *self.res)
        if label is not None:
            write_tile(mask_path, label[None], transform, self.crs, self.mask_nodata)
        write_tile(image_path, image, transform, self.crs, self.nodata)
        self.summary.written += 1

    def keep(self, split: str, row: dict[str, Any], histogram: Mapping[int, int]) -> None:
        """Count a tile kept in ``split``: its index row and its labelled pixels per class."""
        self.summary.splits[split] += 1
        self.rows.append(row)
        split_pixels = self.summary.class_pixels.setdefault(split, {})
        for value, count in histogram.items():
            if self.classes is None or value in self.classes:
                split_pixels[value] = split_pixels.get(value, 0) + count


def class_histogram(label: np.ndarray, valid: np.ndarray, mask_nodata: int | None) -> dict[int, int]:
    """Pixels per class value of a mask tile ``[H, W]``, over ``valid`` pixels that are not ``mask_nodata``."""
    keep = valid if mask_nodata is None else valid & (label != mask_nodata)
    values, counts = np.unique(label[keep], return_counts=True)
    return {int(value): int(count) for value, count in zip(values, counts, strict=True)}


# ---------------------------------------------------------------- folder checks


def _holds_tiles(out: Path) -> bool:
    if (out / INDEX_FILE).exists():
        return True
    return any(not path.name.startswith(".") for sub in TILE_FOLDERS for path in (out / sub).glob("*.tif"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OutputExistsError(
            f"cannot be read ({error}); use a new output folder or delete {path.parent}", path=path
        ) from None
    if not isinstance(data, dict):
        raise OutputExistsError(
            f"is not what `geocl tile` writes; use a new output folder or delete {path.parent}", path=path
        )
    return data


def read_recorded(out: Path) -> dict[str, Any] | None:
    """The ``tiles.json`` of ``out`` as recorded (finished or not), or None when there is none.

    Raises:
        GeoclError: naming the file, when it is unreadable or not a JSON object.
    """
    path = out / METADATA_FILE
    return _read_json(path) if path.exists() else None


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        return " ".join(str(item) for item in value)
    return str(value)


def _files_differ(was: list[str], now: list[str]) -> str:
    if len(was) <= 1 and len(now) <= 1:
        return f"was {was[0] if was else 'none'}, now {now[0] if now else 'none'}"
    parts = []
    if gone := [path for path in was if path not in now]:
        parts.append(f"{len(gone)} file(s) no longer given, e.g. {gone[0]}")
    if new := [path for path in now if path not in was]:
        parts.append(f"{len(new)} new file(s), e.g. {new[0]}")
    return "files differ: " + "; ".join(parts)


def recorded_section(record: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The section ``key`` (``"options"``, ``"sources"``) of a recorded ``tiles.json``, or ``{}``
    when it has none or it is not a JSON object."""
    section = record.get(key)
    return section if isinstance(section, dict) else {}


def _difference(
    earlier: Mapping[str, Any], options: Mapping[str, Any], sources: Mapping[str, Any]
) -> tuple[str, str] | None:
    """(name, what changed) of the first option, then input, that differs from ``earlier``, or None.

    Options are compared as JSON holds them (tuples as lists); an input that is a list of
    files is compared as such (``files differ: ...``), any other as its value.
    """
    was_options = recorded_section(earlier, "options")
    for name, value in json.loads(json.dumps(dict(options))).items():
        if was_options.get(name) != value:
            return name, f"was {_shown(was_options.get(name))}, now {_shown(value)}"
    was_sources = recorded_section(earlier, "sources")
    for name, now in sources.items():
        if isinstance(now, list):
            was = was_sources.get(name) or []
            if was != now:
                return name, _files_differ(was, now)
        elif was_sources.get(name) != now:
            return name, f"was {_shown(was_sources.get(name))}, now {now}"
    return None


def check_tile_folder(
    out: Path, options: Mapping[str, Any], sources: Mapping[str, Any], keys: Mapping[str, str] | None = None
) -> None:
    """Refuse a folder whose tiles this run cannot trust, before any work.

    Tiles are reused by name, so a folder may go on only with the options and inputs
    that made its tiles: those ``tiles.json`` records. A folder holding tiles but no
    ``tiles.json`` is refused (their options are unknown), and so is one whose
    ``tiles.json`` differs, naming the first option or input that does. Without tiles
    (a run that stopped before writing one) the new options replace the old.

    Args:
        out: the output folder.
        options: the run's options (``dataclasses.asdict`` of them), in the order they are checked.
        sources: the run's inputs: a list of files, or one value (a root folder), by name.
        keys: how errors name an option, an input or ``out`` (default: by their own names).

    Raises:
        GeoclError: naming the folder, or the option that differs.
    """
    keys = keys or {}
    recorded = read_recorded(out)
    if recorded is None:
        if _holds_tiles(out):
            raise OutputExistsError(
                f"holds tiles but no {METADATA_FILE}, so nothing says which options made them; "
                "use a new output folder or delete this one",
                path=out,
                key=keys.get("out", "out"),
            )
        return
    difference = _difference(recorded, options, sources)
    if difference is not None and _holds_tiles(out):
        name, change = difference
        raise OutputExistsError(
            f"{change} for the tiles already in {out}; use a new output folder or delete that one",
            key=keys.get(name, name),
        )


def start_metadata(out: Path, options: Mapping[str, Any], sources: Mapping[str, Any]) -> None:
    """Record the options and inputs before the first tile (``complete: false``), so a rerun can check them.

    A ``tiles.json`` that records the same ones already is left as it is.
    """
    recorded = read_recorded(out)
    if recorded is not None and _difference(recorded, options, sources) is None:
        return
    metadata_file = out / METADATA_FILE
    with writing(metadata_file):
        atomic_write_text(
            metadata_file, json.dumps({"options": dict(options), "sources": dict(sources), "complete": False}, indent=1)
        )


# ------------------------------------------------------------- index, metadata


def write_index(path: Path, rows: list[dict[str, Any]], crs: Any) -> None:
    """The tile index as a GeoPackage, built in memory and written by Python in one atomic write.

    In memory (a few hundred bytes a tile), because SQLite writing in place reports a
    full disk as a later statement failing (``no such table: gpkg_contents``), with the
    SQL in the message; Python's write says ``No space left on device`` with the file.
    The bytes are those of a GeoPackage written to disk, stamped :data:`INDEX_TIMESTAMP`.

    Args:
        path: the GeoPackage (layer :data:`INDEX_LAYER`).
        rows: one dict a tile: ``path``, ``mask_path``, ``split``, ``row``, ``col``,
            ``nodata_fraction``, ``class_<value>`` counts and a shapely ``geometry``.
        crs: the CRS of the geometries (anything geopandas takes).

    Raises:
        GeoclError: a write the disk refused, naming the file (see :func:`writing`).
    """
    import pyogrio  # geopandas' writer: its own GDAL, with its own configuration

    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)
    previous = pyogrio.get_gdal_config_option("OGR_CURRENT_DATE")
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": INDEX_TIMESTAMP})
    try:
        buffer = io.BytesIO()
        frame.to_file(buffer, layer=INDEX_LAYER, driver="GPKG", engine="pyogrio")
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": previous})
    with writing(path):
        atomic_write_bytes(path, buffer.getvalue())


@dataclass(frozen=True)
class TileLayout:
    """What every tile of a set shares, as ``tiles.json`` records it.

    Attributes:
        crs: the CRS as WKT.
        res: pixel size (x, y) in CRS units.
        bands: image band count.
        dtype: image dtype name.
        nodata: image nodata value, or None.
        mask_nodata: mask value of unlabelled pixels, or None.
    """

    crs: str
    res: tuple[float, float]
    bands: int
    dtype: str
    nodata: float | None
    mask_nodata: int | None


def write_metadata(
    out: Path,
    options: Mapping[str, Any],
    sources: Mapping[str, Any],
    layout: TileLayout,
    summary: TilingSummary,
    stats: BandStats,
    *,
    class_names: Sequence[str] | None = None,
    dataset: Mapping[str, Any] | None = None,
) -> None:
    """Write the finished ``tiles.json`` (``complete: true``), last, atomically.

    Args:
        out: the tile-set folder.
        options, sources: as given to :func:`start_metadata`.
        layout: the tiles' CRS, resolution, bands, dtype and nodata values.
        summary: the run's classes, split counts and class pixels.
        stats: the band statistics models normalise with.
        class_names: names of ``summary.classes``, when known (benchmarks).
        dataset: what a benchmark tile set was made from (name, TorchGeo class, images).

    Raises:
        GeoclError: a write the disk refused, naming the file (see :func:`writing`).
    """
    metadata: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "options": dict(options),
        "sources": dict(sources),
        "complete": True,
        "crs": layout.crs,
        "res": list(layout.res),
        "bands": layout.bands,
        "dtype": layout.dtype,
        "nodata": layout.nodata,
        "mask_nodata": layout.mask_nodata,
        "classes": summary.classes,
    }
    if class_names is not None:
        metadata["class_names"] = list(class_names)
    metadata["splits"] = summary.splits
    metadata["class_pixels"] = {  # JSON keys are strings
        name: {str(value): count for value, count in pixels.items()} for name, pixels in summary.class_pixels.items()
    }
    metadata["band_stats"] = stats.to_dict()
    if dataset is not None:
        metadata["dataset"] = dict(dataset)
    with writing(out / METADATA_FILE):
        atomic_write_text(out / METADATA_FILE, json.dumps(metadata, indent=1))


def read_metadata(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``tiles.json`` of a finished tile set.

    Raises:
        GeoclError: if the folder holds no finished tile set.
    """
    path = Path(out) / METADATA_FILE
    if not path.exists():
        raise MissingInputError("no tile set here (tiles.json missing); run `geocl tile` first", path=out)
    metadata = json.loads(path.read_text())
    if not metadata.get("complete"):
        raise GeoclError("tile set is incomplete; rerun `geocl tile` to finish it", path=out)
    return metadata
