"""A finished run's collections, open for queries: the run's record, its store and its query
encoder, held together so that many searches pay for opening them once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from embed_collections.errors import UsageError
from embed_collections.query.search import (
    DEFAULT_RRF_K,
    QueryEncoder,
    build_queries,
    default_mode,
    open_run_store,
    uses_weighted_fusion,
    weighted_named_search,
)
from embed_collections.record.run_record import ModelRecord, RunRecord, read_run_record
from embed_collections.stores.base import Hit, Store


@dataclass(frozen=True)
class SearchHit:
    """One chunk found by a search, with the collection it came from."""

    collection: str
    chunk_id: str
    score: float
    text: str
    metadata: dict[str, Any]
    source_file: str
    doc_id: str
    point_id: str

    @classmethod
    def from_hit(cls, collection: str, hit: Hit) -> SearchHit:
        payload = hit.payload
        return cls(
            collection=collection,
            chunk_id=str(payload.get("chunk_id", "")),
            score=float(hit.score),
            text=str(payload.get("text", "")),
            metadata=dict(payload.get("metadata") or {}),
            source_file=str(payload.get("source_file", "")),
            doc_id=str(payload.get("doc_id", "")),
            point_id=str(hit.id),
        )


class Collections:
    """The collections of one run (`embed_collections.open(output_dir)`): names, models, search.

    A context manager; `close()` releases the store (the embedded store is locked while open).
    """

    def __init__(self, output_dir: Path, record: RunRecord, store: Store, encoder: QueryEncoder):
        self.output_dir, self.record, self.store, self.encoder = output_dir, record, store, encoder

    @classmethod
    def open(
        cls, output_dir: str | Path, qdrant_api_key: str | None = None, device: str = ""
    ) -> Collections:
        """Open the run written to `output_dir` (its `run_config.json` and store)."""
        output_dir = Path(output_dir)
        record = read_run_record(output_dir)
        encoder = QueryEncoder.from_record(record, device=device)
        return cls(output_dir, record, open_run_store(record, qdrant_api_key), encoder)

    @property
    def names(self) -> list[str]:
        """The collections in the store, sorted."""
        return sorted(self.store.collections())

    @property
    def models(self) -> list[ModelRecord]:
        """The run's models as its record keeps them (name, weight, prefixes, backend, ...)."""
        return list(self.record.models)

    def search(
        self,
        query: str,
        collections: list[str] | None = None,
        top_k: int = 10,
        mode: str | None = None,
        fusion: str = "rrf",
        rrf_k: int = DEFAULT_RRF_K,
        weights: list[float] | None = None,
    ) -> list[SearchHit]:
        """The `top_k` best chunks for `query` in `collections` (None: all of them), searched the
        way the run embedded its documents; `mode` is dense, sparse or hybrid [hybrid when the
        run stored sparse vectors]."""
        available = self.store.collections()
        names = list(collections) if collections else sorted(available)
        unknown = [name for name in names if name not in available]
        if unknown:
            raise UsageError(
                f'Unknown collection "{unknown[0]}". Available: {", ".join(sorted(available))}'
            )
        encoder = self.encoder.with_weights(weights)
        mode = mode or default_mode(self.record)
        hits: list[SearchHit] = []
        for name in names:
            if uses_weighted_fusion(encoder, mode):
                found = weighted_named_search(self.store, name, encoder, [query], top_k)[0]
            else:
                queries = build_queries(encoder, [query], mode, top_k, fusion, rrf_k)
                found = self.store.search(name, queries)[0]
            hits.extend(SearchHit.from_hit(name, hit) for hit in found)
        return sorted(hits, key=lambda hit: -hit.score)[:top_k]

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Collections:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
