"""Contrastive losses: lightly's where it has them, one module each for ours."""

from lightly.loss import NTXentLoss

from geocl.losses.fba import FBContrastLoss
from geocl.losses.local_infonce import LocalInfoNCELoss
from geocl.losses.soft_infonce import SoftTargetInfoNCELoss

__all__ = ["FBContrastLoss", "LocalInfoNCELoss", "NTXentLoss", "SoftTargetInfoNCELoss"]
