"""Classes of the synthetic scenes, per kind (rural, urban): names, mask values, nodata and colours."""

from __future__ import annotations

#: Land-cover classes; the mask value of a class is its index here.
CLASS_NAMES: tuple[str, ...] = ("water", "forest", "cropland", "grassland", "buildings", "roads", "bare_soil")

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

#: Classes of the urban scene (the ISPRS Potsdam/Vaihingen 2D labelling legend, in its
#: order); the mask value of a class is its index here.
URBAN_CLASS_NAMES: tuple[str, ...] = ("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter")

IMPERVIOUS, BUILDING, LOW_VEGETATION, TREE, CAR, CLUTTER = range(6)
N_URBAN_CLASSES = len(URBAN_CLASS_NAMES)

#: RGB colour per urban class: the ISPRS benchmark's label colours.
URBAN_CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
)

#: The scene kinds :func:`~geocl.data.synthetic.make_scene` knows, the default first.
SCENE_KINDS: tuple[str, ...] = ("rural", "urban")

#: Class names per scene kind.
CLASS_NAMES_BY_KIND: dict[str, tuple[str, ...]] = {"rural": CLASS_NAMES, "urban": URBAN_CLASS_NAMES}

#: Class colours per scene kind.
CLASS_COLORS_BY_KIND: dict[str, tuple[tuple[int, int, int], ...]] = {"rural": CLASS_COLORS, "urban": URBAN_CLASS_COLORS}
