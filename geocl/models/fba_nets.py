"""FBA-Net (one decoder) and FBA-Net+ (one shared encoder, three decoders) networks, 2D and 3D.

The networks only segment: ``x -> [logits_1, ..., logits_D]``. The contrast heads that
FBA-Net hangs on each decoder's logits belong to the loss
(:class:`geocl.losses.fba.FBContrastLoss`), so a trained network predicts without them.

* 3D: the released V-Net (:mod:`geocl.models.vnet`); FBA-Net+'s decoders upsample by
  transposed convolution, trilinear and nearest interpolation (in that order, as released).
* 2D: a U-Net on an smp ``tu-`` timm encoder, so any geocl pretrain checkpoint's
  encoder loads into it (:func:`geocl.finetune.model.load_pretrained_encoder` reads
  ``network.encoder.model``). Decoder 1 is smp's own ``UnetDecoder`` (nearest
  interpolation), so one-decoder FBA-Net is exactly ``smp.Unet`` (the model ``geocl
  finetune`` trains); decoders 2 and 3 interpolate bilinearly and upsample by
  transposed convolution. The released 2D code of FBA-Net (Chung et al., MICCAI 2023
  workshops, arXiv 2306.15189; a PyMIC U-Net with its own dropouts) is incomplete (it
  imports modules missing from its repository), so it is read as a description rather
  than a runnable reference; what FBA-Net+ needs from it is decoders that differ only in
  upsampling, which this keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder, UnetDecoderBlock
from segmentation_models_pytorch.encoders import get_encoder
from torch import Tensor, nn

from geocl.errors import GeoclError
from geocl.models.encoders import is_vision_transformer, timm_arguments, timm_name
from geocl.models.vnet import Upsampling3d, VNetDecoder, VNetEncoder

#: Upsampling of decoders 1, 2, 3 in 3D (released order).
VNET_UPSAMPLING: tuple[Upsampling3d, ...] = ("transposed", "trilinear", "nearest")
#: Upsampling of decoders 1, 2, 3 in 2D (decoder 1 = smp.Unet's).
Upsampling2d = Literal["nearest", "bilinear", "transposed"]
UNET_UPSAMPLING: tuple[Upsampling2d, ...] = ("nearest", "bilinear", "transposed")
#: smp.Unet's decoder widths (its default).
UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)


class MultiDecoderSegmenter(nn.Module):
    """One encoder shared by ``D`` decoders: ``x`` -> ``[logits_1, ..., logits_D]``.

    Args:
        encoder: ``x`` -> a list of feature maps.
        decoders: each maps that list to logits ``[B, K, *S]``.

    Attributes:
        encoder: the shared encoder (the attribute geocl reads encoders from).
        decoders: the decoders, decoder 1 first (the one used at test time).
    """

    def __init__(self, encoder: nn.Module, decoders: Sequence[nn.Module]) -> None:
        super().__init__()
        if not decoders:
            raise ValueError("a segmenter needs at least one decoder")
        self.encoder = encoder
        self.decoders = nn.ModuleList(decoders)

    @property
    def num_decoders(self) -> int:
        return len(self.decoders)

    def forward(self, images: Tensor) -> list[Tensor]:
        features = self.encoder(images)
        return [decoder(features) for decoder in self.decoders]


class TransposedUnetDecoderBlock(UnetDecoderBlock):
    """smp's U-Net block whose x2 upsampling is a learned ConvTranspose2d (2x2, stride 2).

    When the skip map is not exactly twice the size (odd sides), the parent's nearest
    interpolation to the skip's size fixes the last pixel; otherwise it is the identity.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, skip_channels, out_channels, interpolation_mode="nearest")
        self.transposed = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)

    def forward(
        self, feature_map: Tensor, target_height: int, target_width: int, skip_connection: Tensor | None = None
    ) -> Tensor:
        return super().forward(self.transposed(feature_map), target_height, target_width, skip_connection)


class UnetBranch(nn.Module):
    """One U-Net decoder + segmentation head on an smp encoder's features.

    Args:
        encoder_channels: the encoder's ``out_channels``.
        num_classes: output channels.
        upsampling: ``nearest`` (smp.Unet's), ``bilinear`` or ``transposed``.
        decoder_channels: decoder widths, one per encoder level.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        num_classes: int,
        upsampling: Upsampling2d = "nearest",
        decoder_channels: Sequence[int] = UNET_DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        depth = len(encoder_channels) - 1
        interpolation = "nearest" if upsampling == "transposed" else upsampling
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"unknown upsampling {upsampling!r}; choose nearest, bilinear or transposed")
        self.decoder = UnetDecoder(encoder_channels, decoder_channels, n_blocks=depth, interpolation_mode=interpolation)
        if upsampling == "transposed":
            # the channel bookkeeping of smp's UnetDecoder, block by block
            levels = list(encoder_channels[1:])[::-1]
            ins = [levels[0], *decoder_channels[:-1]]
            skips = [*levels[1:], 0]
            self.decoder.blocks = nn.ModuleList(
                TransposedUnetDecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels, strict=True)
            )
        self.head = SegmentationHead(decoder_channels[-1], num_classes, kernel_size=3)

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.head(self.decoder(features))


def fba_vnet(
    in_chans: int, num_classes: int, decoders: int = 1, *, width: int = 16, depth: int = 5, dropout: float = 0.5
) -> MultiDecoderSegmenter:
    """3D FBA-Net (``decoders=1``) or FBA-Net+ (``decoders=3``) on the released V-Net.

    Args:
        in_chans: input channels.
        num_classes: classes.
        decoders: 1 to 3; decoder ``d`` upsamples by ``VNET_UPSAMPLING[d]``.
        width, depth, dropout: see :class:`~geocl.models.vnet.VNetEncoder`.
    """
    _check_decoders(decoders)
    encoder = VNetEncoder(in_chans, width, depth, dropout)
    return MultiDecoderSegmenter(
        encoder, [VNetDecoder(num_classes, width, depth, mode, dropout) for mode in VNET_UPSAMPLING[:decoders]]
    )


def fba_unet(
    in_chans: int,
    num_classes: int,
    decoders: int = 1,
    *,
    encoder: str = "resnet18",
    encoder_depth: int = 5,
    decoder_channels: Sequence[int] | None = None,
    encoder_args: dict[str, Any] | None = None,
) -> MultiDecoderSegmenter:
    """2D FBA-Net (``decoders=1``, = ``smp.Unet``) or FBA-Net+ (``decoders=3``) on an smp ``tu-`` encoder.

    Args:
        in_chans: input bands.
        num_classes: classes.
        decoders: 1 to 3; decoder ``d`` upsamples by ``UNET_UPSAMPLING[d]``.
        encoder: timm (or smp ``tu-``) name of a CNN; randomly initialised.
        encoder_depth: encoder levels (smp: 3 to 5).
        decoder_channels: decoder widths (default smp's, trimmed to ``encoder_depth``).
        encoder_args: timm arguments (recipe ``encoder.args``).

    Raises:
        GeoclError: an unknown encoder, or a ViT (no feature pyramid for a U-Net).
    """
    _check_decoders(decoders)
    name = timm_name(encoder)
    if is_vision_transformer(name):
        raise GeoclError(
            f"FBA's U-Net needs a CNN encoder with a feature pyramid; {encoder!r} is a ViT", key="encoder.name"
        )
    body = get_encoder(
        f"tu-{name}", in_channels=in_chans, depth=encoder_depth, weights=None, **timm_arguments(encoder_args)
    )
    widths = tuple(decoder_channels) if decoder_channels is not None else UNET_DECODER_CHANNELS[:encoder_depth]
    if len(widths) != encoder_depth:
        raise GeoclError(
            f"needs {encoder_depth} decoder widths (one per encoder level), got {len(widths)}", key="decoder_channels"
        )
    return MultiDecoderSegmenter(
        body, [UnetBranch(body.out_channels, num_classes, mode, widths) for mode in UNET_UPSAMPLING[:decoders]]
    )


def build_fba_network(
    spatial_dims: int, in_chans: int, num_classes: int, decoders: int = 1, **options: Any
) -> MultiDecoderSegmenter:
    """:func:`fba_unet` (``spatial_dims=2``) or :func:`fba_vnet` (3) with their keyword options."""
    if spatial_dims == 2:
        return fba_unet(in_chans, num_classes, decoders, **options)
    if spatial_dims == 3:
        return fba_vnet(in_chans, num_classes, decoders, **options)
    raise GeoclError(f"must be 2 or 3, got {spatial_dims}", key="spatial_dims")


def _check_decoders(decoders: int) -> None:
    if not 1 <= decoders <= 3:
        raise GeoclError(f"FBA-Net has 1 (FBA-Net) or up to 3 (FBA-Net+) decoders, got {decoders}", key="decoders")


__all__ = [
    "MultiDecoderSegmenter",
    "TransposedUnetDecoderBlock",
    "UNET_UPSAMPLING",
    "UnetBranch",
    "VNET_UPSAMPLING",
    "build_fba_network",
    "fba_unet",
    "fba_vnet",
]
