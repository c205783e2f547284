"""Ranking metrics of text -> image retrieval: hit@k, MRR and Recall@k, and what a random ranking scores.

For Q queries over a gallery of N items, with ``rank_q`` the 1-based position of the
first relevant item in query q's ranking (the metrics Dental CLAIRES reports, Kabir et al.,
arXiv 2306.15651)::

    hit@k    = (1/Q) sum_q [rank_q <= k]
    MRR      = (1/Q) sum_q 1 / rank_q
    Recall@k = (1/Q) sum_q |relevant_q ∩ top-k_q| / |relevant_q|
    mean recall = mean of Recall@{1, 5, 10}

Always ``hit@1 <= MRR <= hit@1 + (1 - hit@1)/2`` (a query that misses rank 1 adds at most
1/2) and hit@k is non-decreasing in k. With one relevant item per query (exact-pair
relevance) Recall@k equals hit@k; with many (attribute-level relevance) it says which
share of them the top k holds.

Ties (CLAIRES does not say how it ranks them; the reading taken): the ranking sorts by score, then by gallery id;
for metrics a relevant item tied with irrelevant ones is placed after them (the
pessimistic rank), so an encoder whose embeddings are all equal scores as a random
ranking would at worst, never better thanks to the id order.

Everything here is numpy (no torch): the evaluation and the tests import it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Cut-offs of hit@k, as the issue asks.
HIT_KS: tuple[int, ...] = (1, 3, 5, 10)
#: Cut-offs of Recall@k, the usual remote-sensing summary (mean recall = their mean).
RECALL_KS: tuple[int, ...] = (1, 5, 10)


def hit_at_k(ranks: Sequence[int] | np.ndarray, k: int) -> float:
    """Share of queries whose first relevant item is within the top ``k`` (ranks 1-based)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(ranks <= k)) if ranks.size else float("nan")


def mean_reciprocal_rank(ranks: Sequence[int] | np.ndarray) -> float:
    """Mean of 1 / rank of the first relevant item (ranks 1-based)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if (ranks < 1).any():
        raise ValueError("ranks are 1-based")
    return float(np.mean(1.0 / ranks)) if ranks.size else float("nan")


def ranking(scores: np.ndarray, relevant: np.ndarray | None = None) -> np.ndarray:
    """Gallery positions in ranked order for one query: by score (highest first), then by id.

    Args:
        scores: ``[N]`` similarity of each gallery item (position = id).
        relevant: ``[N]`` bool; when given, among equal scores irrelevant items come
            first (the pessimistic tie-break of metrics).

    Returns:
        ``[N]`` positions.
    """
    ids = np.arange(len(scores))
    if relevant is None:
        return np.lexsort((ids, -scores))
    return np.lexsort((ids, np.asarray(relevant, dtype=bool), -scores))


def first_relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each query's first relevant item (pessimistic on ties).

    Args:
        scores: ``[Q, N]``.
        relevant: ``[Q, N]`` bool, at least one True a row.

    Raises:
        ValueError: a query without any relevant item.
    """
    if not relevant.any(axis=1).all():
        raise ValueError("every query needs at least one relevant gallery item")
    ranks = np.empty(len(scores), dtype=np.int64)
    for query, (row, hits) in enumerate(zip(scores, relevant, strict=True)):
        order = ranking(row, hits)
        ranks[query] = int(np.flatnonzero(hits[order])[0]) + 1
    return ranks


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Mean over queries of the share of the relevant items within the top ``k`` (pessimistic ties)."""
    shares = []
    for row, hits in zip(scores, relevant, strict=True):
        top = ranking(row, hits)[:k]
        shares.append(hits[top].sum() / hits.sum())
    return float(np.mean(shares)) if shares else float("nan")


@dataclass
class RankingMetrics:
    """The retrieval numbers of one query set over one gallery.

    Attributes:
        hit: k -> hit@k for :data:`HIT_KS`.
        mrr: mean reciprocal rank.
        recall: k -> Recall@k for :data:`RECALL_KS`.
        queries: Q.
        gallery_size: N.
        ranks: the first-relevant rank of every query.
    """

    hit: dict[int, float]
    mrr: float
    recall: dict[int, float]
    queries: int
    gallery_size: int
    ranks: np.ndarray = field(repr=False)

    @property
    def mean_recall(self) -> float:
        """Mean of Recall@{1, 5, 10}."""
        return float(np.mean([self.recall[k] for k in RECALL_KS]))

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}hit1 ... {prefix}mrr, {prefix}recall1 ... {prefix}mean_recall``."""
        values = {f"{prefix}hit{k}": value for k, value in self.hit.items()}
        values[f"{prefix}mrr"] = self.mrr
        values.update({f"{prefix}recall{k}": value for k, value in self.recall.items()})
        values[f"{prefix}mean_recall"] = self.mean_recall
        return values


def ranking_metrics(
    scores: np.ndarray, relevant: np.ndarray, hit_ks: Iterable[int] = HIT_KS, recall_ks: Iterable[int] = RECALL_KS
) -> RankingMetrics:
    """hit@k, MRR and Recall@k of queries ``[Q, N]`` scores against their relevant sets ``[Q, N]``."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    ranks = first_relevant_ranks(scores, relevant)
    return RankingMetrics(
        hit={k: hit_at_k(ranks, k) for k in hit_ks},
        mrr=mean_reciprocal_rank(ranks),
        recall={k: recall_at_k(scores, relevant, k) for k in recall_ks},
        queries=len(scores),
        gallery_size=scores.shape[1],
        ranks=ranks,
    )


def random_ranking_expectation(relevant: np.ndarray, hit_ks: Iterable[int] = HIT_KS) -> dict[str, float]:
    """Expected hit@k and MRR of a uniformly random ranking, for the same relevant sets.

    For a gallery of N items of which R are relevant, the first relevant item lies
    beyond position r with probability ``prod_{i<r} (N - R - i) / (N - i)``, so
    ``E[hit@k] = 1 - P(first > k)`` and ``E[1/rank] = sum_r P(first = r) / r``; both are
    averaged over the queries.

    Returns:
        ``{"hit1": ..., "hit3": ..., "mrr": ...}``.
    """
    relevant = np.asarray(relevant, dtype=bool)
    n = relevant.shape[1]
    hit_ks = list(hit_ks)
    hits: dict[int, list[float]] = {k: [] for k in hit_ks}
    reciprocal: list[float] = []
    positions = np.arange(1, n + 1, dtype=np.float64)
    for count in relevant.sum(axis=1):
        ratios = np.clip(n - count - np.arange(n), 0, None) / (n - np.arange(n))
        beyond = np.cumprod(ratios)  # beyond[r-1] = P(first > r)
        at = np.concatenate([[1.0], beyond[:-1]]) - beyond  # P(first = r)
        reciprocal.append(float(np.sum(at / positions)))
        for k in hit_ks:
            hits[k].append(1.0 - beyond[min(k, n) - 1])
    result = {f"hit{k}": float(np.mean(values)) for k, values in hits.items()}
    result["mrr"] = float(np.mean(reciprocal))
    return result
