"""A finished run's collections, open for queries: the run's record, its store and its query
encoder, held together so that many searches pay for opening them once."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

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
from embed_collections.query.diversity import MMR_CANDIDATES, check_diversity, mmr_order
from embed_collections.query.reading import StoredChunk
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
from embed_collections.record.finished import read_finished
from embed_collections.record.run_record import ModelRecord, RunRecord, read_run_record
from embed_collections.stores.base import Hit, PayloadMatch, SearchQuery, Store

log = logging.getLogger(__name__)

MAX_TOP_K = 1000
MAX_QUERY_CHARS = 8192  # far above any model's window (MiniLM reads 256 tokens)
INT64 = (-(2**63), 2**63 - 1)  # what the store's payload integers hold
# A payload path the store parses: dot-separated names, each optionally indexed (`tags[]`).
PAYLOAD_KEY = re.compile(r'[^\s.\[\]"$\\]+(?:\[\d*\])?(?:\.[^\s.\[\]"$\\]+(?:\[\d*\])?)*')


def check_text(value: str, what: str) -> None:
    """UsageError for text that is not valid Unicode (a lone surrogate from JSON's "\\ud800")
    or holds a NUL: no tokenizer or store can take it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UsageError(
            f"{what} holds a lone surrogate (U+{ord(value[error.start]):04X} at position "
            f"{error.start}); send valid Unicode text"
        ) from None
    if "\x00" in value:
        raise UsageError(
            f"{what} holds a NUL character (at position {value.index(chr(0))}); remove it"
        )


class UnknownCollectionError(UsageError):
    """A search named a collection the store does not hold."""


@dataclass(frozen=True)
class SearchHit:
    """One chunk found by a search, with the collection it came from.

    `score` is the dense cosine of the query and the chunk as the run combined its models, in
    every mode, so hits from several collections compare; `rank` is the hit's place in its own
    collection's ranking for the mode, and `fused_score` the store's score behind that ranking
    (the cosine in dense mode, RRF or DBSF in hybrid mode, BM25 in sparse mode).
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
    payload: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
            payload=payload,
        )

    def to_json(self) -> dict[str, Any]:
        """The fields every client shows (CLI --json, HTTP, MCP)."""
        return {
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
        if isinstance(key, str):
            check_text(key, "Filter field")
        if not isinstance(key, str) or not PAYLOAD_KEY.fullmatch(key):
            raise UsageError(
                f'Filter field "{key}" is not a payload field name (use e.g. "source_file" or '
                '"metadata.lang": names joined by dots, without $, quotes or spaces)'
            )
        if not isinstance(value, (str, int, bool)) or isinstance(value, float):
            raise UsageError(
                f'Filter "{key}" has value {value!r}; give a string, integer or boolean to match'
            )
        if isinstance(value, str):
            check_text(value, f'Filter "{key}"')
        elif not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
            raise UsageError(
                f'Filter "{key}" has integer {value}, beyond the 64 bits a payload integer holds'
            )
        checked.append((key, value))
    return tuple(checked)


def check_request(query: str, top_k: int) -> None:
    """UsageErrors for a query no search should run: empty, too long, or top_k out of range."""
    if not isinstance(query, str) or not query.strip():
        raise UsageError('The query is empty; give the text to search for in "query"')
    check_text(query, "The query")
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
    diversity: float = 0.0  # MMR's diversity (0: none)

    @property
    def limit(self) -> int:
        """Hits asked of each collection: MMR done here chooses from more candidates."""
        if self.diversity and not (self.request and self.request.uses_mmr):
            return max(self.top_k, MMR_CANDIDATES)
        return self.top_k

    def merge(self, found: dict[str, list[Hit]]) -> list[SearchHit]:
        """The `top_k` best of each collection's hits, ranked as `Collections.search` says."""
        dense = {name: array[0] for name, array in self.combined.items()}
        hits: list[SearchHit] = []
        for name in self.names:
            scored = [
                (hit, dense_cosine(self.encoder, dense, hit.vectors) if self.fetch else hit.score)
                for hit in found.get(name, [])
            ]
            if not self.diversity:
                # Equal fused scores (common with RRF) are ordered by the cosine, so the ranking
                # does not depend on the engine's tie order, which changes with the limit.
                scored.sort(key=lambda pair: (-pair[0].score, -(pair[1] or 0.0)))
            elif not (self.request and self.request.uses_mmr):  # else the store's order
                scored = self.diverse(scored)
            hits.extend(
                SearchHit.from_hit(name, hit, rank, cosine)
                for rank, (hit, cosine) in enumerate(scored, 1)
            )
        if self.mode == "dense" and not self.diversity:
            hits.sort(key=lambda hit: -hit.score)
        else:
            hits.sort(key=lambda hit: (hit.rank, -hit.score))
        return hits[: self.top_k]

    def diverse(self, scored: list[tuple[Hit, float | None]]) -> list[tuple[Hit, float | None]]:
        """The `top_k` of a collection's candidates in MMR order, relevance being the cosine."""
        specs = self.encoder.specs
        if self.encoder.combine == "named":
            weights = {n: s.weight for n, s in zip(self.encoder.vector_names, specs)}
        else:
            weights = {name: 1.0 for name in self.combined}
        relevance = [cosine or 0.0 for _, cosine in scored]
        vectors = [hit.vectors for hit, _ in scored]
        order = mmr_order(relevance, vectors, weights, self.top_k, self.diversity)
        return [scored[i] for i in order]


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
    ):
        """`fixed_names`: the store's collections when they cannot change (a server's private
        copy of the store), so that a search does not list the store again."""
        self.output_dir, self.record, self.store, self.encoder = output_dir, record, store, encoder
        self.fixed_names = sorted(fixed_names) if fixed_names is not None else None

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
    ) -> Collections:
        """Open the run written to `output_dir` (its `run_config.json` and store).

        Paths in the record are relative to `output_dir`; `qdrant_url`/`qdrant_path` search
        another store with this run's models; `trust_remote_code` is the caller's to give.
        """
        output_dir = Path(output_dir)
        record = read_run_record(output_dir)
        if encoder is None:
            encoder = QueryEncoder.from_record(
                record, device, output_dir, trust_remote_code=trust_remote_code
            )
        path = Path(qdrant_path) if qdrant_path else None
        store = open_run_store(record, qdrant_api_key, output_dir, qdrant_url, path)
        finished = read_finished(output_dir)
        if finished is None or qdrant_url or qdrant_path:  # another store: not what it describes
            return cls(output_dir, record, store, encoder)
        served, changed = finished.split(store.collections(), store.loaded_marker)
        if changed:
            log.warning(
                "Leaving out %s: changed since the last finished run in %s by a run that did "
                "not finish (run it again)",
                ", ".join(changed),
                output_dir,
            )
        return cls(output_dir, record, store, encoder, fixed_names=served)

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
    ) -> list[SearchHit]:
        """The `top_k` best chunks for `query` in `collections` (None or "all": every one),
        searched the way the run embedded its documents, keeping only chunks whose payload
        matches `where` ({"source_file": "a.md"}); `mode` is dense, sparse or hybrid [hybrid
        when the run stored sparse vectors].

        Hits of several collections are merged by `score` (the dense cosine) in dense mode,
        and by their rank within their collection, then `score`, in sparse and hybrid mode.
        `diversity` > 0 (up to 1) reorders each collection's hits by maximal marginal relevance
        (Qdrant's MMR where the store can, else the same over 100 candidates here), and hits
        are then merged by rank.
        """
        prepared = self.prepare(
            query, collections, top_k, mode, fusion, rrf_k, weights, where, vectors, diversity
        )
        found = {name: self._search_one(prepared, name) for name in prepared.names}
        return prepared.merge(found)

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
        diversity: float = 0.0,
    ) -> PreparedSearch:
        """A checked search with its query vectors, ready for the store (see `search`)."""
        check_request(query, top_k)
        diversity = check_diversity(diversity)
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
            query, names, top_k, mode, match, encoder, combined, fetch, request, diversity
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
        return [failed.get(i) or one.merge(found[i]) for i, one in enumerate(prepared)]

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
