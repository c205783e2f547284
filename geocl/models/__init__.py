"""Encoders by name (timm) for any band count, their starting weights (TorchGeo, timm, files; offline), projection heads, split-encode-combine tiles, frozen embeddings, momentum copies, FBA-Net's V-Net and multi-decoder segmenters."""

from geocl.models.embedding import embed_dataset
from geocl.models.encoders import Encoder, create_encoder, evaluation_encoder, load_checkpoint_encoder
from geocl.models.fba_nets import MultiDecoderSegmenter, build_fba_network
from geocl.models.heads import projection_head
from geocl.models.momentum import frozen_copy
from geocl.models.split_combine import combine_tiles, num_combinations, split_tiles, tile_combinations
from geocl.models.vnet import VNet
from geocl.models.weights import (
    StartingWeights,
    WeightsNotFoundError,
    adapt_band_count,
    band_mapping,
    load_starting_weights,
    resolve_weights,
)

__all__ = [
    "Encoder",
    "MultiDecoderSegmenter",
    "StartingWeights",
    "VNet",
    "WeightsNotFoundError",
    "adapt_band_count",
    "band_mapping",
    "build_fba_network",
    "combine_tiles",
    "create_encoder",
    "embed_dataset",
    "evaluation_encoder",
    "frozen_copy",
    "load_checkpoint_encoder",
    "load_starting_weights",
    "num_combinations",
    "projection_head",
    "resolve_weights",
    "split_tiles",
    "tile_combinations",
]
