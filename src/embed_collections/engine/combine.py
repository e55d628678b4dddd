"""Combining the vectors of several models into what the store keeps.

Coordinates of different models live in unrelated spaces, so an element-wise average mixes
noise into similarity. `concat` keeps each model's space intact and weights its similarity instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embed_collections.engine.models.specs import ModelSpec
from embed_collections.errors import UsageError

COMBINE_MODES = ("concat", "average", "named")


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise every row; an all-zero row stays zero instead of becoming NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def vector_names(specs: Sequence[ModelSpec]) -> list[str]:
    """One unique named-vector name per model (its slug, numbered on a clash)."""
    names: list[str] = []
    for spec in specs:
        name = spec.slug
        suffix = 2
        while name in names:
            name = f"{spec.slug}-{suffix}"
            suffix += 1
        names.append(name)
    return names


def check_combine(mode: str, dims: Sequence[int | None], model_names: Sequence[str]) -> None:
    """Refuse impossible combinations before any work (usage error explaining the choices)."""
    if mode not in COMBINE_MODES:
        raise UsageError(f'Unknown combine mode "{mode}". Choose one of {", ".join(COMBINE_MODES)}')
    known = {d for d in dims if d is not None}
    if mode == "average" and len(known) > 1:
        sizes = ", ".join(f"{n}={d}" for n, d in zip(model_names, dims))
        raise UsageError(
            f"--combine average needs models of one dimension, got {sizes}. Use --combine concat "
            "(weighted similarity fusion, the default), --combine named (one vector per model), "
            "or --truncate-dim to cut Matryoshka models to one size"
        )


def combined_dims(mode: str, specs: Sequence[ModelSpec], dims: Sequence[int]) -> dict[str, int]:
    """Vector name -> size that `combine_vectors` produces for these models."""
    if mode == "concat":
        return {"": int(sum(dims))}
    if mode == "average":
        return {"": int(dims[0])}
    return dict(zip(vector_names(specs), (int(d) for d in dims)))


def scaled_weights(weights: Sequence[float]) -> list[float]:
    """The weights divided by the largest, so their sum cannot overflow (`1e308 1e308` is
    `1 1`); only their ratios matter. UsageError for a weight that is negative, not finite, or
    for weights that are all zero."""
    values = [float(w) for w in weights]
    if any(not np.isfinite(w) or w < 0 for w in values) or not any(values):
        shown = " ".join(f"{w:g}" for w in values)
        raise UsageError(
            f"--weights {shown}: every weight must be a finite number >= 0 and one above 0 "
            "(only their ratios matter, e.g. --weights 2 1)"
        )
    largest = max(values)
    return [w / largest for w in values]


def combine_vectors(
    per_model: Sequence[np.ndarray],
    weights: Sequence[float],
    mode: str,
    names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Turn per-model N x d_i arrays into the stored vectors: vector name -> N x D float32.

    concat: each model's vector is L2-normalised and scaled by sqrt(w_i / sum w), then
    concatenated. The result has unit norm, and for two such vectors a, b:
    a . b = sum_i w_i * cos_i(a_i, b_i) / sum w, a fixed-weight fusion of per-model cosine
    similarities. The same holds for a query combined the same way, so cosine search in the store
    ranks by the weighted mean of the models' similarities.
    average: the original weighted mean of normalised vectors, re-normalised (equal dims only).
    named: no combination; each model's normalised vector under its own name.
    """
    if not per_model:
        raise ValueError("combine_vectors needs at least one model's vectors")
    weights = scaled_weights(weights)
    total = float(sum(weights))
    normalized = [normalize_rows(v) for v in per_model]
    if mode == "concat":
        parts = [v * np.float32(np.sqrt(w / total)) for v, w in zip(normalized, weights)]
        return {"": np.ascontiguousarray(np.hstack(parts), dtype=np.float32)}
    if mode == "average":
        check_combine(mode, [v.shape[1] for v in normalized], [str(i) for i in range(len(weights))])
        mean = sum(v * np.float32(w / total) for v, w in zip(normalized, weights))
        return {"": normalize_rows(mean)}
    if mode == "named":
        if names is None or len(names) != len(normalized):
            raise ValueError("named mode needs one vector name per model")
        return dict(zip(names, normalized))
    check_combine(mode, [], [])
    raise AssertionError("unreachable")
