"""geocl: self-supervised contrastive pretraining on geospatial rasters."""

from geocl.errors import GeoclError

__version__ = "0.1.0"

__all__ = ["GeoclError", "__version__"]
