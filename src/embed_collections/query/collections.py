"""A finished run's collections, open for queries: the run's record, its store and its query
encoder, held together so that many searches pay for opening them once."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from embed_collections.engine import Reranker
from embed_collections.errors import UsageError
from embed_collections.query.context import (
    DEFAULT_NEIGHBOURS,
    ContextBlock,
    DocumentReader,
    TokenCounter,
    build_context,
    check_budget,
    check_count,
    read_pieces,
)
from embed_collections.query.diversity import MMR_CANDIDATES, check_diversity
from embed_collections.query.hits import (
    PreparedSearch,
    SearchHit,
    check_request,
    payload_match,
)
from embed_collections.query.reading import StoredChunk
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
    open_run_store,
    uses_weighted_fusion,
    weighted_named_search,
)
from embed_collections.record.finished import read_finished
from embed_collections.record.run_record import ModelRecord, RunRecord, read_run_record
from embed_collections.stores.base import Hit, Store

log = logging.getLogger(__name__)


class UnknownCollectionError(UsageError):
    """A search named a collection the store does not hold."""


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
        finished = read_finished(output_dir)
        if finished is None or qdrant_url or qdrant_path:  # another store: not what it describes
            return cls(
                output_dir, record, store, encoder, reranker=reranker,  # type: ignore[arg-type]
                trust_remote_code=trust_remote_code,
            )  # fmt: skip
        served, changed = finished.split(store.collections(), store.loaded_marker)
        if changed:
            log.warning(
                "Leaving out %s: changed since the last finished run in %s by a run that did "
                "not finish (run it again)",
                ", ".join(changed),
                output_dir,
            )
        return cls(
            output_dir, record, store, encoder, fixed_names=served,
            reranker=reranker, trust_remote_code=trust_remote_code,  # type: ignore[arg-type]
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
        diversity: float = 0.0,
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
        `diversity` > 0 (up to 1) reorders each collection's hits by maximal marginal relevance
        (Qdrant's MMR where the store can, else the same over 100 candidates here), and hits
        are then merged by rank.
        """
        prepared = self.prepare(
            query, collections, top_k, mode, fusion, rrf_k, weights, where, vectors,
            rerank, rerank_top_n, diversity,
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
        diversity: float = 0.0,
    ) -> PreparedSearch:
        """A checked search with its query vectors, ready for the store (see `search`)."""
        check_request(query, top_k)
        diversity = check_diversity(diversity)
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
        store_mmr = diversity > 0 and mode == "dense" and len(combined) == 1
        fetch = fetch or (diversity > 0 and not store_mmr)  # MMR here compares the vectors
        limit = max(top_k, MMR_CANDIDATES) if diversity and not store_mmr else top_k
        request = None
        if not uses_weighted_fusion(encoder, mode):
            request = build_queries(
                encoder, [query], mode, limit, fusion, rrf_k, where=match, with_vector=fetch,
                dense=combined,
            )[0]  # fmt: skip
            if store_mmr:
                request = replace(request, diversity=diversity, candidates=MMR_CANDIDATES)
        return PreparedSearch(
            query,
            names,
            top_k,
            mode,
            match,
            encoder,
            combined,
            fetch,
            request,
            reranker,
            keep,
            diversity,
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
            self.store, name, prepared.encoder, [prepared.query], prepared.limit,
            where=prepared.where, with_vector=prepared.fetch, dense=prepared.combined,
        )[0]  # fmt: skip

    @property
    def reader(self) -> DocumentReader:
        """Looks chunks and documents up in the store by payload (`read`)."""
        if getattr(self, "_reader", None) is None:
            self._reader = DocumentReader(self.store)
        return self._reader

    @property
    def token_counter(self) -> TokenCounter:
        """Counts tokens with the run's first model's tokenizer."""
        if getattr(self, "_counter", None) is None:
            first = self.encoder.specs[0] if self.encoder.specs else None
            path = first.path if first else None
            name = first.name if first else ""
            shown = Path(name).name if Path(name).is_absolute() else name  # not the machine's path
            self._counter = TokenCounter.for_model(path, f"tokenizer of {shown}" if shown else "")
        return self._counter

    def read(
        self,
        collection: str,
        chunk_id: str | None = None,
        before: int = 0,
        after: int = 0,
        section: bool = False,
        document_id: str | None = None,
        source_file: str | None = None,
        max_tokens: int | None = None,
    ) -> ContextBlock:
        """Text from a collection, in document order, overlaps said once:

        - `chunk_id`: the chunk, with `before`/`after` neighbours (or, with `section`, every
          chunk of its document that shares its section path);
        - `document_id` or `source_file`: the whole document, cut at `max_tokens`.
        """
        name = self.resolve_collection(collection)
        if max_tokens is not None:
            check_budget(max_tokens)
        reader, counter = self.reader, self.token_counter
        if chunk_id is not None:
            anchor = reader.chunk(name, chunk_id)
            neighbours = reader.neighbours(anchor, before, after) if not section else []
            chunks = reader.section(anchor) if section else neighbours
        else:
            check_count("before", before)
            check_count("after", after)
            chunks = reader.document(name, document_id, source_file)
        pieces, cut = read_pieces(reader, chunks, max_tokens, counter)
        tokens = sum(piece.tokens for piece in pieces)
        notes = reader.upgrade_notes()
        budget = max_tokens or 0
        return ContextBlock(pieces, budget, tokens, counter.name, notes=notes, truncated=cut)

    def resolve_collection(self, collection: str) -> str:
        """One collection's name, checked (UnknownCollectionError naming the choices)."""
        if not isinstance(collection, str) or not collection.strip() or "," in collection:
            shown = ", ".join(self.names[:8]) + (", ..." if len(self.names) > 8 else "")
            raise UsageError(
                f"collection is {collection!r}; give one collection name from "
                f"list_collections ({shown})"
            )
        return self.resolve_names([collection])[0]

    def search_context(
        self,
        query: str,
        collections: str | Iterable[str] | None = None,
        max_tokens: int = 2000,
        top_k: int = 10,
        mode: str | None = None,
        where: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        diversity: float = 0.0,
        neighbours: int = DEFAULT_NEIGHBOURS,
        hits: list[SearchHit] | None = None,
    ) -> ContextBlock:
        """The `top_k` best hits widened with their sections and up to `neighbours` chunks on
        each side until `max_tokens` (counted with the first model's tokenizer) is spent,
        merged where they touch, grouped by document in document order, as pieces and one
        text block with a citation line per piece (`hits`: the search, when already done)."""
        check_budget(max_tokens)
        check_count("neighbours", neighbours, 50)
        if hits is None:
            hits = self.search(query, collections, top_k, mode, where=where, diversity=diversity)
        return self.context_of(hits, max_tokens, neighbours, self.resolve_mode(mode))

    def context_of(
        self, hits: list[SearchHit], max_tokens: int, neighbours: int, mode: str = ""
    ) -> ContextBlock:
        """The context block of hits found already (see `search_context`)."""
        found = [(self.stored_chunk(hit), hit.score) for hit in hits]
        counter = self.token_counter
        pieces, tokens = build_context(self.reader, found, max_tokens, counter, neighbours)
        notes = self.reader.upgrade_notes()
        return ContextBlock(pieces, max_tokens, tokens, counter.name, mode, notes)

    def stored_chunk(self, hit: SearchHit) -> StoredChunk:
        """A hit as the reader sees it (its payload carried everything needed)."""
        chunk = StoredChunk.from_payload(hit.collection, hit.payload)
        self.reader.legacy[hit.collection] = chunk.position is None
        return chunk

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
