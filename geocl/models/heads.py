"""Projection heads (lightly's)."""

from __future__ import annotations

from lightly.models.modules import SimCLRProjectionHead
from torch import nn


def projection_head(input_dim: int, hidden_dim: int, output_dim: int, batch_norm: bool = False) -> nn.Module:
    """SimCLR projection head ``Linear -> [BN] -> ReLU -> Linear``.

    GraSS (arXiv 2306.15868): its released config asks for a ReLU after the first Linear
    but the code's head drops it; the stated intent, the SimCLR MLP, is taken here:
    Linear-ReLU-Linear (no BN by default).

    Args:
        input_dim: encoder feature size D.
        hidden_dim: hidden width.
        output_dim: embedding size.
        batch_norm: add BatchNorm1d after the hidden layer.
    """
    return SimCLRProjectionHead(input_dim, hidden_dim, output_dim, num_layers=2, batch_norm=batch_norm)
