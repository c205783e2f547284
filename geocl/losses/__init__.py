"""Contrastive losses: lightly's where it has them, one module each for ours."""

from lightly.loss import NTXentLoss

__all__ = ["NTXentLoss"]
