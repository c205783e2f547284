"""Weighted cosine k-nearest-neighbour classification of frozen features (InstDisc, DINO).

Every query votes with its k most similar bank features (cosine similarity s); a
neighbour adds ``exp(s / T)`` to its class, and the class with the largest sum wins.
The votes are lightly's :func:`~lightly.utils.benchmarking.knn_predict`; this module
normalises the features, bounds memory by scoring queries in chunks, and counts top-1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from torch import Tensor

from geocl.errors import GeoclError

#: The kNN vote temperature of InstDisc (Wu et al., arXiv 1805.01978), DINO and PatchMix's ``knn.py``.
DEFAULT_TEMPERATURE = 0.07
#: Queries scored at once: the similarity block is ``chunk x N`` floats.
QUERY_CHUNK = 1024


def knn_classify(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = DEFAULT_TEMPERATURE,
) -> Tensor:
    """Top-1 class of each query by weighted cosine kNN.

    Args:
        bank: features of the labelled (train) images, ``[N, D]``, any scale.
        bank_labels: their classes, long ``[N]`` in ``[0, num_classes)``.
        queries: features to classify, ``[M, D]``.
        num_classes: number of classes.
        k: neighbours per query; more than N uses all N.
        temperature: T of the vote weight ``exp(similarity / T)``.

    Returns:
        Predicted classes, long ``[M]``. A tie between class scores goes to either
        class (``argsort`` order); with real-valued features ties do not happen.

    Raises:
        GeoclError: ``k < 1``, ``temperature <= 0`` or an empty bank.
    """
    if k < 1:
        raise GeoclError(f"must be at least 1, got {k}", key="k")
    if temperature <= 0:
        raise GeoclError(f"must be greater than 0, got {temperature}", key="temperature")
    if len(bank) == 0:
        raise GeoclError("no train features to vote: the bank is empty", key="k")
    bank_t = F.normalize(bank.float(), dim=1).t().contiguous()
    labels = bank_labels.long().to(bank.device)
    k = min(k, len(bank))
    predictions = [
        knn_predict(F.normalize(chunk.float(), dim=1), bank_t, labels, num_classes, knn_k=k, knn_t=temperature)[:, 0]
        for chunk in queries.split(QUERY_CHUNK)
    ]
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)


def knn_top1(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = DEFAULT_TEMPERATURE,
) -> float:
    """Fraction of queries whose kNN class (:func:`knn_classify`) is their label."""
    if len(queries) == 0:
        raise GeoclError("no images to evaluate: the query set is empty", key="data")
    predicted = knn_classify(bank, bank_labels, queries, num_classes, k, temperature)
    return float((predicted.cpu() == query_labels.long().cpu()).float().mean())
