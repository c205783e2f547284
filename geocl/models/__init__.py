"""Encoders by name (timm) for any band count, and projection heads."""

from geocl.models.encoders import Encoder, create_encoder
from geocl.models.heads import projection_head

__all__ = ["Encoder", "create_encoder", "projection_head"]
