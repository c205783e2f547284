"""hit@k, MRR and Recall@k: hand examples, the bounds that always hold, ties, and the random-ranking expectation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from geocl.retrieval.metrics import (
    first_relevant_ranks,
    hit_at_k,
    mean_reciprocal_rank,
    random_ranking_expectation,
    ranking,
    ranking_metrics,
    recall_at_k,
)


def test_hand_example_ranks_1_2_4() -> None:
    ranks = [1, 2, 4]
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 2 + 1 / 4) / 3)
    assert mean_reciprocal_rank(ranks) == pytest.approx(0.5833, abs=1e-4)
    assert hit_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert hit_at_k(ranks, 3) == pytest.approx(2 / 3)
    assert hit_at_k(ranks, 4) == 1.0


def test_the_same_numbers_from_scores_and_relevance() -> None:
    # query 0: relevant item scores highest; 1: second; 2: fourth
    scores = np.array([[0.9, 0.5, 0.1, 0.0], [0.2, 0.8, 0.5, 0.1], [0.9, 0.8, 0.7, 0.6]])
    relevant = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=bool)
    metrics = ranking_metrics(scores, relevant)
    assert metrics.ranks.tolist() == [1, 2, 4]
    assert metrics.mrr == pytest.approx(0.5833, abs=1e-4)
    assert metrics.hit[1] == pytest.approx(1 / 3) and metrics.hit[3] == pytest.approx(2 / 3)
    assert metrics.recall[1] == pytest.approx(1 / 3)  # one relevant item a query: Recall@k = hit@k
    assert metrics.gallery_size == 4 and metrics.queries == 3


def test_recall_counts_the_share_of_the_relevant_set() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    relevant = np.array([[1, 0, 1, 0, 1]], dtype=bool)
    assert recall_at_k(scores, relevant, 1) == pytest.approx(1 / 3)
    assert recall_at_k(scores, relevant, 3) == pytest.approx(2 / 3)
    assert recall_at_k(scores, relevant, 5) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_bounds_hold_on_random_rankings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ranks = rng.integers(1, 30, size=40)
    hit1, mrr = hit_at_k(ranks, 1), mean_reciprocal_rank(ranks)
    assert hit1 <= mrr <= (1 + hit1) / 2 + 1e-12
    hits = [hit_at_k(ranks, k) for k in range(1, 31)]
    assert hits == sorted(hits) and hits[-1] == 1.0  # non-decreasing; every query hits within N


def test_ties_are_broken_by_id_for_search_and_against_the_relevant_item_for_metrics() -> None:
    scores = np.array([0.5, 0.7, 0.5, 0.5])
    assert ranking(scores).tolist() == [1, 0, 2, 3]
    relevant = np.array([True, False, False, False])
    # tied with two irrelevant items: counted after them (pessimistic), not first thanks to its id
    assert ranking(scores, relevant).tolist() == [1, 2, 3, 0]
    assert first_relevant_ranks(scores[None], relevant[None]).tolist() == [4]
    constant = ranking_metrics(np.zeros((3, 5)), np.eye(3, 5, dtype=bool))
    assert constant.mrr == pytest.approx(1 / 5) and constant.hit[1] == 0.0


def test_a_query_without_relevant_items_is_refused() -> None:
    with pytest.raises(ValueError, match="relevant"):
        first_relevant_ranks(np.zeros((2, 3)), np.array([[1, 0, 0], [0, 0, 0]], dtype=bool))


def _enumerated(n: int, relevant: set[int], k: int) -> tuple[float, float]:
    """Mean hit@k and reciprocal rank over every permutation of n items (the exact expectation)."""
    hits, reciprocal = [], []
    for order in itertools.permutations(range(n)):
        first = next(position for position, item in enumerate(order, start=1) if item in relevant)
        hits.append(first <= k)
        reciprocal.append(1 / first)
    return float(np.mean(hits)), float(np.mean(reciprocal))


@pytest.mark.parametrize(("n", "relevant"), [(5, {0}), (6, {1, 4}), (6, {0, 2, 3, 5}), (4, {0, 1, 2, 3})])
def test_random_ranking_expectation_equals_enumeration(n: int, relevant: set[int]) -> None:
    mask = np.zeros((1, n), dtype=bool)
    mask[0, list(relevant)] = True
    expected = random_ranking_expectation(mask, hit_ks=(1, 3))
    hit3, mrr = _enumerated(n, relevant, 3)
    assert expected["hit3"] == pytest.approx(hit3)
    assert expected["mrr"] == pytest.approx(mrr)
    assert expected["hit1"] == pytest.approx(len(relevant) / n)
    if len(relevant) == 1:
        assert expected["mrr"] == pytest.approx(sum(1 / r for r in range(1, n + 1)) / n)
    assert not math.isnan(expected["mrr"])
