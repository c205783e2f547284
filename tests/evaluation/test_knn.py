"""Weighted cosine kNN: a hand-computed example and a naive per-query reference."""

from __future__ import annotations

import math

import pytest
import torch

from geocl.errors import GeoclError
from geocl.evaluation.knn import knn_classify, knn_top1


def _unit(degrees: float, scale: float = 1.0) -> list[float]:
    return [scale * math.cos(math.radians(degrees)), scale * math.sin(math.radians(degrees))]


# Bank: a at 0° (class 0), b at 40° and c at 50° (class 1), d at -90° (class 2).
BANK = torch.tensor([_unit(0), _unit(40, 2.0), _unit(50, 0.5), _unit(-90, 3.0)])
BANK_LABELS = torch.tensor([0, 1, 1, 2])
# Query 1 at 10° (length 5: cosine ignores it), label 1; query 2 at -90°, label 2.
QUERIES = torch.tensor([_unit(10, 5.0), _unit(-90, 0.5)])
QUERY_LABELS = torch.tensor([1, 2])


def test_top1_equals_a_hand_computation() -> None:
    # Query 1's similarities: a cos 10°, b cos 30°, c cos 40°, d cos 100°.
    # k=3, T=1: votes class 0 = e^cos10° = 2.677, class 1 = e^cos30° + e^cos40° = 2.377 + 2.151 = 4.528 -> 1.
    # k=3, T=0.07: class 0 = e^(0.9848/0.07) = e^14.07, class 1 = e^12.37 + e^10.94 = e^12.58 -> 0.
    # k=1: only a votes -> 0. Query 2: d (similarity 1) outweighs a (0) and b (-0.64) -> 2 in every case.
    assert math.exp(math.cos(math.radians(10))) < math.exp(math.cos(math.radians(30))) + math.exp(
        math.cos(math.radians(40))
    )
    assert knn_classify(BANK, BANK_LABELS, QUERIES, 3, k=3, temperature=1.0).tolist() == [1, 2]
    assert knn_classify(BANK, BANK_LABELS, QUERIES, 3, k=3, temperature=0.07).tolist() == [0, 2]
    assert knn_classify(BANK, BANK_LABELS, QUERIES, 3, k=1, temperature=1.0).tolist() == [0, 2]
    assert knn_top1(BANK, BANK_LABELS, QUERIES, QUERY_LABELS, 3, k=3, temperature=1.0) == 1.0
    assert knn_top1(BANK, BANK_LABELS, QUERIES, QUERY_LABELS, 3, k=3, temperature=0.07) == 0.5
    # k above the bank size uses the whole bank: d's e^cos100° = 0.84 goes to class 2, class 1 still wins.
    assert knn_classify(BANK, BANK_LABELS, QUERIES, 3, k=200, temperature=1.0).tolist() == [1, 2]


def _naive(
    bank: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, classes: int, k: int, t: float
) -> list[int]:
    predictions = []
    for query in queries.tolist():
        sims = []
        for row, label in zip(bank.tolist(), labels.tolist(), strict=True):
            dot = sum(a * b for a, b in zip(query, row, strict=True))
            norms = math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in row))
            sims.append((dot / norms, label))
        votes = [0.0] * classes
        for sim, label in sorted(sims, reverse=True)[:k]:
            votes[label] += math.exp(sim / t)
        predictions.append(max(range(classes), key=votes.__getitem__))
    return predictions


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (5, 0.07), (10, 0.5), (60, 1.0)])
def test_matches_a_naive_loop_on_random_features(k: int, temperature: float) -> None:
    generator = torch.Generator().manual_seed(k)
    bank = torch.randn(50, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (50,), generator=generator)
    queries = torch.randn(30, 8, generator=generator, dtype=torch.float64)
    got = knn_classify(bank, labels, queries, 4, k=k, temperature=temperature)
    assert got.tolist() == _naive(bank, labels, queries, 4, min(k, 50), temperature)


def test_bad_settings_name_the_option() -> None:
    with pytest.raises(GeoclError) as caught:
        knn_classify(BANK, BANK_LABELS, QUERIES, 3, k=0)
    assert caught.value.key == "k"
    with pytest.raises(GeoclError) as caught:
        knn_classify(BANK, BANK_LABELS, QUERIES, 3, temperature=0.0)
    assert caught.value.key == "temperature"
