"""Test inputs for remote rasters: Cloud-Optimized GeoTIFFs and STAC item collections made on the fly.

Built from the embedded synthetic scene (``geocl make-scene``) with rio-cogeo, as a data
provider builds them: internal tiles and overviews, so that a windowed read over HTTP
fetches a few tiles and a preview an overview, not the file.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pystac
import rasterio
import rasterio.warp
from rasterio.transform import Affine
from rasterio.windows import Window, bounds
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

#: The scene's bands as Sentinel-2 asset keys (blue, green, red, near infrared).
BAND_KEYS = ("B02", "B03", "B04", "B08")


def write_cog(
    data: np.ndarray, path: Path, *, crs: object, transform: Affine, nodata: float | None = 0, block: int = 128
) -> Path:
    """``data`` (``[C, H, W]``) as a COG: deflate, ``block`` px internal tiles, overviews down to one tile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw.tif")
    count, height, width = data.shape
    with rasterio.open(
        raw,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(data)
    profile = cog_profiles.get("deflate")
    profile.update(blockxsize=block, blockysize=block)
    cog_translate(raw, path, profile, quiet=True)
    raw.unlink()
    return path


def scene_cog(scene: Path, path: Path) -> Path:
    """The scene GeoTIFF ``scene`` rewritten as a COG at ``path`` (same pixels, CRS and grid)."""
    with rasterio.open(scene) as src:
        return write_cog(src.read(), path, crs=src.crs, transform=src.transform, nodata=src.nodata)


def item_collection(scene: Path, root: Path, columns: Sequence[tuple[int, int]], *, href: str = "relative") -> Path:
    """A STAC ItemCollection ``root/items.json``: one item a column range of ``scene``, one COG asset a band.

    Args:
        scene: a 4-band GeoTIFF (its bands become assets :data:`BAND_KEYS`).
        root: the folder of the collection (items in ``root/<item id>/<key>.tif``).
        columns: ``(first column, width)`` of each item, on the scene's grid.
        href: ``"relative"`` (``./item-0/B04.tif``) or a base URL the hrefs start with.

    Returns:
        The ``items.json`` path.
    """
    items = []
    with rasterio.open(scene) as src:
        for number, (first, width) in enumerate(columns):
            name = f"item-{number}"
            window = Window(first, 0, width, src.height)
            transform = src.window_transform(window)
            for band, key in enumerate(BAND_KEYS, start=1):
                write_cog(
                    src.read([band], window=window),
                    root / name / f"{key}.tif",
                    crs=src.crs,
                    transform=transform,
                    nodata=src.nodata,
                )
            west, south, east, north = rasterio.warp.transform_bounds(
                src.crs, "EPSG:4326", *bounds(window, src.transform)
            )
            ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
            item = pystac.Item(
                name,
                {"type": "Polygon", "coordinates": [ring]},
                [west, south, east, north],
                datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC),
                {},
            )
            for key in BAND_KEYS:
                where = f"./{name}/{key}.tif" if href == "relative" else f"{href}/{name}/{key}.tif"
                item.add_asset(key, pystac.Asset(where, media_type=pystac.MediaType.COG, roles=["data"]))
            items.append(item)
    document = root / "items.json"
    document.write_text(json.dumps(pystac.ItemCollection(items).to_dict(transform_hrefs=False)))
    return document
