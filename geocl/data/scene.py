"""TorchGeo datasets over the user's own GeoTIFFs: images, masks, and labelled pairs.

A *scene* is one GeoTIFF or a folder of them (any band count, dtype and CRS; files in
other CRSs are reprojected by TorchGeo to the first file's CRS). Images and masks are
separate :class:`~torchgeo.datasets.RasterDataset` instances joined with ``&`` into a
TorchGeo :class:`~torchgeo.datasets.IntersectionDataset`, as TorchGeo recommends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from pyproj import CRS as ProjCRS
from rasterio.enums import Resampling
from torchgeo.datasets import IntersectionDataset, RasterDataset

from geocl.data.rasters import RasterInfo, find_rasters, inspect_rasters, nodata_value
from geocl.errors import GeoclError

Sample = dict[str, Any]


class SceneImage(RasterDataset):
    """Image bands of a scene; samples carry ``image`` as ``[C, H, W]``.

    Args:
        path: a GeoTIFF or a folder of GeoTIFFs.
        crs: CRS to reproject to (default: the first file's).
        res: pixel size in CRS units (default: the first file's).
        dtype: tensor dtype of ``image``; ``torch.float64`` keeps every source value of
            integer and float32 rasters exact (used for tiling).
        resampling: how pixels are resampled when a read is reprojected or not aligned
            to the source grid (default: TorchGeo's choice, bilinear for float dtypes;
            the tiler asks for nearest so tiles keep the source values).
        transforms: TorchGeo-style sample transform.

    Raises:
        GeoclError: if a file is missing, unreadable, has no CRS or the band counts differ.
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
    ) -> None:
        self.source = path
        self._resampling = resampling
        self.infos: list[RasterInfo] = inspect_rasters(find_rasters(path, role=self._role()), role=self._role())
        self._dtype = dtype
        super().__init__(
            paths=[str(info.path) for info in self.infos], crs=crs, res=res, transforms=transforms
        )

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
    """Class mask of a scene; samples carry ``mask`` as ``[H, W]`` (nearest resampling).

    Args:
        path: a one-band GeoTIFF or a folder of them.
        crs: CRS to reproject to (default: the first file's).
        res: pixel size in CRS units (default: the first file's).
        transforms: TorchGeo-style sample transform.

    Raises:
        GeoclError: as :class:`SceneImage`, and if a mask has more than one band.
    """

    is_image = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        crs: ProjCRS | None = None,
        res: float | tuple[float, float] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
    ) -> None:
        super().__init__(path, crs=crs, res=res, dtype=torch.long, transforms=transforms)
        if self.band_count != 1:
            raise GeoclError(
                f"a class mask must have one band, this one has {self.band_count}",
                path=self.infos[0].path,
            )

    @property
    def mask_nodata(self) -> int | None:
        """The mask's own nodata value (pixels to ignore), or None."""
        value = self.infos[0].nodata
        return None if value is None else int(value)


def labelled_scene(image: SceneImage, mask: SceneMask) -> IntersectionDataset:
    """Join an image and its mask so every sample holds ``image`` and ``mask``.

    The mask is read on the image's grid (CRS and resolution of the image).

    Raises:
        GeoclError: if the image and the mask do not overlap.
    """
    try:
        return IntersectionDataset(image, mask, spatial_only=True)
    except RuntimeError:
        raise GeoclError(
            f"image and mask do not overlap (mask: {mask.source})", path=image.source
        ) from None
