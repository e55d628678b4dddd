"""Learn ensemble weights from judged queries: exact fused search over cached vectors.

Every member's cosine similarity of every query to every document is computed once, from the
vectors the run cached (nothing is embedded again per candidate weight). A candidate weight
vector w then ranks by sum_i w_i * cos_i, which is exactly what `--combine concat` stores (each
model's normalised vector scaled by sqrt(w_i / sum w)), so the search here is exact.

The search over the simplex is a grid (step 0.1 for up to three models, coarser beyond), whose
best plateau's centre is then refined by moving weight between pairs of models in halving steps.
Members alone are grid vertices, so on the tuning queries the ensemble is never below its best
member. Whether that carries to new queries is estimated by k-fold cross-validation over the
tuning queries: each fold's weights are learned on the other folds and scored on the held-out
queries against the member that was best on the other folds. When the mean held-out gain is not
above its standard error (and above MIN_GAIN), the ensemble is not worth it: all weight goes to
the best member.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embed_collections.evaluation.metrics import evaluate_run
from embed_collections.record.run_record import RunRecord

log = logging.getLogger(__name__)

MIN_GAIN = 0.002  # nDCG@10 points below which an ensemble is not worth its cost
DEFAULT_FOLDS = 5
RANK_DEPTH = 100  # Recall@100 needs the top 100
NDCG_K = 10
TIE = 1e-9


@dataclass(frozen=True)
class Judged:
    """The judged queries of one split against the corpus, as dense arrays for fast scoring."""

    query_ids: list[str]
    relevance: np.ndarray  # Q x D graded gains (negative judgements count 0)
    ideal: np.ndarray  # Q ideal DCG@10
    qrels: dict[str, dict[str, int]]

    def subset(self, rows: np.ndarray) -> Judged:
        """The judgements of some queries (rows)."""
        ids = [self.query_ids[i] for i in rows]
        return Judged(ids, self.relevance[rows], self.ideal[rows], {q: self.qrels[q] for q in ids})


def judge(query_ids: list[str], qrels: dict[str, dict[str, int]], corpus_ids: list[str]) -> Judged:
    """Dense relevance and ideal DCG@10 for these queries (metrics.py's definitions)."""
    column = {doc: i for i, doc in enumerate(corpus_ids)}
    relevance = np.zeros((len(query_ids), len(corpus_ids)), dtype=np.float32)
    ideal = np.zeros(len(query_ids), dtype=np.float64)
    discounts = 1.0 / np.log2(np.arange(2, NDCG_K + 2))
    for row, qid in enumerate(query_ids):
        gains = sorted((r for r in qrels[qid].values() if r > 0), reverse=True)[:NDCG_K]
        ideal[row] = float(np.dot(gains, discounts[: len(gains)]))
        for doc, rel in qrels[qid].items():
            if rel > 0 and doc in column:
                relevance[row, column[doc]] = rel
    return Judged(query_ids, relevance, ideal, {q: qrels[q] for q in query_ids})


def cosine_scores(
    query_vectors: Sequence[np.ndarray], corpus_vectors: Sequence[np.ndarray]
) -> np.ndarray:
    """M x Q x D cosine similarities, one slab per model (rows are L2-normalised first)."""
    from embed_collections.engine import normalize_rows

    return np.stack(
        [normalize_rows(q) @ normalize_rows(d).T for q, d in zip(query_vectors, corpus_vectors)]
    ).astype(np.float32)


def mask_self_hits(scores: np.ndarray, query_ids: list[str], corpus_ids: list[str]) -> None:
    """A document whose id is its query's id never ranks (as BEIR and `eval` do), in place."""
    column = {doc: i for i, doc in enumerate(corpus_ids)}
    for row, qid in enumerate(query_ids):
        if qid in column:
            scores[:, row, column[qid]] = -np.inf


def fuse(scores: np.ndarray, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Q x D fused scores: sum_i w_i * cos_i."""
    return np.tensordot(np.asarray(weights, dtype=np.float32), scores, axes=1)


def top_k(fused: np.ndarray, k: int) -> np.ndarray:
    """Q x k column indices of the best scores, best first."""
    k = min(k, fused.shape[1])
    part = np.argpartition(-fused, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(fused, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def ndcg_per_query(fused: np.ndarray, judged: Judged) -> np.ndarray:
    """nDCG@10 of every query's ranking (0 for a query without relevant documents)."""
    top = top_k(fused, NDCG_K)
    gains = np.take_along_axis(judged.relevance, top, axis=1)
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    dcg = gains @ discounts
    return np.divide(dcg, judged.ideal, out=np.zeros_like(dcg), where=judged.ideal > 0)


def simplex_grid(members: int) -> list[np.ndarray]:
    """Weight vectors summing to 1 on a grid (step 0.1 up to 3 models, 0.25 to 5, else 0.5)."""
    steps = 10 if members <= 3 else 4 if members <= 5 else 2
    points = [
        np.asarray(c, dtype=np.float64) / steps
        for c in itertools.product(range(steps + 1), repeat=members)
        if sum(c) == steps
    ]
    return points


def search_simplex(
    objective: Callable[[np.ndarray], float], members: int
) -> tuple[np.ndarray, float, int]:
    """(weights, objective, evaluations): the best grid plateau's centre, refined locally."""
    grid = simplex_grid(members)
    values = [objective(w) for w in grid]
    top = max(values)
    plateau = [w for w, v in zip(grid, values) if v >= top - TIE]
    best, value = grid[int(np.argmax(values))], top
    centre = np.mean(plateau, axis=0)
    evaluations = len(grid)
    if len(plateau) > 1:  # a flat optimum: its middle generalises better than an edge of it
        centre_value = objective(centre)
        evaluations += 1
        if centre_value >= top - TIE:
            best, value = centre, centre_value
    step = 0.05
    while step >= 0.0125:
        improved = False
        for i, j in itertools.permutations(range(members), 2):
            if best[i] < step - TIE:
                continue
            candidate = best.copy()
            candidate[i] -= step
            candidate[j] += step
            candidate_value = objective(candidate)
            evaluations += 1
            if candidate_value > value + TIE:
                best, value, improved = candidate, candidate_value, True
        if not improved:
            step /= 2
    return np.clip(best, 0.0, 1.0) / np.clip(best, 0.0, 1.0).sum(), value, evaluations


def one_hot(members: int, index: int) -> np.ndarray:
    """All weight on one member."""
    weights = np.zeros(members)
    weights[index] = 1.0
    return weights


@dataclass
class TuningResult:
    """Learned weights, the cross-validated gain and the decision."""

    models: list[str]
    weights: list[float]
    tuned_weights: list[float]
    member_ndcg: list[float]
    tuned_ndcg: float
    best_member: str
    gain_mean: float
    gain_stderr: float
    fold_gains: list[float]
    folds: int
    queries: int
    evaluations: int
    ensemble_helps: bool
    split: str = ""
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        """The `tuning` part of `eval --tune-weights --json`."""
        return {
            "split": self.split,
            "queries": self.queries,
            "folds": self.folds,
            "member_ndcg@10": {m: round(v, 5) for m, v in zip(self.models, self.member_ndcg)},
            "tuned_weights": [round(w, 4) for w in self.tuned_weights],
            "tuned_ndcg@10": round(self.tuned_ndcg, 5),
            "best_member": self.best_member,
            "cv_gain_mean": round(self.gain_mean, 5),
            "cv_gain_stderr": round(self.gain_stderr, 5),
            "cv_fold_gains": [round(g, 5) for g in self.fold_gains],
            "min_gain": MIN_GAIN,
            "ensemble_helps": self.ensemble_helps,
            "evaluations": self.evaluations,
            "message": self.message,
        }


def tune_weights(
    scores: np.ndarray, judged: Judged, models: list[str], folds: int = DEFAULT_FOLDS, seed: int = 0
) -> TuningResult:
    """Learn weights maximising mean nDCG@10 on these queries, with a k-fold estimate of the gain
    over the best single member; fall back to that member when the gain is within noise."""
    members, queries = scores.shape[0], scores.shape[1]

    def learn(rows: np.ndarray) -> tuple[np.ndarray, float, int, list[float]]:
        part, sub = scores[:, rows], judged.subset(rows)
        singles = [float(ndcg_per_query(part[m], sub).mean()) for m in range(members)]
        weights, value, evaluations = search_simplex(
            lambda w: float(ndcg_per_query(fuse(part, w), sub).mean()), members
        )
        return weights, value, evaluations, singles

    weights, tuned, evaluations, singles = learn(np.arange(queries))
    folds = max(2, min(folds, queries))
    order = np.random.default_rng(seed).permutation(queries)
    differences = np.zeros(queries)
    fold_gains = []
    for held in np.array_split(order, folds):
        train = np.setdiff1d(order, held)
        fold_weights, _, _, fold_singles = learn(train)
        best = int(np.argmax(fold_singles))
        sub = judged.subset(held)
        ensemble = ndcg_per_query(fuse(scores[:, held], fold_weights), sub)
        single = ndcg_per_query(scores[best, held], sub)
        differences[held] = ensemble - single
        fold_gains.append(float((ensemble - single).mean()))
    gain = float(differences.mean())
    stderr = float(differences.std(ddof=1) / math.sqrt(queries)) if queries > 1 else math.inf
    best_index = int(np.argmax(singles))
    helps = gain > max(stderr, MIN_GAIN)
    if helps:
        message = (
            f"The tuned ensemble beats its best member ({models[best_index]}) on held-out tuning "
            f"queries by {gain:+.4f} nDCG@10 (standard error {stderr:.4f})"
        )
    else:
        message = (
            f"The ensemble does not beat its best member beyond noise on held-out tuning queries "
            f"(gain {gain:+.4f} nDCG@10, standard error {stderr:.4f}, minimum {MIN_GAIN}): "
            f"use {models[best_index]} alone (all weight on it)"
        )
    final = weights if helps else one_hot(members, best_index)
    return TuningResult(
        models=models,
        weights=[float(w) for w in final],
        tuned_weights=[float(w) for w in weights],
        member_ndcg=singles,
        tuned_ndcg=tuned,
        best_member=models[best_index],
        gain_mean=gain,
        gain_stderr=stderr,
        fold_gains=fold_gains,
        folds=folds,
        queries=queries,
        evaluations=evaluations,
        ensemble_helps=helps,
        message=message,
    )


def exact_metrics(
    scores: np.ndarray,
    weights: Sequence[float] | np.ndarray,
    judged: Judged,
    corpus_ids: list[str],
) -> dict[str, float]:
    """nDCG@10, Recall@100 and MRR@10 of exact search with these weights (metrics.py)."""
    fused = fuse(scores, weights)
    top = top_k(fused, RANK_DEPTH)
    run = {
        qid: [corpus_ids[c] for c in row if np.isfinite(fused[r, c])]
        for r, (qid, row) in enumerate(zip(judged.query_ids, top))
    }
    return evaluate_run(run, judged.qrels)


def cached_corpus_vectors(
    config: Any, record: RunRecord, collection: str
) -> tuple[list[str], list[np.ndarray]]:
    """(chunk ids, per-model N x d_i vectors) of an indexed collection, from the run's cache."""
    from embed_collections.corpus.chunks import load_collection
    from embed_collections.engine import EmbeddingCache, text_digest

    loaded = load_collection(collection, config.chunked_dir / collection)
    digests = [text_digest(chunk.text) for chunk in loaded.chunks]
    with EmbeddingCache(config.embedding_cache_path) as cache:
        vectors = [
            cache.get_vectors(fp, digests, int(cache.model_dim(fp) or 0))
            for fp in (model.fingerprint for model in record.models)
        ]
    return [chunk.chunk_id for chunk in loaded.chunks], vectors


def exact_search_metrics(
    query_vectors: Sequence[np.ndarray],
    corpus_vectors: Sequence[np.ndarray],
    weights: Sequence[float],
    queries: list[str],
    qrels: dict[str, dict[str, int]],
    corpus_ids: list[str],
) -> dict[str, float]:
    """Metrics of exact search by sum_i w_i * cos_i (what concat with these weights ranks by)."""
    scores = cosine_scores(query_vectors, corpus_vectors)
    mask_self_hits(scores, queries, corpus_ids)
    return exact_metrics(scores, weights, judge(queries, qrels, corpus_ids), corpus_ids)
