"""Linear probe: a linear classifier trained on frozen, pooled encoder features.

The encoder is frozen and its features are computed once (no augmentation), so the
probe trains on a fixed ``[N, D]`` matrix in seconds on a CPU. Choices where the papers
leave the protocol open: features are standardised with the train features' mean and
std before the layer (MAE's parameter-free BatchNorm), so one learning rate fits every
encoder's feature scale; SGD with momentum 0.9, no weight decay and a cosine-decayed
learning rate (PatchMix: SGD, wd 0; the epochs are CPU-sized); top-1 accuracy by
torchmetrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from geocl.errors import GeoclError


@dataclass
class LinearProbe:
    """A trained probe: standardisation of the train features, then a linear layer.

    Attributes:
        mean: per-feature mean of the train features ``[D]``.
        std: per-feature std of the train features ``[D]`` (clamped away from 0).
        layer: the linear classifier ``D -> num_classes``.
    """

    mean: Tensor
    std: Tensor
    layer: nn.Linear

    @torch.no_grad()
    def logits(self, features: Tensor) -> Tensor:
        """Class scores ``[M, num_classes]`` of features ``[M, D]``."""
        return self.layer((features.float() - self.mean) / self.std)

    def predict(self, features: Tensor) -> Tensor:
        """Top-1 classes, long ``[M]``."""
        return self.logits(features).argmax(dim=1)


def train_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    seed: int = 0,
) -> LinearProbe:
    """Fit a linear probe with cross-entropy.

    Args:
        features: frozen train features ``[N, D]``.
        labels: their classes, long ``[N]``.
        num_classes: number of classes.
        epochs: passes over the features.
        lr: initial SGD learning rate (cosine-decayed to 0 over the run).
        batch_size: features per step.
        seed: seed of the layer's init and of the batch order.

    Raises:
        GeoclError: no features, or ``epochs``/``batch_size`` below 1.
    """
    if len(features) == 0:
        raise GeoclError("no train features to fit the probe on", key="data")
    if epochs < 1:
        raise GeoclError(f"must be at least 1, got {epochs}", key="probe_epochs")
    if batch_size < 1:
        raise GeoclError(f"must be at least 1, got {batch_size}", key="batch_size")
    features = features.float()
    labels = labels.long().to(features.device)
    generator = torch.Generator().manual_seed(seed)
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False).clamp_min(1e-6)
    inputs = (features - mean) / std
    layer = nn.Linear(features.shape[1], num_classes).to(features.device)
    with torch.no_grad():
        bound = 1.0 / features.shape[1] ** 0.5
        layer.weight.copy_(torch.empty_like(layer.weight, device="cpu").uniform_(-bound, bound, generator=generator))
        layer.bias.zero_()
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = -(-len(inputs) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator).to(features.device)
        for rows in order.split(batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(layer(inputs[rows]), labels[rows])
            loss.backward()
            optimizer.step()
            scheduler.step()
    layer.eval()
    return LinearProbe(mean=mean, std=std, layer=layer)


def top1_accuracy(predicted: Tensor, labels: Tensor, num_classes: int) -> float:
    """Top-1 accuracy over all samples (torchmetrics, micro average)."""
    metric = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
    return float(metric(predicted.cpu(), labels.long().cpu()))


def linear_probe_top1(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Train a probe on the train features; its top-1 accuracy on the test features."""
    if len(test_features) == 0:
        raise GeoclError("no images to evaluate: the test set is empty", key="data")
    probe = train_linear_probe(
        train_features, train_labels, num_classes, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed
    )
    return top1_accuracy(probe.predict(test_features), test_labels, num_classes)
