"""The V-Net of FBA-Net / MC-Net+ (3D): plain conv stages, BatchNorm, additive skips, swappable upsampling.

This is the network of ``cys1102/FBA-Net`` ``code/networks/VNet.py`` (inherited from
UA-MT / MC-Net+), not Milletari et al.'s original V-Net. ``depth`` resolution levels
(released: 5) with ``width * 2**level`` channels (released width: 16, so 16..256):

* encoder level ``l``: ``min(l + 1, 3)`` convolutions 3x3x3 + BN + ReLU, then (except
  the deepest level) downsampling by a 2x2x2 convolution with stride 2 + BN + ReLU;
  Dropout3d on the deepest map (training only; ``dropout=0`` turns it off);
* decoder, from the deepest level up: upsampling to the next level's channels
  (transposed 2x2x2 conv, or trilinear / nearest x2 followed by a 3x3x3 conv) + BN +
  ReLU, the encoder's map of that level *added*, then ``min(l + 1, 3)`` convolutions;
  Dropout3d before the final 1x1x1 convolution to class logits.

MONAI's ``monai.networks.nets.VNet`` is a different network (residual 5x5x5 blocks,
PReLU/ELU, concatenated skips, one fixed upsampling) and cannot carry FBA-Net+'s three
decoders that differ only in upsampling, hence this module.

Every spatial side of the input must be a multiple of ``2**(depth - 1)`` (the additive
skips need the halvings to be exact).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

#: How a decoder doubles the resolution (FBA-Net+'s three decoders use one each).
Upsampling3d = Literal["transposed", "trilinear", "nearest"]


def convs_at_level(level: int) -> int:
    """3x3x3 convolutions of a stage at a resolution level (released: 1, 2, 3, 3, 3)."""
    return min(level + 1, 3)


class ConvStage(nn.Sequential):
    """``count`` x (Conv3d 3x3x3 + BatchNorm + ReLU); the first maps ``in_channels`` to ``out_channels``."""

    def __init__(self, count: int, in_channels: int, out_channels: int) -> None:
        layers: list[nn.Module] = []
        for index in range(count):
            layers += [
                nn.Conv3d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1),
                nn.BatchNorm3d(out_channels),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class Downsampling(nn.Sequential):
    """Halve the resolution: Conv3d 2x2x2 with stride 2 + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 2, stride=2), nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True)
        )


class Upsampling(nn.Sequential):
    """Double the resolution by ``mode``, then BatchNorm + ReLU.

    ``transposed``: ConvTranspose3d 2x2x2 stride 2; ``trilinear`` (align_corners, as
    released) / ``nearest``: x2 interpolation then Conv3d 3x3x3.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: Upsampling3d) -> None:
        if mode == "transposed":
            layers: list[nn.Module] = [nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2)]
        elif mode in ("trilinear", "nearest"):
            upsample = (
                nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True)
                if mode == "trilinear"
                else nn.Upsample(scale_factor=2, mode="nearest")
            )
            layers = [upsample, nn.Conv3d(in_channels, out_channels, 3, padding=1)]
        else:
            raise ValueError(f"unknown upsampling {mode!r}; choose transposed, trilinear or nearest")
        super().__init__(*layers, nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True))


class VNetEncoder(nn.Module):
    """V-Net encoder: ``[B, C, D, H, W]`` -> ``depth`` maps, level ``l`` ``[B, width*2**l, D/2**l, H/2**l, W/2**l]``.

    Args:
        in_chans: input channels.
        width: channels of the first level (released: 16).
        depth: resolution levels (released: 5).
        dropout: Dropout3d probability on the deepest map (released: 0.5 in training).
    """

    def __init__(self, in_chans: int = 1, width: int = 16, depth: int = 5, dropout: float = 0.5) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"a V-Net needs at least 2 levels, got depth {depth}")
        self.depth = depth
        self.out_channels = [width * 2**level for level in range(depth)]
        self.stages = nn.ModuleList()
        self.downsamplings = nn.ModuleList()
        previous = in_chans
        for level, channels in enumerate(self.out_channels):
            self.stages.append(ConvStage(convs_at_level(level), previous, channels))
            if level < depth - 1:
                self.downsamplings.append(Downsampling(channels, 2 * channels))
            previous = 2 * channels
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    @property
    def multiple(self) -> int:
        """What every input side must be a multiple of."""
        return 2 ** (self.depth - 1)

    def forward(self, volumes: Tensor) -> list[Tensor]:
        sides = tuple(volumes.shape[2:])
        if len(sides) != 3 or any(side % self.multiple for side in sides):
            raise ValueError(
                f"V-Net of depth {self.depth} needs [B, C, D, H, W] with sides multiple of {self.multiple}, got "
                f"{tuple(volumes.shape)}"
            )
        features: list[Tensor] = []
        x = volumes
        for level, stage in enumerate(self.stages):
            x = stage(x)
            if level == self.depth - 1:
                x = self.dropout(x)
            features.append(x)
            if level < self.depth - 1:
                x = self.downsamplings[level](x)
        return features


class VNetDecoder(nn.Module):
    """V-Net decoder: the encoder's maps -> logits ``[B, num_classes, D, H, W]``.

    Args:
        num_classes: output channels.
        width: the encoder's first-level channels.
        depth: the encoder's levels.
        upsampling: ``transposed``, ``trilinear`` or ``nearest``.
        dropout: Dropout3d probability before the 1x1x1 output convolution.
    """

    def __init__(
        self,
        num_classes: int,
        width: int = 16,
        depth: int = 5,
        upsampling: Upsampling3d = "transposed",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.upsampling = upsampling
        channels = [width * 2**level for level in range(depth)]
        self.ups = nn.ModuleList()
        self.stages = nn.ModuleList()
        for level in reversed(range(depth - 1)):  # the level each step arrives at
            self.ups.append(Upsampling(channels[level + 1], channels[level], upsampling))
            self.stages.append(ConvStage(convs_at_level(level), channels[level], channels[level]))
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.out_conv = nn.Conv3d(width, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for up, stage, skip in zip(self.ups, self.stages, reversed(features[:-1]), strict=True):
            x = stage(up(x) + skip)
        return self.out_conv(self.dropout(x))


class VNet(nn.Module):
    """A plain one-decoder V-Net (encoder + decoder): ``[B, C, D, H, W]`` -> logits ``[B, K, D, H, W]``.

    Args:
        in_chans, width, depth, dropout: see :class:`VNetEncoder`.
        num_classes: K.
        upsampling: see :class:`VNetDecoder`.
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 2,
        width: int = 16,
        depth: int = 5,
        upsampling: Upsampling3d = "transposed",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.encoder = VNetEncoder(in_chans, width, depth, dropout)
        self.decoder = VNetDecoder(num_classes, width, depth, upsampling, dropout)

    def forward(self, volumes: Tensor) -> Tensor:
        return self.decoder(self.encoder(volumes))
