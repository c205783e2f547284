"""Frozen dataset embeddings: dataset order, collected fields, encoder mode restored."""

from __future__ import annotations

import torch
from torch import nn

from geocl.models import embed_dataset


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int, with_label: bool) -> None:
        self.images = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        self.with_label = with_label

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> dict:
        sample = {"image": self.images[item]}
        if self.with_label:
            sample["label"] = item % 3
        return sample


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_features_in_dataset_order_with_collected_labels() -> None:
    encoder = _encoder().train()
    features, fields = embed_dataset(encoder, _Items(7, with_label=True), batch_size=3, collect=("label", "bounds"))
    assert encoder.training  # mode restored
    assert list(fields) == ["label"]  # bounds: no item has them
    assert fields["label"].tolist() == [i % 3 for i in range(7)]
    with torch.no_grad():
        one_by_one = torch.cat([encoder.eval()(image[None]) for image in _Items(7, with_label=True).images])
    torch.testing.assert_close(features, one_by_one)


def test_an_empty_dataset_gives_empty_results() -> None:
    features, fields = embed_dataset(_encoder(), _Items(0, with_label=True), collect=("label",))
    assert features.shape[0] == 0 and fields["label"].numel() == 0
