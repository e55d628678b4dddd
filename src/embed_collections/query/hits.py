"""Search hits, and one checked search prepared for the store: what it asks each collection
and how it merges, diversifies and ranks what they answer."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embed_collections.engine import Reranker
from embed_collections.errors import UsageError
from embed_collections.query.diversity import MMR_CANDIDATES, mmr_order
from embed_collections.query.search import (
    QueryEncoder,
    dense_cosine,
)
from embed_collections.stores.base import Hit, PayloadMatch, SearchQuery

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
    payload: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
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
            payload=payload,
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
    reranker: Reranker | None = None  # with one, `top_k` is the candidates and `keep` the hits
    keep: int = 0
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
