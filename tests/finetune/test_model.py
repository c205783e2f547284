"""Building the segmenters: the dense linear probe reads the encoder stages it is told to."""

from __future__ import annotations

import pytest
import timm
import torch

from geocl.errors import GeoclError
from geocl.finetune.linear_probe import DenseLinearProbe
from geocl.finetune.model import build_segmenter


def test_a_probe_of_resnet18_layer3_and_layer4_classifies_their_channels() -> None:
    probe = build_segmenter("linear", "resnet18", 4, 3, probe_stages=(5, 4))
    assert isinstance(probe, DenseLinearProbe) and probe.read == (4, 5)
    # an independent reference for the widths: timm's own ResNet-18, layer3 and layer4
    reference = timm.create_model("resnet18", pretrained=False, features_only=True, in_chans=4)
    widths = dict(zip(reference.feature_info.module_name(), reference.feature_info.channels(), strict=True))
    assert (widths["layer3"], widths["layer4"]) == (256, 512)
    assert probe.classifier.in_channels == widths["layer3"] + widths["layer4"]
    assert [norm.num_features for norm in probe.norms] == [256, 512]
    assert probe.eval()(torch.randn(1, 4, 64, 64)).shape == (1, 3, 64, 64)
    # by default every stage: stem 64, layer1-4 64 + 128 + 256 + 512
    assert build_segmenter("linear", "resnet18", 4, 3).classifier.in_channels == sum(widths.values())


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus"])
def test_stages_for_a_network_without_a_probe_are_refused(arch: str) -> None:
    with pytest.raises(GeoclError, match=f"dense linear probe only \\(arch linear\\), not to {arch}") as caught:
        build_segmenter(arch, "test_resnet", 4, 3, probe_stages=[4, 5])
    assert caught.value.key == "probe_stages"


def test_a_stage_the_encoder_does_not_have_is_refused() -> None:
    with pytest.raises(GeoclError, match="choose one or more of the encoder stages") as caught:
        build_segmenter("linear", "test_resnet", 4, 3, probe_stages=[0, 4])
    assert caught.value.key == "probe_stages"
