"""Query side: embed queries exactly as the run embedded documents (same models, weights, combine
mode, query prefixes) and search the run's store, dense, sparse or fused."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from embed_collections import sparse as sparse_vectors
from embed_collections.backends import create_backend, default_device, default_dtype
from embed_collections.config import load_saved_config
from embed_collections.ensemble import combine_vectors
from embed_collections.errors import UsageError
from embed_collections.models import ModelSettings, ModelSpec, locate_model
from embed_collections.stores import Hit, SearchQuery, Store
from embed_collections.stores.open import open_store

log = logging.getLogger(__name__)

SEARCH_MODES = ("dense", "sparse", "hybrid")
DEFAULT_RRF_K = 60


@dataclass
class QueryEncoder:
    """Turns query texts into the vectors a run's store holds."""

    specs: list[ModelSpec]
    combine: str
    vector_names: list[str]
    sparse: sparse_vectors.SparseEncoder | None
    device: str = ""

    @classmethod
    def from_saved(cls, saved: dict[str, Any], device: str = "") -> QueryEncoder:
        specs = []
        for model in saved["models"]:
            path = Path(model["path"])
            if not path.is_dir():
                path = locate_model(model["name"], None)[0]
            settings = ModelSettings(
                document_prefix=model["document_prefix"],
                query_prefix=model["query_prefix"],
                max_seq_length=model["max_seq_length"],
                truncate_dim=model["truncate_dim"],
            )
            specs.append(
                ModelSpec(
                    name=model["name"],
                    path=path,
                    source="saved run",
                    settings=settings,
                    weight=model["weight"],
                    dim=model["dim"],
                    trust_remote_code=saved.get("trust_remote_code", False),
                )
            )
        sparse = None
        if saved.get("sparse"):
            sparse_settings = saved.get("sparse_settings") or {"kind": saved["sparse"]}
            sparse = sparse_vectors.create_encoder(**sparse_settings)
        names = [m.get("vector_name") or "" for m in saved["models"]]
        return cls(specs, saved["combine"], names, sparse, device)

    def dense(self, queries: list[str], batch_size: int = 64) -> dict[str, np.ndarray]:
        """Combined dense query vectors (vector name -> Q x D); models load one at a time."""
        # Queries run on the first device of a run's list (`cuda:0,cuda:1`, `cpu:0,cpu:1`).
        device = (self.device or default_device()).split(",")[0]
        device = "cpu" if device.startswith("cpu") else device
        per_model = []
        for spec in self.specs:
            backend = create_backend(spec, "torch", default_dtype(device))
            backend.load(device)
            prefixed = [spec.settings.query_prefix + q for q in queries]
            parts = [
                backend.embed(prefixed[i : i + batch_size])
                for i in range(0, len(prefixed), batch_size)
            ]
            per_model.append(np.vstack(parts))
            backend.unload()
        weights = [spec.weight for spec in self.specs]
        return combine_vectors(per_model, weights, self.combine, self.vector_names)

    def sparse_queries(self, queries: list[str]) -> list[tuple[list[int], list[float]]]:
        if self.sparse is None:
            return []
        return [self.sparse.embed_query(q) for q in queries]


def build_queries(
    encoder: QueryEncoder,
    texts: list[str],
    mode: str,
    limit: int,
    fusion: str = "rrf",
    rrf_k: int = DEFAULT_RRF_K,
    prefetch_limit: int = 100,
) -> list[SearchQuery]:
    """One SearchQuery per text: dense vectors, the sparse vector, or all of them fused."""
    if mode not in SEARCH_MODES:
        raise UsageError(f'Unknown search mode "{mode}". Choose one of {", ".join(SEARCH_MODES)}')
    if mode in ("sparse", "hybrid") and encoder.sparse is None:
        raise UsageError(
            f"--mode {mode} needs sparse vectors; this run had none (re-run with --sparse bm25)"
        )
    dense = encoder.dense(texts) if mode in ("dense", "hybrid") else {}
    sparse = encoder.sparse_queries(texts) if mode in ("sparse", "hybrid") else []
    queries = []
    for row, _ in enumerate(texts):
        query = SearchQuery(
            limit=limit,
            fusion=fusion,  # type: ignore[arg-type]  # checked by the CLI's choices
            rrf_k=rrf_k,
            prefetch_limit=prefetch_limit,
        )
        if dense:
            query = replace(query, dense={name: array[row] for name, array in dense.items()})
        if sparse:
            query = replace(query, sparse={sparse_vectors.VECTOR_NAME: sparse[row]})
        queries.append(query)
    return queries


def open_run_store(saved: dict[str, Any], api_key: str | None = None) -> Store:
    """The store a saved run wrote to."""
    store = saved["store"]
    path = Path(store["path"]) if store.get("path") else None
    return open_store(store.get("url"), path, api_key)


def default_mode(saved: dict[str, Any]) -> str:
    """hybrid when the run stored sparse vectors, else dense."""
    return "hybrid" if saved.get("sparse") else "dense"


def search_collection(
    output_dir: Path,
    collection: str,
    query: str,
    top_k: int = 10,
    mode: str | None = None,
    fusion: str = "rrf",
    rrf_k: int = DEFAULT_RRF_K,
    api_key: str | None = None,
) -> list[Hit]:
    """Search one collection of an earlier run for one query text."""
    saved = load_saved_config(output_dir)
    encoder = QueryEncoder.from_saved(saved)
    store = open_run_store(saved, api_key)
    try:
        available = store.collections()
        if collection not in available:
            raise UsageError(
                f'Unknown collection "{collection}". Available: {", ".join(sorted(available))}'
            )
        queries = build_queries(encoder, [query], mode or default_mode(saved), top_k, fusion, rrf_k)
        return store.search(collection, queries)[0]
    finally:
        store.close()
