"""Finetuning from named starting weights: the smp encoder gets them, band-adapted; the decoder stays random."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from geocl.errors import GeoclError
from geocl.finetune.model import build_segmenter, load_encoder_weights


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus", "linear"])
def test_a_cnn_segmenter_encoder_starts_from_a_weights_file(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    stored = timm.create_model("test_resnet").state_dict()  # 3 bands, with its classifier
    path = tmp_path / "start.pth"
    torch.save(stored, path)
    model = build_segmenter(arch, "tu-test_resnet", 4, 5)
    decoder_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    record = load_encoder_weights(model, str(path), "tu-test_resnet", 4)
    state = model.encoder.model.state_dict()
    # the stated mapping for 3 -> 4 bands, by hand: channels 0, 1, 2, 0, each times 3/4
    first = stored["conv1.0.weight"]
    expected = torch.stack([first[:, 0], first[:, 1], first[:, 2], first[:, 0]], dim=1) * 0.75
    torch.testing.assert_close(state["conv1.0.weight"], expected)
    torch.testing.assert_close(state["layer4.0.conv2.weight"], stored["layer4.0.conv2.weight"])
    for key, value in model.state_dict().items():
        if key in decoder_before:
            torch.testing.assert_close(value, decoder_before[key])
    assert record["weights_bands"] == 3 and record["in_chans"] == 4 and record["source"] == "file"


def test_a_vit_segmenter_encoder_starts_from_weights_at_its_patch_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    stored = timm.create_model("test_vit", in_chans=13).state_dict()  # patch 16
    path = tmp_path / "vit.pth"
    torch.save(stored, path)
    model = build_segmenter("dpt", "test_vit", 3, 2, {"patch_size": 8, "img_size": 32})
    load_encoder_weights(model, str(path), "test_vit", 3)
    state = model.encoder.model.state_dict()
    torch.testing.assert_close(state["blocks.1.mlp.fc1.weight"], stored["blocks.1.mlp.fc1.weight"])
    assert state["patch_embed.proj.weight"].shape[1:] == (3, 8, 8)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_weights_of_another_encoder_are_refused_with_the_option_named(tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit").state_dict(), path)
    with pytest.raises(GeoclError) as error:
        load_encoder_weights(build_segmenter("unet", "test_resnet", 4, 2), str(path), "test_resnet", 4)
    assert error.value.key == "encoder_weights" and "do not fit encoder test_resnet" in str(error.value)
