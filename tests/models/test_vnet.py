"""The released V-Net: level shapes and widths, the parameter count of its layer list, upsampling modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geocl.models.vnet import Upsampling, VNet, VNetDecoder, VNetEncoder, convs_at_level


def released_vnet_parameters(in_chans: int, classes: int, width: int) -> int:
    """Weights of the released ``VNet(normalization='batchnorm')`` with a transposed-conv decoder, layer by layer."""

    def conv(cin: int, cout: int, kernel: int) -> int:
        return cin * cout * kernel**3 + cout

    def conv_bn(cin: int, cout: int, kernel: int = 3) -> int:
        return conv(cin, cout, kernel) + 2 * cout

    c = [width * 2**level for level in range(5)]
    encoder = (
        conv_bn(in_chans, c[0])  # block_one: 1 conv
        + conv_bn(c[0], c[1], 2)
        + 2 * conv_bn(c[1], c[1])  # block_one_dw, block_two: 2 convs
        + conv_bn(c[1], c[2], 2)
        + 3 * conv_bn(c[2], c[2])  # block_two_dw, block_three: 3 convs
        + conv_bn(c[2], c[3], 2)
        + 3 * conv_bn(c[3], c[3])
        + conv_bn(c[3], c[4], 2)
        + 3 * conv_bn(c[4], c[4])
    )
    decoder = (
        conv_bn(c[4], c[3], 2)
        + 3 * conv_bn(c[3], c[3])  # block_five_up (transposed 2x2x2), block_six
        + conv_bn(c[3], c[2], 2)
        + 3 * conv_bn(c[2], c[2])
        + conv_bn(c[2], c[1], 2)
        + 2 * conv_bn(c[1], c[1])
        + conv_bn(c[1], c[0], 2)
        + 1 * conv_bn(c[0], c[0])
        + conv(c[0], classes, 1)  # out_conv
    )
    return encoder + decoder


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_vnet_is_the_released_one() -> None:
    model = VNet(in_chans=1, num_classes=2)  # width 16, depth 5
    assert model.encoder.out_channels == [16, 32, 64, 128, 256]
    assert [convs_at_level(level) for level in range(5)] == [1, 2, 3, 3, 3]
    assert count(model) == released_vnet_parameters(1, 2, 16) == 9_448_866  # the "9.44M" V-Net of UA-MT/MC-Net


def test_levels_have_the_stated_shapes_and_logits_the_input_size() -> None:
    encoder = VNetEncoder(in_chans=2, width=4, depth=4, dropout=0.0)
    features = encoder(torch.randn(2, 2, 16, 24, 8))
    assert [tuple(f.shape) for f in features] == [
        (2, 4, 16, 24, 8),
        (2, 8, 8, 12, 4),
        (2, 16, 4, 6, 2),
        (2, 32, 2, 3, 1),
    ]
    decoder = VNetDecoder(num_classes=3, width=4, depth=4, dropout=0.0)
    assert decoder(features).shape == (2, 3, 16, 24, 8)


def test_sides_must_be_multiples_of_the_halvings() -> None:
    model = VNet(width=4, depth=3)
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.randn(1, 1, 16, 16, 10))
    with pytest.raises(ValueError, match="at least 2 levels"):
        VNetEncoder(depth=1)


@pytest.mark.parametrize(
    ("mode", "layer"), [("transposed", nn.ConvTranspose3d), ("trilinear", nn.Upsample), ("nearest", nn.Upsample)]
)
def test_upsampling_modes(mode: str, layer: type[nn.Module]) -> None:
    up = Upsampling(8, 4, mode)  # type: ignore[arg-type]
    assert isinstance(up[0], layer)
    if mode != "transposed":
        assert up[0].mode == mode and isinstance(up[1], nn.Conv3d) and up[1].kernel_size == (3, 3, 3)
    assert isinstance(up[-2], nn.BatchNorm3d) and isinstance(up[-1], nn.ReLU)
    assert up(torch.randn(1, 8, 2, 3, 4)).shape == (1, 4, 4, 6, 8)
    with pytest.raises(ValueError, match="unknown upsampling"):
        Upsampling(8, 4, "bicubic")  # type: ignore[arg-type]


def test_dropout_only_in_training_and_gradients_reach_every_weight() -> None:
    torch.manual_seed(0)
    model = VNet(width=4, depth=3, dropout=0.5)
    volumes = torch.randn(2, 1, 8, 8, 8)
    model.eval()
    torch.testing.assert_close(model(volumes), model(volumes))
    model.train()
    model(volumes).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(model.encoder.dropout, nn.Dropout3d) and isinstance(model.decoder.dropout, nn.Dropout3d)
    assert isinstance(VNet(width=4, depth=3, dropout=0.0).encoder.dropout, nn.Identity)
