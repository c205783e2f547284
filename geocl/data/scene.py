"""TorchGeo datasets over the user's own GeoTIFFs: images, masks, and labelled pairs.

A *scene* is one GeoTIFF or a folder of them (any band count, dtype and CRS; files in
other CRSs are reprojected by TorchGeo to the first file's CRS), a remote file
(``https://``, ``s3://``, ``gs://``, ``/vsi…``: :mod:`geocl.data.remote`) or a STAC
document whose items' assets are stacked as bands (:mod:`geocl.data.stac`). Images and masks are
separate :class:`~torchgeo.datasets.RasterDataset` instances joined with ``&`` into a
TorchGeo :class:`~torchgeo.datasets.IntersectionDataset`, as TorchGeo recommends.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pyproj import CRS as ProjCRS
from rasterio.enums import Resampling
from torchgeo.datasets import IntersectionDataset, RasterDataset

from geocl.data.rasters import MaskClasses, RasterInfo, find_rasters, inspect_rasters, mask_classes, nodata_value
from geocl.data.remote import remote_env
from geocl.errors import InvalidInputError

Sample = dict[str, Any]


class SceneImage(RasterDataset):
    """Image bands of a scene; samples carry ``image`` as ``[C, H, W]``.

    The files are those :func:`~geocl.data.rasters.find_rasters` finds, in its order
    (TorchGeo's own search, which sorts and skips what rasterio cannot open, is not used).

    Args:
        path: a GeoTIFF or a folder of GeoTIFFs, a remote file, or a STAC document.
        crs: CRS to reproject to (default: the first file's).
        res: pixel size in CRS units (default: the first file's).
        dtype: tensor dtype of ``image``; ``torch.float64`` keeps every source value of
            integer and float32 rasters exact (used for tiling).
        resampling: how pixels are resampled when a read is reprojected or not aligned
            to the source grid (default: TorchGeo's choice, bilinear for float dtypes;
            the tiler asks for nearest so tiles keep the source values).
        transforms: TorchGeo-style sample transform.
        assets: for a STAC document: the asset keys stacked as bands, in order.

    Raises:
        GeoclError: if a file is missing, unreadable, has no CRS or the band counts differ;
            for remote and STAC sources, naming the URL, item or asset at fault.
    """

    is_image = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        crs: ProjCRS | None = None,
        res: float | tuple[float, float] | None = None,
        dtype: torch.dtype = torch.float32,
        resampling: Resampling | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        assets: Sequence[str] | None = None,
    ) -> None:
        self.source = path
        self._resampling = resampling
        found = find_rasters(path, role=self._role(), assets=assets)
        self.infos: list[RasterInfo] = inspect_rasters(found, role=self._role())
        self._dtype = dtype
        #: Whether a file is read over the network (reads then set GDAL's network options).
        self.remote = not all(isinstance(info.path, Path) for info in self.infos)
        with remote_env():
            super().__init__(paths=self.files, crs=crs, res=res, transforms=transforms)

    @property
    def files(self) -> list[str]:
        """GDAL's names of the files (a remote file's ``/vsicurl/…``, a STAC item's VRT), in order."""
        return [os.fspath(info.path) for info in self.infos]

    def __getitem__(self, index: Any) -> Sample:
        if not self.remote:
            return super().__getitem__(index)
        with remote_env():  # also in DataLoader workers, where no command's environment is open
            return super().__getitem__(index)

    @classmethod
    def _role(cls) -> str:
        return "scene" if cls.is_image else "mask"

    @property
    def dtype(self) -> torch.dtype:
        """Tensor dtype of the samples."""
        return self._dtype

    @property
    def resampling(self) -> Resampling:
        """Resampling used by reads that do not fall on the source grid."""
        return self._resampling if self._resampling is not None else super().resampling

    @property
    def band_count(self) -> int:
        """Number of bands of every file."""
        return self.infos[0].count

    @property
    def source_dtype(self) -> str:
        """Numpy dtype name of the first file's bands (what tiles are written as)."""
        return self.infos[0].dtype

    @property
    def nodata_value(self) -> float:
        """Value that marks missing pixels in samples (see :func:`~geocl.data.rasters.nodata_value`)."""
        return nodata_value(self.infos)


class SceneMask(SceneImage):
    """Class mask of a scene; samples carry ``mask`` as ``[H, W]`` long (nearest resampling).

    Every class mask geocl reads goes through here, so every command holds masks to one
    rule (:func:`~geocl.data.rasters.mask_classes`): class values are integers. A float
    mask is accepted when its valid pixels are whole numbers; NaN pixels and the
    file's nodata then read as :attr:`mask_nodata`, an integer outside the classes.

    ``nodata`` names a value that means "unlabelled" in a mask whose file does not say
    so (no nodata tag; 0 is common): it becomes :attr:`mask_nodata`, so those pixels
    are left out of the classes, the loss and the metrics instead of becoming a class.
    The file's own nodata, if it sets one, still means unlabelled and reads as
    ``nodata`` too, and so do parts of the image the mask does not cover.

    Args:
        path: a one-band GeoTIFF or a folder of them.
        crs: CRS to reproject to (default: the first file's).
        res: pixel size in CRS units (default: the first file's).
        transforms: TorchGeo-style sample transform (sees the integer ``mask``).
        nodata: the value of unlabelled pixels, or None (the file's nodata).

    Raises:
        GeoclError: as :class:`SceneImage`, if a mask has more than one band, if a
            pixel holds a value that is no integer class (naming the file and pixel),
            and if ``nodata`` does not fit an integer mask's dtype.
    """

    is_image = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        crs: ProjCRS | None = None,
        res: float | tuple[float, float] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        nodata: int | None = None,
    ) -> None:
        super().__init__(path, crs=crs, res=res, dtype=torch.long, resampling=Resampling.nearest)
        if self.band_count != 1:
            raise InvalidInputError(
                f"a class mask must have one band, this one has {self.band_count}", path=self.infos[0].path
            )
        self.mask_classes: MaskClasses = mask_classes(self.infos, unlabelled=nodata)
        if self.mask_classes.from_float:  # read floats (exact for float32), so NaN and nodata can be told apart
            self._dtype = torch.float64
        if nodata is not None and self.mask_classes.source_nodata is None:
            # TorchGeo fills what the files do not cover with their nodata, 0 without one:
            # this nodata makes that fill "unlabelled" too (TorchGeo reads through a VRT then)
            self.nodata = nodata
        self._class_transforms = transforms

    @property
    def dtype(self) -> torch.dtype:
        """Tensor dtype TorchGeo reads into: float64 for a float mask (exact for float32, NaN kept), else long.

        Samples always carry ``mask`` as long.
        """
        return self._dtype

    @property
    def mask_nodata(self) -> int | None:
        """The integer that marks pixels without a class (in samples and mask tiles), or None."""
        return self.mask_classes.nodata

    @property
    def class_dtype(self) -> str:
        """Numpy dtype name that holds the classes and :attr:`mask_nodata` (what mask tiles are written as)."""
        return self.mask_classes.dtype

    def __getitem__(self, index: Any) -> Sample:
        sample = super().__getitem__(index)
        if self.mask_classes.from_float:
            sample["mask"] = self._to_classes(sample["mask"])
        elif (source_nodata := self._differing_file_nodata()) is not None:  # the file's nodata also means unlabelled
            sample["mask"] = sample["mask"].masked_fill(sample["mask"] == int(source_nodata), self.mask_classes.nodata)
        if self._class_transforms is not None:
            sample = self._class_transforms(sample)
        return sample

    def _differing_file_nodata(self) -> float | None:
        """The nodata an integer mask's file sets, when it is another than :attr:`mask_nodata`
        (``nodata`` was given), else None."""
        source, nodata = self.mask_classes.source_nodata, self.mask_classes.nodata
        differs = source is not None and nodata is not None and math.isfinite(source) and source != nodata
        return source if differs else None

    def _to_classes(self, values: torch.Tensor) -> torch.Tensor:
        missing = torch.isnan(values)
        source_nodata = self.mask_classes.source_nodata
        if source_nodata is not None and not math.isnan(source_nodata):
            missing |= values == source_nodata
        fractional = ~missing & (values != torch.floor(values))
        if fractional.any():  # mask_classes read every pixel; only a file changed since can get here
            raise InvalidInputError(
                f"a class mask needs integer class values, this one holds {values[fractional][0].item()}",
                path=self.source,
            )
        fill = self.mask_classes.nodata if self.mask_classes.nodata is not None else 0
        return values.masked_fill(missing, fill).to(torch.long)


def labelled_scene(image: SceneImage, mask: SceneMask) -> IntersectionDataset:
    """Join an image and its mask so every sample holds ``image`` and ``mask``.

    The mask is read on the image's grid (CRS and resolution of the image).

    Raises:
        GeoclError: if the image and the mask do not overlap.
    """
    try:
        return IntersectionDataset(image, mask, spatial_only=True)
    except RuntimeError:
        raise InvalidInputError(f"image and mask do not overlap (mask: {mask.source})", path=image.source) from None
