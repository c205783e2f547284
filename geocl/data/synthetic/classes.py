"""Land-cover classes of the synthetic scene: names, mask values, nodata and colours."""

from __future__ import annotations

#: Land-cover classes; the mask value of a class is its index here.
CLASS_NAMES: tuple[str, ...] = (
    "water",
    "forest",
    "cropland",
    "grassland",
    "buildings",
    "roads",
    "bare_soil",
)

#: Mask value of pixels outside the image footprint.
MASK_NODATA: int = 255

#: Image value (in every band) of pixels outside the image footprint.
IMAGE_NODATA: int = 0

WATER, FOREST, CROPLAND, GRASSLAND, BUILDINGS, ROADS, BARE_SOIL = range(7)
N_CLASSES = len(CLASS_NAMES)

#: RGB colour per class, written as the mask's colour map (for GIS viewers and previews).
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (30, 90, 200),
    (20, 100, 40),
    (230, 200, 60),
    (140, 210, 110),
    (200, 40, 40),
    (90, 90, 90),
    (160, 110, 60),
)
