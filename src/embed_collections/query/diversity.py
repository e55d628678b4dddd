"""Diverse hits: maximal marginal relevance (MMR) over a search's candidates, for searches the
store's own MMR cannot answer (fused hybrid or sparse searches, several named vectors)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from embed_collections.errors import UsageError

MMR_CANDIDATES = 100  # nearest points the diverse hits are chosen from (Qdrant's own default)


def check_diversity(diversity: Any) -> float:
    """The diversity as a float in 0..1 (UsageError naming the argument otherwise)."""
    if isinstance(diversity, bool) or not isinstance(diversity, (int, float)):
        raise UsageError(
            f"diversity is {diversity!r}; give a number from 0 (relevance only) to 1 "
            "(most diverse), e.g. 0.3"
        )
    if not math.isfinite(diversity) or not 0 <= diversity <= 1:
        raise UsageError(
            f"diversity is {diversity}; give a number from 0 (relevance only) to 1 "
            "(most diverse), e.g. 0.3"
        )
    return float(diversity)


def unit_rows(vectors: Sequence[dict[str, Any]], names: list[str]) -> dict[str, np.ndarray]:
    """Each named vector of the candidates as unit rows (N x D), zero rows where missing."""
    rows: dict[str, np.ndarray] = {}
    for name in names:
        stacked = [np.asarray(v.get(name, []), dtype=np.float32) for v in vectors]
        size = max((len(row) for row in stacked), default=0)
        matrix = np.zeros((len(stacked), size), dtype=np.float32)
        for i, row in enumerate(stacked):
            if len(row) == size:
                matrix[i] = row
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        rows[name] = matrix / np.where(norms == 0, 1, norms)
    return rows


def mmr_order(
    relevance: Sequence[float],
    vectors: Sequence[dict[str, Any]],
    weights: dict[str, float],
    limit: int,
    diversity: float,
) -> list[int]:
    """The indexes of `limit` candidates in MMR order: each next one maximises
    (1 - diversity) * relevance - diversity * (its highest similarity to those chosen), the
    similarity being the weighted mean of the named vectors' cosines (as Qdrant's MMR, whose
    `diversity` this is)."""
    count = len(relevance)
    if count == 0:
        return []
    names = [name for name in weights if weights[name] > 0]
    rows = unit_rows(vectors, names)
    total = sum(weights[name] for name in names) or 1.0
    similarity = sum(weights[name] * (rows[name] @ rows[name].T) for name in names) / total
    similarity = np.asarray(similarity, dtype=np.float64).reshape(count, count)
    gain = np.asarray(relevance, dtype=np.float64)
    chosen: list[int] = []
    closest = np.full(count, -np.inf)
    left = np.ones(count, dtype=bool)
    while left.any() and len(chosen) < limit:
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        score = (1 - diversity) * gain - diversity * penalty
        score[~left] = -np.inf
        best = int(np.argmax(score))
        chosen.append(best)
        left[best] = False
        closest = np.maximum(closest, similarity[best])
    return chosen
