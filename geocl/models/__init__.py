"""Encoders by name (timm) for any band count, projection heads, split-encode-combine tiles, frozen embeddings, momentum copies, FBA-Net's V-Net and multi-decoder segmenters."""

from geocl.models.embedding import embed_dataset
from geocl.models.encoders import Encoder, create_encoder
from geocl.models.fba_nets import MultiDecoderSegmenter, build_fba_network
from geocl.models.heads import projection_head
from geocl.models.momentum import frozen_copy
from geocl.models.split_combine import combine_tiles, num_combinations, split_tiles, tile_combinations
from geocl.models.vnet import VNet

__all__ = [
    "Encoder",
    "MultiDecoderSegmenter",
    "VNet",
    "build_fba_network",
    "combine_tiles",
    "create_encoder",
    "embed_dataset",
    "frozen_copy",
    "num_combinations",
    "projection_head",
    "split_tiles",
    "tile_combinations",
]
