"""The frozen protocol's dense linear probe: only the 1x1 classifier trains; the encoder stays as pretrained."""

from __future__ import annotations

from pathlib import Path

import lightning
import pytest
import torch
from torch.utils.data import DataLoader

from geocl.errors import GeoclError
from geocl.finetune.linear_probe import DenseLinearProbe
from geocl.finetune.model import build_segmenter
from geocl.finetune.train import SegmentationModule


def test_probe_is_linear_on_upsampled_multilevel_features() -> None:
    probe = build_segmenter("linear", "test_resnet", 4, 5)
    assert isinstance(probe, DenseLinearProbe)
    images = torch.randn(2, 4, 32, 32)
    logits = probe.eval()(images)
    assert logits.shape == (2, 5, 32, 32)
    # the head is a 1x1 convolution of the upsampled, standardised features: recompute it in
    # that (expensive) order by hand; the probe computes it per stage before upsampling
    with torch.no_grad():
        probe.classifier.bias.normal_()
        for norm in probe.norms:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
    logits = probe(images)
    features = probe.features(images)
    assert features.shape[1] == sum(probe.encoder.out_channels[1:])
    mean = torch.cat([norm.running_mean for norm in probe.norms])
    std = torch.sqrt(torch.cat([norm.running_var for norm in probe.norms]) + probe.norms[0].eps)
    standardised = (features - mean[None, :, None, None]) / std[None, :, None, None]
    expected = torch.einsum("bdhw,kd->bkhw", standardised, probe.classifier.weight[:, :, 0, 0])
    expected = expected + probe.classifier.bias[None, :, None, None]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(GeoclError, match="CNN encoders") as caught:
        build_segmenter("linear", "vit_tiny_patch16_224", 4, 5)
    assert caught.value.key == "arch"


def test_training_leaves_every_encoder_weight_and_statistic_unchanged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = SegmentationModule("linear", "test_resnet", 4, 3, crop=32, freeze_encoder=True)
    encoder_before = {key: value.clone() for key, value in module.model.encoder.state_dict().items()}
    classifier_before = module.model.classifier.weight.detach().clone()
    batches = [{"image": torch.randn(4, 4, 32, 32), "mask": torch.randint(0, 3, (4, 32, 32))} for _ in range(3)]
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))
    for key, value in module.model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key  # weights and BatchNorm running statistics
    assert not torch.equal(module.model.classifier.weight, classifier_before)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"model.classifier.weight", "model.classifier.bias"}


def test_deep_only_probe_equals_the_full_probe_with_shallow_weights_zeroed() -> None:
    # an independent reference: the full probe, its classifier columns of the stride-2/4/8 stages set
    # to 0, computes exactly what the probe of the stride-16/32 stages computes with the same weights
    torch.manual_seed(0)
    full = DenseLinearProbe("test_resnet", 4, 3, stages=(1, 2, 3, 4, 5)).eval()
    deep = DenseLinearProbe("test_resnet", 4, 3, stages=(5, 4)).eval()
    assert deep.read == (4, 5)
    deep.encoder.load_state_dict(full.encoder.state_dict())
    widths = full.encoder.out_channels
    assert deep.widths == [widths[4], widths[5]]
    with torch.no_grad():
        for norm in [*full.norms, *deep.norms]:
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
        for target, source in zip(deep.norms, full.norms[3:], strict=True):
            target.load_state_dict(source.state_dict())
        full.classifier.weight.normal_()
        full.classifier.bias.normal_()
        shallow = sum(widths[1:4])
        full.classifier.weight[:, :shallow] = 0.0
        deep.classifier.weight.copy_(full.classifier.weight[:, shallow:])
        deep.classifier.bias.copy_(full.classifier.bias)
    images = torch.randn(2, 4, 64, 64)
    stages = deep.stages(images)
    assert [tuple(stage.shape[-2:]) for stage in stages] == [(4, 4), (2, 2)]  # 64 px / 16 and / 32
    torch.testing.assert_close(deep(images), full(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stages", [(), (0,), (4, 6)])
def test_a_stage_the_encoder_lacks_is_refused_naming_the_key(stages: tuple[int, ...]) -> None:
    with pytest.raises(GeoclError, match="encoder stages") as caught:
        DenseLinearProbe("test_resnet", 4, 3, stages=stages)
    assert caught.value.key == "probe_stages"
