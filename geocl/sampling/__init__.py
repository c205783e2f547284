"""Gradient-guided sampling: GraSS region maps, crop boxes, and a map-driven TorchGeo sampler.

* :mod:`geocl.sampling.regions` turns a contrastive loss's gradient on the last feature
  map into one crop box per view and crops the views (GraSS's second stage, arXiv 2306.15868).
* :mod:`geocl.sampling.geo_sampler` stores region maps as GeoTIFFs on their tiles' grid
  and draws training boxes from a scene with probability following them.
* :mod:`geocl.sampling.semantic_pairs` mines SPPS semantic positive pairs: images a
  frozen encoder finds alike, footprints apart.
"""

from geocl.sampling.geo_sampler import GradientRegionSampler, box_sums
from geocl.sampling.region_rasters import write_region_map
from geocl.sampling.regions import (
    Box,
    box_purity,
    crop_and_resize,
    gradient_maps,
    move_boxes,
    select_box,
    select_boxes,
    upsample_maps,
)
from geocl.sampling.semantic_pairs import (
    SemanticPairs,
    SemanticPairSampler,
    SPPSConfig,
    footprint_conflicts,
    mine_pairs,
)

__all__ = [
    "Box",
    "GradientRegionSampler",
    "SPPSConfig",
    "SemanticPairSampler",
    "SemanticPairs",
    "box_purity",
    "box_sums",
    "crop_and_resize",
    "footprint_conflicts",
    "gradient_maps",
    "mine_pairs",
    "move_boxes",
    "select_box",
    "select_boxes",
    "upsample_maps",
    "write_region_map",
]
