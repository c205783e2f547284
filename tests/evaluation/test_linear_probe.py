"""Linear probe on frozen features: separable data, torchmetrics against a manual count, seeding."""

from __future__ import annotations

import pytest
import torch

from geocl.errors import GeoclError
from geocl.evaluation.linear_probe import linear_probe_top1, top1_accuracy, train_linear_probe


def _clusters(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian clusters in 16-D, far apart along different axes (linearly separable)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.zeros(3, 16)
    centres[0, 0], centres[1, 1], centres[2, 2] = 8.0, 8.0, 8.0
    labels = torch.arange(3).repeat_interleave(per_class)
    features = (
        centres[labels] + torch.randn(len(labels), 16, generator=generator) + 100.0
    )  # an offset to standardise away
    return features, labels


def test_separable_features_are_learned_and_accuracy_is_a_plain_count() -> None:
    train, train_labels = _clusters(40, seed=0)
    test, test_labels = _clusters(20, seed=1)
    probe = train_linear_probe(train, train_labels, 3, epochs=30, lr=0.1, batch_size=32, seed=0)
    predicted = probe.predict(test)
    manual = sum(int(p == t) for p, t in zip(predicted.tolist(), test_labels.tolist(), strict=True)) / len(test_labels)
    assert manual >= 0.95
    assert top1_accuracy(predicted, test_labels, 3) == pytest.approx(manual)
    accuracy = linear_probe_top1(train, train_labels, test, test_labels, 3, epochs=30, lr=0.1, batch_size=32, seed=0)
    assert accuracy == pytest.approx(manual)


def test_top1_accuracy_counts_hits_over_all_samples() -> None:
    predicted = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    labels = torch.tensor([0, 1, 1, 2, 0, 0, 2])
    assert top1_accuracy(predicted, labels, 3) == pytest.approx(4 / 7)  # hits at 0, 1, 3, 5


def test_same_seed_same_probe_other_seed_other_init() -> None:
    features, labels = _clusters(10, seed=2)
    first = train_linear_probe(features, labels, 3, epochs=2, seed=5)
    again = train_linear_probe(features, labels, 3, epochs=2, seed=5)
    other = train_linear_probe(features, labels, 3, epochs=2, seed=6)
    assert torch.equal(first.layer.weight, again.layer.weight)
    assert not torch.equal(first.layer.weight, other.layer.weight)


def test_bad_options_fail_with_the_option_named() -> None:
    features, labels = _clusters(2, seed=0)
    with pytest.raises(GeoclError) as caught:
        train_linear_probe(features, labels, 3, epochs=0)
    assert caught.value.key == "probe_epochs"
