"""FBA-Net / FBA-Net+ networks: one shared encoder, decoders differing only in upsampling; 2D = smp.Unet."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from geocl.errors import GeoclError
from geocl.finetune.model import load_pretrained_encoder
from geocl.models.fba_nets import TransposedUnetDecoderBlock, build_fba_network, fba_unet, fba_vnet
from geocl.models.vnet import VNetDecoder

SMALL_DECODER = (32, 16, 16, 8, 8)


def test_fba_vnet_plus_shares_one_encoder_between_three_decoders() -> None:
    torch.manual_seed(0)
    network = fba_vnet(1, 2, 3, width=4, depth=3, dropout=0.0)
    assert network.num_decoders == 3 and all(isinstance(d, VNetDecoder) for d in network.decoders)
    assert [d.upsampling for d in network.decoders] == ["transposed", "trilinear", "nearest"]
    # the decoders differ only in their upsampling layers
    layers = [[type(m).__name__ for m in d.modules()] for d in network.decoders]
    assert layers[1] == layers[2] and layers[0] != layers[1]
    logits = network(torch.randn(2, 1, 8, 8, 8))
    assert [tuple(z.shape) for z in logits] == [(2, 2, 8, 8, 8)] * 3
    # every decoder's loss reaches the one encoder
    logits[2].sum().backward()
    assert all(p.grad is not None for p in network.encoder.parameters())
    assert all(p.grad is None for p in network.decoders[0].parameters())


def test_one_decoder_2d_network_is_smp_unet() -> None:
    torch.manual_seed(0)
    network = fba_unet(3, 4, 1, encoder="test_resnet", decoder_channels=SMALL_DECODER).eval()
    reference = smp.Unet(
        "tu-test_resnet", encoder_weights=None, in_channels=3, classes=4, decoder_channels=SMALL_DECODER
    ).eval()
    renamed = {
        key.replace("decoders.0.decoder.", "decoder.").replace("decoders.0.head.", "segmentation_head."): value
        for key, value in network.state_dict().items()
    }
    reference.load_state_dict(renamed, strict=True)
    images = torch.randn(2, 3, 32, 32)
    (logits,) = network(images)
    torch.testing.assert_close(logits, reference(images))


def test_three_2d_decoders_upsample_by_nearest_bilinear_and_transposed_conv() -> None:
    network = fba_unet(1, 3, 3, encoder="test_resnet", decoder_channels=SMALL_DECODER)
    first, second, third = network.decoders
    assert {b.interpolation_mode for b in first.decoder.blocks} == {"nearest"}
    assert {b.interpolation_mode for b in second.decoder.blocks} == {"bilinear"}
    assert all(isinstance(b, TransposedUnetDecoderBlock) for b in third.decoder.blocks)
    assert not any(isinstance(b, TransposedUnetDecoderBlock) for b in first.decoder.blocks)
    # same decoder layer shapes apart from the transposed convolutions
    plain = {k: v.shape for k, v in first.state_dict().items()}
    learned = {k: v.shape for k, v in third.state_dict().items() if ".transposed." not in k}
    assert plain == learned
    for size in ((32, 32), (40, 36)):  # odd sides deep down: the transposed blocks still meet their skips
        assert [tuple(z.shape) for z in network(torch.randn(2, 1, *size))] == [(2, 3, *size)] * 3


def test_a_pretrained_encoder_loads_into_the_shared_encoder() -> None:
    torch.manual_seed(1)
    pretrained = timm.create_model("test_resnet", in_chans=4, num_classes=0, global_pool="")
    loaded = {"meta": {"in_chans": 4, "encoder": "test_resnet"}, "encoder_state": pretrained.state_dict()}
    network = fba_unet(4, 2, 3, encoder="test_resnet", decoder_channels=SMALL_DECODER)
    load_pretrained_encoder(network, "pretrain.ckpt", 4, loaded=loaded)
    for key, value in pretrained.state_dict().items():
        torch.testing.assert_close(network.encoder.model.state_dict()[key], value)


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(GeoclError, match="decoders"):
        fba_vnet(1, 2, 4)
    with pytest.raises(GeoclError, match="ViT"):
        fba_unet(3, 2, 1, encoder="vit_tiny_patch16_224")
    with pytest.raises(GeoclError, match="decoder widths"):
        fba_unet(3, 2, 1, encoder="test_resnet", decoder_channels=(8, 8))
    with pytest.raises(GeoclError, match="2 or 3"):
        build_fba_network(1, 3, 2)
    assert isinstance(build_fba_network(3, 1, 2, 1, width=4, depth=2).encoder, nn.Module)
