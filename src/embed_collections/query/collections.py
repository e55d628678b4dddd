"""A finished run's collections, open for queries: the run's record, its store and its query
encoder, held together so that many searches pay for opening them once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from embed_collections.engine import Reranker
from embed_collections.errors import UsageError
from embed_collections.query.rerank import (
    DEFAULT_RERANK_TOP_N,
    check_rerank_top_n,
    choose_reranker,
    load_reranker,
    rerank_many,
)
from embed_collections.query.search import (
    DEFAULT_RRF_K,
    QueryEncoder,
    build_queries,
    check_mode,
    default_mode,
    dense_cosine,
    open_run_store,
    uses_weighted_fusion,
    weighted_named_search,
)
from embed_collections.record.run_record import ModelRecord, RunRecord, read_run_record
from embed_collections.stores.base import Hit, PayloadMatch, SearchQuery, Store

MAX_TOP_K = 1000
MAX_QUERY_CHARS = 8192  # far above any model's window (MiniLM reads 256 tokens)


class UnknownCollectionError(UsageError):
    """A search named a collection the store does not hold."""


@dataclass(frozen=True)
class SearchHit:
    """One chunk found by a search, with the collection it came from.

    `score` is the dense cosine of the query and the chunk as the run combined its models, in
    every mode, so hits from several collections compare; `rank` is the hit's place in its own
    collection's ranking for the mode, and `fused_score` the store's score behind that ranking
    (the cosine in dense mode, RRF or DBSF in hybrid mode, BM25 in sparse mode). A reranked
    search orders hits by `rerank_score` (the reranker's activation, a probability for models
    trained with a sigmoid); `rank` and `fused_score` stay the first stage's.
    """

    collection: str
    chunk_id: str
    score: float
    text: str
    metadata: dict[str, Any]
    source_file: str
    doc_id: str
    point_id: str
    rank: int = 1
    fused_score: float = 0.0
    rerank_score: float | None = None

    @classmethod
    def from_hit(
        cls, collection: str, hit: Hit, rank: int = 1, score: float | None = None
    ) -> SearchHit:
        payload = hit.payload
        return cls(
            collection=collection,
            chunk_id=str(payload.get("chunk_id", "")),
            score=float(hit.score if score is None else score),
            text=str(payload.get("text", "")),
            metadata=dict(payload.get("metadata") or {}),
            source_file=str(payload.get("source_file", "")),
            doc_id=str(payload.get("doc_id", "")),
            point_id=str(hit.id),
            rank=rank,
            fused_score=float(hit.score),
        )

    def to_json(self) -> dict[str, Any]:
        """The fields every client shows (CLI --json, HTTP, MCP); `rerank_score` when reranked."""
        data = {
            "collection": self.collection,
            "chunk_id": self.chunk_id,
            "score": round(self.score, 6),
            "rank": self.rank,
            "fused_score": round(self.fused_score, 6),
            "source_file": self.source_file,
            "doc_id": self.doc_id,
            "point_id": self.point_id,
            "text": self.text,
            "metadata": self.metadata,
        }
        if self.rerank_score is not None:
            data["rerank_score"] = round(self.rerank_score, 6)
        return data


def payload_match(where: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> PayloadMatch:
    """Check a filter ({key: value}, or (key, value) pairs): keys are payload fields
    (`source_file`, `metadata.lang`), values a string, integer or boolean to match exactly."""
    if not where:
        return ()
    if isinstance(where, Mapping):
        pairs = list(where.items())
    elif isinstance(where, (str, bytes)):
        raise UsageError(f'Filter "where" must map payload fields to values, got "{where!s}"')
    else:
        pairs = list(where)
    checked = []
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise UsageError(f"Filter {pair!r} is not a (field, value) pair")
        key, value = pair
        if not isinstance(key, str) or not key.strip() or key.startswith("."):
            raise UsageError(
                f'Filter field "{key}" is not a payload field name (use e.g. "source_file" or '
                '"metadata.lang")'
            )
        if not isinstance(value, (str, int, bool)) or isinstance(value, float):
            raise UsageError(
                f'Filter "{key}" has value {value!r}; give a string, integer or boolean to match'
            )
        checked.append((key, value))
    return tuple(checked)


def check_request(query: str, top_k: int) -> None:
    """UsageErrors for a query no search should run: empty, too long, or top_k out of range."""
    if not isinstance(query, str) or not query.strip():
        raise UsageError('The query is empty; give the text to search for in "query"')
    if len(query) > MAX_QUERY_CHARS:
        raise UsageError(
            f"The query is {len(query):,} characters, over the limit of {MAX_QUERY_CHARS:,}; "
            "search with a shorter text (models read only the first few hundred words)"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise UsageError(f"top_k is {top_k!r}; give a whole number from 1 to {MAX_TOP_K}")


@dataclass(frozen=True)
class PreparedSearch:
    """One checked search with its query vectors: what to ask each collection, and how to
    merge what they answer."""

    query: str
    names: list[str]
    top_k: int
    mode: str
    where: PayloadMatch
    encoder: QueryEncoder
    combined: dict[str, np.ndarray]
    fetch: bool  # whether hits come back with vectors to compute the cosine from
    request: SearchQuery | None  # None: a weighted --combine named search, one per collection
    reranker: Reranker | None = None  # with one, `top_k` is the candidates and `keep` the hits
    keep: int = 0

    def merge(self, found: dict[str, list[Hit]]) -> list[SearchHit]:
        """The `top_k` best of each collection's hits, ranked as `Collections.search` says."""
        dense = {name: array[0] for name, array in self.combined.items()}
        hits: list[SearchHit] = []
        for name in self.names:
            scored = [
                (hit, dense_cosine(self.encoder, dense, hit.vectors) if self.fetch else hit.score)
                for hit in found.get(name, [])
            ]
            # Equal fused scores (common with RRF) are ordered by the cosine, so the ranking
            # does not depend on the engine's tie order, which changes with the limit.
            scored.sort(key=lambda pair: (-pair[0].score, -(pair[1] or 0.0)))
            hits.extend(
                SearchHit.from_hit(name, hit, rank, cosine)
                for rank, (hit, cosine) in enumerate(scored, 1)
            )
        if self.mode == "dense":
            hits.sort(key=lambda hit: -hit.score)
        else:
            hits.sort(key=lambda hit: (hit.rank, -hit.score))
        return hits[: self.top_k]


class Collections:
    """The collections of one run (`embed_collections.open(output_dir)`): names, models, search.

    A context manager; `close()` releases the store (the embedded store is locked while open).
    """

    def __init__(
        self,
        output_dir: Path,
        record: RunRecord,
        store: Store,
        encoder: QueryEncoder,
        fixed_names: list[str] | None = None,
        reranker: Reranker | None = None,
        trust_remote_code: bool = False,
    ):
        """`fixed_names`: the store's collections when they cannot change (a server's private
        copy of the store), so that a search does not list the store again; `reranker`: the
        second stage every search uses unless it says otherwise."""
        self.output_dir, self.record, self.store, self.encoder = output_dir, record, store, encoder
        self.fixed_names = sorted(fixed_names) if fixed_names is not None else None
        self.reranker, self.trust_remote_code = reranker, trust_remote_code
        self.rerankers: dict[str, Reranker] = {}  # loaded by name for `search(rerank=NAME)`

    @classmethod
    def open(
        cls,
        output_dir: str | Path,
        *,
        qdrant_api_key: str | None = None,
        device: str = "",
        qdrant_url: str | None = None,
        qdrant_path: str | Path | None = None,
        trust_remote_code: bool = False,
        encoder: QueryEncoder | None = None,
        rerank: str | Path | Reranker | None = None,
    ) -> Collections:
        """Open the run written to `output_dir` (its `run_config.json` and store).

        Paths in the record are relative to `output_dir`; `qdrant_url`/`qdrant_path` search
        another store with this run's models; `trust_remote_code` is the caller's to give;
        `rerank`: a cross-encoder (name, folder or Reranker) loaded now that reranks every
        search's candidates.
        """
        output_dir = Path(output_dir)
        record = read_run_record(output_dir)
        reranker = rerank
        if isinstance(rerank, (str, Path)):
            reranker = load_reranker(rerank, trust_remote_code=trust_remote_code, device=device)
        if encoder is None:
            encoder = QueryEncoder.from_record(
                record, device, output_dir, trust_remote_code=trust_remote_code
            )
        path = Path(qdrant_path) if qdrant_path else None
        store = open_run_store(record, qdrant_api_key, output_dir, qdrant_url, path)
        return cls(
            output_dir, record, store, encoder, reranker=reranker,  # type: ignore[arg-type]
            trust_remote_code=trust_remote_code,
        )  # fmt: skip

    @property
    def names(self) -> list[str]:
        """The collections in the store, sorted."""
        if self.fixed_names is not None:
            return list(self.fixed_names)
        return sorted(self.store.collections())

    @property
    def models(self) -> list[ModelRecord]:
        """The run's models as its record keeps them (name, weight, prefixes, backend, ...)."""
        return list(self.record.models)

    def resolve_mode(self, mode: str | None) -> str:
        """The mode a search runs in: `mode`, or hybrid when the run stored sparse vectors."""
        mode = mode or default_mode(self.record)
        check_mode(self.encoder, mode)
        return mode

    def resolve_names(self, collections: str | Iterable[str] | None) -> list[str]:
        """Collection names from None or "all" (every one), a comma-separated string or a list;
        UnknownCollectionError names the first unknown one and the choices."""
        available = self.names
        if isinstance(collections, str):
            collections = [part for part in collections.split(",")]
        names = [name.strip() for name in collections or [] if name.strip()]
        if not names or names == ["all"]:
            return sorted(available)
        unknown = [name for name in names if name not in available]
        if unknown:
            raise UnknownCollectionError(
                f'Unknown collection "{unknown[0]}". Available: {", ".join(sorted(available))}'
            )
        return list(dict.fromkeys(names))

    def embed(self, texts: list[str]) -> list[list[np.ndarray]]:
        """Each text's raw per-model query vectors (one list per text), for `search(vectors=)`:
        a server embeds the texts of concurrent requests in one call."""
        per_model = self.encoder.per_model(texts)
        return [[array[row] for array in per_model] for row in range(len(texts))]

    def search(
        self,
        query: str,
        collections: str | Iterable[str] | None = None,
        top_k: int = 10,
        mode: str | None = None,
        fusion: str = "rrf",
        rrf_k: int = DEFAULT_RRF_K,
        weights: list[float] | None = None,
        where: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        vectors: list[np.ndarray] | None = None,
        rerank: bool | str | Path | Reranker | None = None,
        rerank_top_n: int = DEFAULT_RERANK_TOP_N,
    ) -> list[SearchHit]:
        """The `top_k` best chunks for `query` in `collections` (None or "all": every one),
        searched the way the run embedded its documents, keeping only chunks whose payload
        matches `where` ({"source_file": "a.md"}); `mode` is dense, sparse or hybrid [hybrid
        when the run stored sparse vectors].

        Hits of several collections are merged by `score` (the dense cosine) in dense mode,
        and by their rank within their collection, then `score`, in sparse and hybrid mode.
        With a reranker (`rerank`: a model name or folder, a Reranker, True for the one given to
        `open`, False for none; None: `open`'s, if any), the first stage returns `rerank_top_n`
        candidates and the reranker's `rerank_score` orders the `top_k` returned.
        """
        prepared = self.prepare(
            query, collections, top_k, mode, fusion, rrf_k, weights, where, vectors,
            rerank, rerank_top_n,
        )  # fmt: skip
        found = {name: self._search_one(prepared, name) for name in prepared.names}
        return self.reranked([prepared], [prepared.merge(found)])[0]  # type: ignore[return-value]

    def prepare(
        self,
        query: str,
        collections: str | Iterable[str] | None = None,
        top_k: int = 10,
        mode: str | None = None,
        fusion: str = "rrf",
        rrf_k: int = DEFAULT_RRF_K,
        weights: list[float] | None = None,
        where: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        vectors: list[np.ndarray] | None = None,
        rerank: bool | str | Path | Reranker | None = None,
        rerank_top_n: int = DEFAULT_RERANK_TOP_N,
    ) -> PreparedSearch:
        """A checked search with its query vectors, ready for the store (see `search`)."""
        check_request(query, top_k)
        reranker = choose_reranker(
            rerank, self.reranker, self.rerankers, self.trust_remote_code, self.encoder.device
        )
        keep = top_k
        if reranker is not None:
            check_rerank_top_n(rerank_top_n, top_k)
            top_k = rerank_top_n
        match = payload_match(where)
        mode = self.resolve_mode(mode)
        names = self.resolve_names(collections)
        encoder = self.encoder.with_weights(weights)
        per_model = [row[None, :] for row in vectors] if vectors else encoder.per_model([query])
        combined = encoder.combined(per_model, [spec.weight for spec in encoder.specs])
        # A plain dense search's score is already the cosine: no vectors to fetch and compare.
        fetch = mode != "dense" or len(combined) > 1
        request = None
        if not uses_weighted_fusion(encoder, mode):
            request = build_queries(
                encoder, [query], mode, top_k, fusion, rrf_k, where=match, with_vector=fetch,
                dense=combined,
            )[0]  # fmt: skip
        return PreparedSearch(
            query, names, top_k, mode, match, encoder, combined, fetch, request, reranker, keep
        )

    def search_many(self, prepared: list[PreparedSearch]) -> list[list[SearchHit] | Exception]:
        """Several prepared searches, each collection asked once for all of them (one batched
        store call per collection); a failure fails only the searches it touched."""
        found: list[dict[str, list[Hit]]] = [{} for _ in prepared]
        failed: dict[int, Exception] = {}
        names = dict.fromkeys(name for one in prepared for name in one.names)
        for name in names:
            batch = [
                i for i, one in enumerate(prepared) if name in one.names and one.request is not None
            ]
            try:
                if batch:
                    queries = [prepared[i].request for i in batch]
                    for i, hits in zip(batch, self.store.search(name, queries)):  # type: ignore[arg-type]
                        found[i][name] = hits
                for i, one in enumerate(prepared):
                    if name in one.names and one.request is None:
                        found[i][name] = self._search_one(one, name)
            except Exception as error:
                for i, one in enumerate(prepared):
                    if name in one.names:
                        failed.setdefault(i, error)
        merged = [failed.get(i) or one.merge(found[i]) for i, one in enumerate(prepared)]
        return self.reranked(prepared, merged)

    @staticmethod
    def reranked(
        prepared: list[PreparedSearch], merged: list[list[SearchHit] | Exception]
    ) -> list[list[SearchHit] | Exception]:
        """The merged first-stage hits, reordered by each search's reranker: the pairs of every
        search that shares a reranker are scored in one call; a failure fails those searches."""
        answers = list(merged)
        groups: dict[int, list[int]] = {}
        for i, one in enumerate(prepared):
            if one.reranker is not None and not isinstance(merged[i], Exception):
                groups.setdefault(id(one.reranker), []).append(i)
        for rows in groups.values():
            reranker = prepared[rows[0]].reranker
            assert reranker is not None
            searches = [(prepared[i].query, merged[i], prepared[i].keep) for i in rows]
            try:
                for i, hits in zip(rows, rerank_many(reranker, searches)):  # type: ignore[arg-type]
                    answers[i] = hits
            except Exception as error:
                for i in rows:
                    answers[i] = error
        return answers

    def _search_one(self, prepared: PreparedSearch, name: str) -> list[Hit]:
        if prepared.request is not None:
            return self.store.search(name, [prepared.request])[0]
        return weighted_named_search(
            self.store, name, prepared.encoder, [prepared.query], prepared.top_k,
            where=prepared.where, with_vector=prepared.fetch, dense=prepared.combined,
        )[0]  # fmt: skip

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
