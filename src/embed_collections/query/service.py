"""What `serve` answers, whatever the protocol: the collections, and searches whose queries are
embedded together in small batches (a micro-batcher), so that concurrent clients share one
model call instead of queueing for one each."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from embed_collections.query.collections import SearchHit, check_request, payload_match
from embed_collections.query.live import LiveRun
from embed_collections.stores.base import PayloadMatch

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32


@dataclass
class SearchRequest:
    """One checked search waiting for its batch."""

    query: str
    collections: list[str]
    top_k: int
    mode: str
    where: PayloadMatch
    future: Future = field(default_factory=Future)


class SearchService:
    """The run's collections (`LiveRun`) and a batching worker thread in front of them.

    The worker takes every request waiting (up to `max_batch`), embeds their texts in one call
    to each model, then searches the store for each; one thread owns the models and the store,
    so neither needs to be safe for concurrent use.
    """

    def __init__(self, live: LiveRun, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.live, self.max_batch = live, max_batch
        self.batches = 0
        self.requests = 0
        self._queue: queue.Queue[SearchRequest | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="search-batcher", daemon=True)
        self._worker.start()

    def collections(self) -> dict[str, Any]:
        """The collections with their point counts, and the models that embed queries."""
        with self.live.using() as opened:
            counts = self.live.state.counts
            return {
                "collections": [
                    {"name": name, "points": counts.get(name, 0)} for name in opened.names
                ],
                "models": [
                    {"name": m.name, "weight": m.weight, "dim": m.dim} for m in opened.models
                ],
                "combine": opened.record.combine,
                "sparse": opened.record.sparse.kind if opened.record.sparse else None,
                "default_mode": opened.resolve_mode(None),
            }

    def health(self) -> dict[str, Any]:
        """Liveness and what is served: collections, when loaded, the last reload error."""
        state = self.live.state
        return {
            "status": "ok",
            "collections": len(state.counts),
            "loaded_at": state.loaded_at,
            "reloads": self.live.reloads,
            "last_error": self.live.last_error or None,
            "batches": self.batches,
            "requests": self.requests,
        }

    def submit(
        self,
        query: str,
        collections: str | list[str] | None = None,
        top_k: int = 10,
        mode: str | None = None,
        where: Any = None,
    ) -> Future:
        """Check a search (UsageError now for bad input) and queue it; the future's result is
        (mode, hits)."""
        check_request(query, top_k)
        match = payload_match(where)
        with self.live.using() as opened:
            chosen = opened.resolve_mode(mode)
            names = opened.resolve_names(collections)
        request = SearchRequest(query, names, top_k, chosen, match)
        self._queue.put(request)
        return request.future

    async def search(self, **request: Any) -> dict[str, Any]:
        """`submit`, awaited: {"mode", "hits": [...]} as every client receives it."""
        mode, hits = await asyncio.wrap_future(self.submit(**request))
        return {"mode": mode, "hits": [hit.to_json() for hit in hits]}

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

    def _work(self) -> None:
        while (batch := self._take_batch()) is not None:
            self.batches += 1
            self.requests += len(batch)
            try:
                self._answer(batch)
            except BaseException as error:  # never leave a client waiting
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(error)

    def _answer(self, batch: list[SearchRequest]) -> None:
        texts = list(dict.fromkeys(request.query for request in batch))
        with self.live.using() as opened:
            try:
                embedded = dict(zip(texts, opened.embed(texts)))
            except Exception as error:
                log.warning("Embedding %d queries failed: %s", len(texts), error)
                embedded = {}
                for text in texts:  # find the one query that fails, answer the others
                    try:
                        embedded[text] = opened.embed([text])[0]
                    except Exception as one:
                        embedded[text] = one  # type: ignore[assignment]
            prepared, waiting = [], []
            for request in batch:
                vectors = embedded[request.query]
                if isinstance(vectors, Exception):
                    request.future.set_exception(vectors)
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
                        )
                    )
                    waiting.append(request)
                except Exception as error:
                    request.future.set_exception(error)
            for request, result in zip(waiting, opened.search_many(prepared)):
                if isinstance(result, Exception):
                    request.future.set_exception(result)
                else:
                    request.future.set_result((request.mode, result))

    def close(self) -> None:
        """Finish queued searches, stop the worker and close the run."""
        self._queue.put(None)
        self._worker.join(timeout=30)
        self.live.close()
