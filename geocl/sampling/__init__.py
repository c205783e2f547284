"""Gradient-guided sampling: GraSS region maps, crop boxes, and a map-driven TorchGeo sampler.

* :mod:`geocl.sampling.regions` turns a contrastive loss's gradient on the last feature
  map into one crop box per view and crops the views (GraSS, spec "Stage 2").
* :mod:`geocl.sampling.geo_sampler` stores region maps as GeoTIFFs on their tiles' grid
  and draws training boxes from a scene with probability following them.
"""

from geocl.sampling.geo_sampler import GradientRegionSampler, box_sums, plot_region_overlay, write_region_map
from geocl.sampling.regions import (
    Box,
    crop_and_resize,
    gradient_maps,
    select_box,
    select_boxes,
    upsample_maps,
)

__all__ = [
    "Box",
    "GradientRegionSampler",
    "box_sums",
    "crop_and_resize",
    "gradient_maps",
    "plot_region_overlay",
    "select_box",
    "select_boxes",
    "upsample_maps",
    "write_region_map",
]
