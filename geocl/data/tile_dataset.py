"""The fast path for training: a map-style dataset over a tile set made by ``geocl tile``.

Opening and decompressing one small GeoTIFF per sample costs more than the training
step needs to spend on input. On first use the tiles are therefore packed, in index
order, into two uncompressed ``.npy`` files under ``OUT/cache/`` (built once, streamed
tile by tile, written atomically, rebuilt when the tile set changes); samples are then
slices of memory maps, which the page cache shares between DataLoader workers.

Samples follow TorchGeo's dict contract: ``image`` float32 ``[C, H, W]`` normalised with
the tile set's per-band statistics (nodata pixels set to 0, the band mean), ``mask``
long ``[H, W]`` holding class indices (positions in :attr:`TileDataset.classes`) with
:data:`IGNORE_INDEX` on nodata, ``bounds`` float64 ``[4]`` = (xmin, ymin, xmax, ymax) in
map units of ``crs``, ``crs`` (a string), and ``index`` (the row in the tile index).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import torch
from pyproj import CRS as ProjCRS
from rasterio.transform import from_origin
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from geocl.data.normalize import BandNormalizer
from geocl.data.tileset import INDEX_FILE, INDEX_LAYER, METADATA_FILE, SPLITS, read_metadata
from geocl.errors import InvalidInputError, MissingInputError
from geocl.io import atomic_path

#: Mask value of pixels that carry no label (nodata, or a class outside the tile set).
IGNORE_INDEX = -100

Sample = dict[str, Any]


class TileDataset(Dataset[Sample]):
    """Tiles of one tile set, optionally restricted to splits.

    Args:
        root: the folder written by ``geocl tile``.
        split: ``"train"``, ``"val"``, ``"test"``, several of them, or None for all.
        with_mask: return ``mask``; default: when the tile set has masks.
        transforms: applied to each sample dict after normalisation.
        progress: show a tqdm bar while the cache is built.

    Raises:
        GeoclError: if ``root`` holds no finished tile set, a split name is unknown, or a
            mask is asked of a tile set without masks.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | Sequence[str] | None = None,
        *,
        with_mask: bool | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        progress: bool = True,
    ) -> None:
        self.root = Path(root)
        self.metadata = read_metadata(self.root)
        splits = [split] if isinstance(split, str) else list(split or SPLITS)
        for name in splits:
            if name not in SPLITS:
                raise InvalidInputError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}", key="split")
        self.index = gpd.read_file(self.root / INDEX_FILE, layer=INDEX_LAYER)
        #: whether the tile set has a mask for every tile (opened with masks or not)
        self.has_masks = bool(self.index["mask_path"].notna().all())
        self.with_mask = self.has_masks if with_mask is None else with_mask
        if self.with_mask and not self.has_masks:
            raise MissingInputError("tile set has no masks; tile it with --mask", path=self.root)
        #: the splits these tiles come from, in the tile set's order
        self.splits = tuple(name for name in SPLITS if name in splits)
        self.rows = np.flatnonzero(self.index["split"].isin(splits).to_numpy())
        self.transforms = transforms
        self.classes: list[int] = list(self.metadata["classes"])
        self.crs = _crs_name(self.metadata["crs"])
        self.normalizer = BandNormalizer.from_metadata(self.metadata)
        self.bounds = torch.tensor(self.index.geometry.bounds.to_numpy(dtype=np.float64))
        self._has_nodata = self.index["nodata_fraction"].to_numpy() > 0
        self._lookup, self._lookup_low = _class_lookup(self.classes)
        self._cache_dir = self._ensure_cache(progress)
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    def with_masks(self) -> TileDataset:
        """The same tiles with their masks and without transforms (e.g. to score something a
        method learnt on unlabelled tiles against the labels).

        Raises:
            GeoclError: if the tile set has no masks.
        """
        labelled = TileDataset(self.root, list(self.splits), with_mask=True, progress=False)
        labelled.rows = np.array(self.rows)  # the same tiles, should a caller have narrowed them
        return labelled

    @property
    def band_count(self) -> int:
        """Number of image bands."""
        return int(self.metadata["bands"])

    @property
    def tile_size(self) -> int:
        """Tile side (px)."""
        return int(self.metadata["options"]["size"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> Sample:
        row = int(self.rows[item])
        images, masks = self._arrays()
        raw = images[row]
        invalid = self.normalizer.invalid(raw) if self._has_nodata[row] else None
        image = self.normalizer(raw, invalid)
        sample: Sample = {"image": torch.from_numpy(image), "bounds": self.bounds[row], "crs": self.crs, "index": row}
        if self.with_mask and masks is not None:
            mask = _class_indices(masks[row], self._lookup, self._lookup_low)
            if invalid is not None:
                mask[invalid] = IGNORE_INDEX
            sample["mask"] = torch.from_numpy(mask)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def valid(self, item: int) -> np.ndarray:
        """``[H, W]`` bool: which pixels of sample ``item`` hold data."""
        images, _ = self._arrays()
        return ~self.normalizer.invalid(images[int(self.rows[item])])

    def tile_transform(self, item: int) -> Any:
        """Pixel-to-map affine transform of sample ``item`` (its tile's grid)."""
        xmin, _, _, ymax = self.bounds[int(self.rows[item])].tolist()
        res_x, res_y = self.metadata["res"]
        return from_origin(xmin, ymax, res_x, res_y)

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are reopened in each DataLoader worker rather than pickled.
        state = self.__dict__.copy()
        state["_images"] = state["_masks"] = None
        return state

    def _arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._images is None:
            self._images = np.load(self._cache_dir / "images.npy", mmap_mode="r")
            masks = self._cache_dir / "masks.npy"
            self._masks = np.load(masks, mmap_mode="r") if masks.exists() else None
        return self._images, self._masks

    def _ensure_cache(self, progress: bool) -> Path:
        key = hashlib.sha256()
        for name in (INDEX_FILE, METADATA_FILE):
            key.update((self.root / name).read_bytes())
        cache_root = self.root / "cache"
        cache_dir = cache_root / key.hexdigest()[:16]
        if (cache_dir / "complete").exists():
            return cache_dir
        if cache_root.exists():
            shutil.rmtree(cache_root)
        size, bands = self.tile_size, self.band_count
        n = len(self.index)
        _pack(
            [self.root / path for path in self.index["path"]],
            cache_dir / "images.npy",
            (n, bands, size, size),
            np.dtype(self.metadata["dtype"]),
            progress,
        )
        if self.has_masks:
            with rasterio.open(self.root / self.index["mask_path"].iloc[0]) as src:
                mask_dtype = np.dtype(src.dtypes[0])
            _pack(
                [self.root / path for path in self.index["mask_path"]],
                cache_dir / "masks.npy",
                (n, size, size),
                mask_dtype,
                progress,
            )
        (cache_dir / "complete").touch()
        return cache_dir


def _pack(paths: Sequence[Path], target: Path, shape: tuple[int, ...], dtype: np.dtype, progress: bool) -> None:
    """Copy tiles into one ``.npy`` array, one tile in memory at a time."""
    with atomic_path(target) as temp:
        array = np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=shape)
        for position, path in enumerate(tqdm(paths, desc=f"caching {target.stem}", disable=not progress)):
            with rasterio.open(path) as src:
                data = src.read()
            array[position] = data if len(shape) == 4 else data[0]
        array.flush()
        del array


def _class_lookup(classes: Sequence[int]) -> tuple[np.ndarray, int]:
    """Table mapping raw mask values to class indices (other values: IGNORE_INDEX), and its lowest value.

    The table spans the lowest to the highest class (at least 0..255), so negative
    classes and a negative nodata (int16 masks) index it correctly.
    """
    low, high = min([*classes, 0]), max([*classes, 255])
    lookup = np.full(high - low + 1, IGNORE_INDEX, dtype=np.int64)
    for position, value in enumerate(classes):
        lookup[value - low] = position
    return lookup, low


def _class_indices(raw: np.ndarray, lookup: np.ndarray, low: int) -> np.ndarray:
    """Class indices of raw mask values; values outside the table (nodata, unseen classes) -> IGNORE_INDEX."""
    offsets = raw.astype(np.int64) - low
    inside = (offsets >= 0) & (offsets < len(lookup))
    return np.where(inside, lookup[np.clip(offsets, 0, len(lookup) - 1)], IGNORE_INDEX)


def _crs_name(wkt: str) -> str:
    crs = ProjCRS.from_wkt(wkt)
    code = crs.to_epsg()
    return f"EPSG:{code}" if code is not None else crs.to_string()
