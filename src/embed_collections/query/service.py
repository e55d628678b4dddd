"""What `serve` answers, whatever the protocol: the collections, and searches whose queries are
embedded together in small batches (a micro-batcher), so that concurrent clients share one
model call instead of queueing for one each; a batch is searched in the store while the next one
is embedded."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from embed_collections.engine import Reranker
from embed_collections.errors import UsageError
from embed_collections.query.collections import Collections
from embed_collections.query.context import DEFAULT_NEIGHBOURS, check_budget, check_count
from embed_collections.query.descriptions import Descriptions
from embed_collections.query.diversity import check_diversity
from embed_collections.query.hits import SearchHit, check_request, check_text, payload_match
from embed_collections.query.live import LiveRun, LoadedState
from embed_collections.query.rerank import DEFAULT_RERANK_TOP_N, check_rerank_top_n
from embed_collections.stores.base import PayloadMatch, PointLookup

FIELD_SAMPLE = 50  # points per collection whose payload declares the fields to filter on
MAX_FIELDS = 64
POINTS_ARE = "points: the number of chunks in the collection (one point per chunk)"

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32


Outcome = Any  # (mode, hits) or the exception the search raised


@dataclass
class SearchRequest:
    """One checked search waiting for its batch, and where its answer goes: an asyncio future
    of `loop`, or (no loop) a concurrent future for a caller blocked in another thread."""

    query: str
    collections: list[str]
    top_k: int
    mode: str
    where: PayloadMatch
    diversity: float = 0.0
    future: Future | asyncio.Future = field(default_factory=Future)
    loop: asyncio.AbstractEventLoop | None = None
    rerank: bool = False  # scored by the service's reranker
    rerank_top_n: int = DEFAULT_RERANK_TOP_N


def resolve(future: Future | asyncio.Future, outcome: Outcome) -> None:
    """Set a future's outcome unless its caller gave up on it (a disconnected client)."""
    if future.done():
        return
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except (InvalidStateError, asyncio.InvalidStateError):  # cancelled meanwhile
        pass


def resolve_all(outcomes: list[tuple[Future | asyncio.Future, Outcome]]) -> None:
    for future, outcome in outcomes:
        resolve(future, outcome)


class SearchService:
    """The run's collections (`LiveRun`) and a two-stage batching pipeline in front of them.

    The embedding thread takes every request waiting (up to `max_batch`) and embeds their texts
    in one call to each model; the search thread then searches the store for the batch (one
    batched store call per collection) and answers its requests, while the next batch is being
    embedded: the model runs outside the GIL, so the two stages use both cores. One thread owns
    the models and one the store, so neither needs to be safe for concurrent use.
    """

    def __init__(
        self,
        live: LiveRun,
        max_batch: int = DEFAULT_MAX_BATCH,
        descriptions: Descriptions | None = None,
        reranker: Reranker | None = None,
        rerank_top_n: int = DEFAULT_RERANK_TOP_N,
    ) -> None:
        """`reranker`: loaded once, it reranks every search unless the request says
        `rerank: false` (`rerank_top_n` candidates unless it says how many); the pairs of a
        batch's requests are scored in one call."""
        self.live, self.max_batch, self.reranker = live, max_batch, reranker
        self.rerank_top_n = rerank_top_n
        self.descriptions = descriptions or Descriptions()
        self.store_lock = threading.RLock()  # reads and the search thread share the store
        self._fields: tuple[Collections | None, dict[str, str]] = (None, {})
        self.batches = 0
        self.requests = 0
        self._queue: queue.Queue[SearchRequest | None] = queue.Queue()
        # One embedded batch waits at most: while the store is slower than the model, requests
        # gather into the next, larger batch instead of many small ones.
        self._embedded: queue.Queue[tuple[list[SearchRequest], LoadedState, dict] | None] = (
            queue.Queue(maxsize=1)
        )
        self._embedder = threading.Thread(target=self._embed_batches, name="search-embed")
        self._searcher = threading.Thread(target=self._search_batches, name="search-store")
        for thread in (self._embedder, self._searcher):
            thread.daemon = True
            thread.start()

    def collections(self) -> dict[str, Any]:
        """The collections with their point counts, and the models that embed queries."""
        with self.live.using() as opened:
            counts = self.live.state.counts
            described = self.descriptions.collections
            return {
                "collections": [
                    {"name": name, "points": counts.get(name, 0)}
                    | ({"description": described[name]} if name in described else {})
                    for name in opened.names
                ],
                "points_are": POINTS_ARE,
                "fields": self.payload_fields(opened),
                "models": [
                    {"name": m.name, "weight": m.weight, "dim": m.dim} for m in opened.models
                ],
                "combine": opened.record.combine,
                "sparse": opened.record.sparse.kind if opened.record.sparse else None,
                "default_mode": opened.resolve_mode(None),
                "reranker": self.reranker.describe() if self.reranker else None,
            }

    def health(self) -> dict[str, Any]:
        """Liveness and what is served: collections, when loaded, the last reload error, and
        whether a newer run is "running" or "incomplete" (it stopped before finishing: the last
        finished state stays served)."""
        state = self.live.state
        return {
            "status": "ok",
            "collections": len(state.counts),
            "newer_run": self.live.newer_run(),
            "left_out": state.left_out,
            "loaded_at": state.loaded_at,
            "reloads": self.live.reloads,
            "last_error": self.live.last_error or None,
            "batches": self.batches,
            "requests": self.requests,
            "reranker": self.reranker.describe() if self.reranker else None,
        }

    def check(
        self,
        query: str,
        collections: str | list[str] | None = None,
        top_k: int = 10,
        mode: str | None = None,
        where: Any = None,
        diversity: float = 0.0,
        rerank: bool | None = None,
        rerank_top_n: int | None = None,
    ) -> SearchRequest:
        """A checked search, not yet queued (UsageError now for bad input); `rerank`: None or
        true use the service's reranker when it has one (true without one is an error)."""
        check_request(query, top_k)
        if mode is not None and not isinstance(mode, str):
            raise UsageError(f'"mode" is {mode!r}; give "dense", "sparse" or "hybrid"')
        if mode is not None:
            check_text(mode, '"mode"')
        for name in [collections] if isinstance(collections, str) else collections or []:
            if not isinstance(name, str):
                raise UsageError(f"Collection name {name!r} is not a string; give names as text")
            check_text(name, "A collection name")
        match = payload_match(where)
        diversity = check_diversity(diversity)
        reranked = self.wants_rerank(rerank)
        top_n = self.rerank_top_n if rerank_top_n is None else rerank_top_n
        if reranked:
            check_rerank_top_n(top_n, top_k)
        with self.live.using() as opened:
            chosen = opened.resolve_mode(mode)
            names = opened.resolve_names(collections)
            check_fields(match, self.payload_fields(opened))
        return SearchRequest(
            query, names, top_k, chosen, match, diversity, rerank=reranked, rerank_top_n=top_n
        )

    def payload_fields(self, opened: Collections) -> dict[str, str]:
        """The payload fields a filter (`where`) can name, with their types, as a sample of
        each collection's points shows them (top-level fields, then `metadata.*`)."""
        if self._fields[0] is opened:
            return self._fields[1]
        seen: dict[str, str] = {}
        counts: dict[str, int] = {}
        with self.store_lock:
            for name in opened.names:
                for hit in opened.store.lookup(name, PointLookup(limit=FIELD_SAMPLE)):
                    for key, kind in scalar_fields(hit.payload):
                        seen.setdefault(key, kind)
                        counts[key] = counts.get(key, 0) + 1
        top = sorted(seen, key=lambda key: (key.startswith("metadata."), -counts[key], key))
        fields = {key: seen[key] for key in top[:MAX_FIELDS]}
        self._fields = (opened, fields)  # one state at a time: a reload starts afresh
        return fields

    def read(self, **request: Any) -> dict[str, Any]:
        """`Collections.read` on the current state, as every client receives it."""
        with self.live.using() as opened, self.store_lock:
            return opened.read(**request).to_json()

    def _context(
        self, hits: list[SearchHit], max_tokens: int, neighbours: int, mode: str
    ) -> dict[str, Any]:
        with self.live.using() as opened, self.store_lock:
            return opened.context_of(hits, max_tokens, neighbours, mode).to_json()

    def wants_rerank(self, rerank: bool | None) -> bool:
        if rerank not in (None, True, False):
            raise UsageError(f"rerank is {rerank!r}; give true, false or null")
        if rerank and self.reranker is None:
            raise UsageError(
                "rerank is true but this server has no reranker: start serve with --rerank MODEL"
            )
        return self.reranker is not None and rerank is not False

    def submit(self, **request: Any) -> Future:
        """Check a search (UsageError now for bad input) and queue it; the future's result is
        (mode, hits)."""
        checked = self.check(**request)
        self._queue.put(checked)
        return checked.future  # type: ignore[return-value]

    async def search(
        self,
        max_tokens: int | None = None,
        neighbours: int = DEFAULT_NEIGHBOURS,
        **request: Any,
    ) -> dict[str, Any]:
        """A search answered in this event loop: {"mode", "hits": [...]} as every client
        receives it; with `max_tokens`, the context block of its hits (`search_context`)."""
        if max_tokens is not None:
            check_budget(max_tokens)
            check_count("neighbours", neighbours, 50)
        mode, hits = await self.search_hits(**request)
        if max_tokens is None:
            return {"mode": mode, "hits": [hit.to_json() for hit in hits]}
        return await asyncio.to_thread(self._context, hits, max_tokens, neighbours, mode)

    async def search_hits(self, **request: Any) -> tuple[str, list[SearchHit]]:
        """A search answered in this event loop: (mode, hits)."""
        checked = self.check(**request)
        checked.loop = asyncio.get_running_loop()
        checked.future = checked.loop.create_future()
        self._queue.put(checked)
        return await checked.future  # type: ignore[no-any-return]

    def search_now(self, **request: Any) -> tuple[str, list[SearchHit]]:
        """`submit`, waited for in this thread."""
        return self.submit(**request).result()

    def _take_batch(self) -> list[SearchRequest] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _settle(self, outcomes: list[tuple[SearchRequest, Outcome]]) -> None:
        """Hand each request its outcome: one call into each waiting event loop per batch,
        since every wake-up of a loop from another thread costs a write to its self-pipe."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Outcome]]] = {}
        for request, outcome in outcomes:
            if request.loop is None:
                resolve(request.future, outcome)
            else:
                by_loop.setdefault(request.loop, []).append((request.future, outcome))
        for loop, pairs in by_loop.items():
            try:
                loop.call_soon_threadsafe(resolve_all, pairs)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                log.debug("Dropped %d answers for a closed event loop", len(pairs))

    def _embed_batches(self) -> None:
        while (batch := self._take_batch()) is not None:
            self.batches += 1
            self.requests += len(batch)
            try:
                state = self.live.acquire()
            except BaseException as error:  # never leave a client waiting
                self._settle([(request, error) for request in batch])
                continue
            try:
                embedded = self._embed(state.collections, batch)
            except BaseException as error:
                self.live.release(state)
                self._settle([(request, error) for request in batch])
                continue
            self._embedded.put((batch, state, embedded))
        self._embedded.put(None)

    def _search_batches(self) -> None:
        while (item := self._embedded.get()) is not None:
            batch, state, embedded = item
            try:
                with self.store_lock:
                    outcomes = self._search(state.collections, batch, embedded)
            except BaseException as error:  # never leave a client waiting
                outcomes = [(request, error) for request in batch]
            finally:
                self.live.release(state)
            self._settle(outcomes)

    @staticmethod
    def _embed(opened: Collections, batch: list[SearchRequest]) -> dict[str, Any]:
        """Each distinct query's per-model vectors, or the exception embedding it raised."""
        texts = list(dict.fromkeys(request.query for request in batch))
        try:
            return dict(zip(texts, opened.embed(texts)))
        except Exception as error:
            log.warning("Embedding %d queries failed: %s", len(texts), error)
        embedded: dict[str, Any] = {}
        for text in texts:  # find the one query that fails, answer the others
            try:
                embedded[text] = opened.embed([text])[0]
            except Exception as one:
                embedded[text] = one
        return embedded

    def _search(
        self, opened: Collections, batch: list[SearchRequest], embedded: dict[str, Any]
    ) -> list[tuple[SearchRequest, Outcome]]:
        outcomes: list[tuple[SearchRequest, Outcome]] = []
        prepared, waiting = [], []
        for request in batch:
            vectors = embedded[request.query]
            if isinstance(vectors, Exception):
                outcomes.append((request, vectors))
                continue
            try:
                prepared.append(
                    opened.prepare(
                        request.query,
                        request.collections,
                        request.top_k,
                        request.mode,
                        where=request.where,
                        vectors=vectors,
                        diversity=request.diversity,
                        rerank=self.reranker if request.rerank else False,
                        rerank_top_n=request.rerank_top_n,
                    )
                )
                waiting.append(request)
            except Exception as error:
                outcomes.append((request, error))
        for request, result in zip(waiting, opened.search_many(prepared)):
            outcomes.append(
                (request, result if isinstance(result, Exception) else (request.mode, result))
            )
        return outcomes

    def close(self) -> None:
        """Finish queued searches, stop the workers and close the run."""
        self._queue.put(None)
        self._embedder.join(timeout=30)
        self._searcher.join(timeout=30)
        self.live.close()


def scalar_fields(payload: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(field, type) of a payload's string, integer and boolean values, one level into
    `metadata` (the text, digests and lists are not filters)."""
    found = []
    for key, value in payload.items():
        name = prefix + key
        if key in ("text", "content_sha256"):
            continue
        if isinstance(value, dict) and key == "metadata" and not prefix:
            found.extend(scalar_fields(value, "metadata."))
        elif isinstance(value, bool):
            found.append((name, "boolean"))
        elif isinstance(value, int):
            found.append((name, "integer"))
        elif isinstance(value, str) and len(value) <= 512:
            found.append((name, "string"))
    return found


def check_fields(where: PayloadMatch, fields: dict[str, str]) -> None:
    """A UsageError for a filter on a field no sampled point carries, naming the fields."""
    for key, _ in where:
        if fields and key not in fields:
            shown = ", ".join(list(fields)[:12])
            raise UsageError(
                f'where: "{key}" is not a payload field of these collections; filter on one '
                f"of {shown} (list_collections shows them all)"
            )
