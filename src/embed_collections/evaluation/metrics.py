"""Retrieval metrics with the definitions BEIR reports (pytrec_eval's): nDCG@k, Recall@k, MRR@k.

A run maps query id -> ranked document ids (best first); qrels map query id -> {document id:
relevance}. Relevance is the graded gain (DCG = sum rel_i / log2(i + 1), ranks i from 1) and a
document is relevant when its relevance is above 0. Every metric is averaged over the queries that
have at least one relevant document; such a query missing from the run (no hits) scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

Run = Mapping[str, Sequence[str]]
Qrels = Mapping[str, Mapping[str, int]]


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain of gains listed in rank order (rank 1 first)."""
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def unique_ranked(ranked: Sequence[str]) -> list[str]:
    """The ranking without repeats (a document counts at its first, best rank)."""
    return list(dict.fromkeys(ranked))


def query_ndcg(ranked: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one ranking; the ideal ranking is every relevant judged document, best first."""
    ideal = dcg(sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    gains = [max(judged.get(doc, 0), 0) for doc in unique_ranked(ranked)[:k]]
    return dcg(gains) / ideal


def query_recall(ranked: Sequence[str], judged: Mapping[str, int], k: int = 100) -> float:
    """Share of the relevant documents found in the top k."""
    relevant = {doc for doc, rel in judged.items() if rel > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(unique_ranked(ranked)[:k])) / len(relevant)


def query_reciprocal_rank(ranked: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    """1 / rank of the first relevant document within the top k, else 0."""
    for rank, doc in enumerate(unique_ranked(ranked)[:k], start=1):
        if judged.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def mean_over_queries(
    run: Run,
    qrels: Qrels,
    per_query: Callable[[Sequence[str], Mapping[str, int], int], float],
    k: int,
) -> float:
    """Average a per-query metric over the queries with at least one relevant document."""
    scores = [
        per_query(run.get(qid, ()), judged, k)
        for qid, judged in qrels.items()
        if any(rel > 0 for rel in judged.values())
    ]
    return sum(scores) / len(scores) if scores else 0.0


def ndcg_at_k(run: Run, qrels: Qrels, k: int = 10) -> float:
    """Mean nDCG@k."""
    return mean_over_queries(run, qrels, query_ndcg, k)


def recall_at_k(run: Run, qrels: Qrels, k: int = 100) -> float:
    """Mean Recall@k."""
    return mean_over_queries(run, qrels, query_recall, k)


def mrr_at_k(run: Run, qrels: Qrels, k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant document within the top k."""
    return mean_over_queries(run, qrels, query_reciprocal_rank, k)


def evaluate_run(run: Run, qrels: Qrels) -> dict[str, float]:
    """The three numbers `eval` reports: nDCG@10, Recall@100 and MRR@10."""
    return {
        "ndcg@10": ndcg_at_k(run, qrels, 10),
        "recall@100": recall_at_k(run, qrels, 100),
        "mrr@10": mrr_at_k(run, qrels, 10),
    }
