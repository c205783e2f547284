"""The embedded, labelled scenes: a seeded synthetic landscape (rural) or city (urban) as GeoTIFFs.

:func:`make_scene` writes ``DIR/image.tif`` (a multispectral, reflectance-like
``uint16`` image), ``DIR/mask.tif`` (a ``uint8`` class mask) and, last,
``DIR/scene.json`` (the kind and the parameters that made it). A scene is complete
only once ``scene.json`` exists; a later call with the same parameters returns at once
without touching the files.

Two kinds (``make_scene(..., kind=...)``), each with its own classes
(:data:`CLASS_NAMES_BY_KIND`, :data:`CLASS_COLORS_BY_KIND`):

* ``"rural"`` (the default): a 1 m landscape with the classes of :data:`CLASS_NAMES`,
  described below;
* ``"urban"``: a 0.2 m city with the ISPRS Potsdam/Vaihingen classes of
  :data:`URBAN_CLASS_NAMES`, many objects smaller than a view and classes that
  per-pixel spectra do not separate, the setting of GraSS (arXiv:2306.15868); see
  :mod:`geocl.data.synthetic.urban`.

The rural landscape is built from spatially coherent objects whose sizes range from a few
pixels to hundreds of thousands of pixels:

* **water**: a meandering river with a tributary, lakes and small ponds;
* **forest**: patches from thresholded smooth noise, denser on high ground, plus woodlots;
* **cropland**: rotated rectangular field parcels inside Voronoi farm blocks, each parcel
  with its own crop stage (bare, green or ripe), hence its own spectrum and row texture;
* **grassland**: the background, pastures, field margins and gardens;
* **buildings**: villages and a town of rectangular houses along a street grid, large
  sheds, and isolated farmsteads;
* **roads**: main roads between settlements and to the scene edge (7-12 px), streets
  (3-5 px) and gravel farm and forest tracks (2-3 px);
* **bare_soil**: fallow parcels, quarries and construction sites, and dry patches.

The spectra are per-class mean vectors with deliberate overlap (grassland/cropland and
buildings/roads/bare soil), per-object offsets, multi-scale texture, terrain shading
from a smooth random elevation model and per-pixel sensor noise, so that a per-pixel
spectral classifier is far from perfect (see
:func:`geocl.evaluation.spectral_baseline.nearest_class_mean_miou`) while the classes
stay separable with spatial context.

Everything is drawn from one ``numpy.random.default_rng(seed)``: the same parameters
give byte-identical files (on one platform; float32 transcendental functions may
differ in the last bit between CPU families, which can flip a few pixel values).

Modules, in the order a scene is made:

* :mod:`~geocl.data.synthetic.writer`: :func:`make_scene`, parameters, cache, GeoTIFFs;
* :mod:`~geocl.data.synthetic.render`: the rural painters in order, then shading, texture, noise;
* :mod:`~geocl.data.synthetic.painters`: one painter per kind of object;
* :mod:`~geocl.data.synthetic.canvas`: class and object id per pixel while painting;
* :mod:`~geocl.data.synthetic.geometry` and :mod:`~geocl.data.synthetic.noise`: shapes
  and smooth random fields;
* :mod:`~geocl.data.synthetic.classes` and :mod:`~geocl.data.synthetic.spectra`: the
  legends and the spectral model;
* for the urban scene, :mod:`~geocl.data.synthetic.urban` (rendering),
  :mod:`~geocl.data.synthetic.urban_painters` (streets, blocks and objects) and
  :mod:`~geocl.data.synthetic.urban_spectra` (materials, shadows, texture).
"""

from geocl.data.synthetic.classes import (
    CLASS_COLORS,
    CLASS_COLORS_BY_KIND,
    CLASS_NAMES,
    CLASS_NAMES_BY_KIND,
    IMAGE_NODATA,
    MASK_NODATA,
    SCENE_KINDS,
    URBAN_CLASS_COLORS,
    URBAN_CLASS_NAMES,
)
from geocl.data.synthetic.writer import (
    DEFAULT_RESOLUTION,
    GENERATOR_VERSION,
    GENERATOR_VERSIONS,
    SceneFiles,
    SceneKind,
    make_scene,
)

__all__ = [
    "CLASS_COLORS",
    "CLASS_COLORS_BY_KIND",
    "CLASS_NAMES",
    "CLASS_NAMES_BY_KIND",
    "DEFAULT_RESOLUTION",
    "GENERATOR_VERSION",
    "GENERATOR_VERSIONS",
    "IMAGE_NODATA",
    "MASK_NODATA",
    "SCENE_KINDS",
    "URBAN_CLASS_COLORS",
    "URBAN_CLASS_NAMES",
    "SceneFiles",
    "SceneKind",
    "make_scene",
]
