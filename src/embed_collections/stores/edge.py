"""The embedded store: one Qdrant Edge shard per collection, in-process, WAL on.

qdrant-edge-py is beta and its API changed between releases, so every `qdrant_edge` call in the
project lives in this module.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    Fusion,
    MatchValue,
    Modifier,
    Point,
    Prefetch,
    Query,
    QueryBatchRequest,
    QueryRequest,
    ScrollRequest,
    SparseVector,
    UpdateOperation,
)

from embed_collections.atomic import write_json_atomic
from embed_collections.errors import ShardDamagedError, StoreError, StoreInUseError, UsageError
from embed_collections.stores.base import Hit, PointBatch, SearchQuery, SparseVec, VectorLayout

logger = logging.getLogger(__name__)

LAYOUT_SUFFIX = ".layout.json"
MARKER_SUFFIX = ".loaded.json"


@contextmanager
def _edge_errors(what: str) -> Iterator[None]:
    """Turn the binding's errors into StoreError; it raises bare `Exception`, nothing narrower."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"{what}: {exc}") from exc


def _edge_config(layout: VectorLayout) -> EdgeConfig:
    return EdgeConfig(
        vectors={
            name: EdgeVectorParams(size, Distance.Cosine) for name, size in layout.dense.items()
        },
        sparse_vectors={
            name: EdgeSparseVectorParams(modifier=Modifier.Idf) for name in layout.sparse
        },
    )


def _sparse(vector: SparseVec) -> SparseVector:
    indices, values = vector
    return SparseVector(np.asarray(indices).tolist(), np.asarray(values, dtype=float).tolist())


def _nearest(name: str, vector: Any) -> Query:
    if isinstance(vector, tuple):
        return Query.Nearest(_sparse(vector), using=name)
    return Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using=name)


def _filter(query: SearchQuery) -> Filter | None:
    """Every (key, value) of `where` must match exactly."""
    if not query.where:
        return None
    for key, value in query.where:
        if isinstance(value, bool):
            # The binding (0.9) turns True into the integer 1, which never matches a boolean.
            raise UsageError(
                f'Filter "{key}" matches a boolean, which the embedded store (Qdrant Edge 0.9) '
                "cannot filter on; filter on another field, or search a Qdrant server"
            )
    return Filter(must=[FieldCondition(key, match=MatchValue(value)) for key, value in query.where])


def _request(query: SearchQuery) -> QueryRequest:
    """One search: plain nearest for a single vector, prefetch + fusion for several."""
    vectors: list[tuple[str, Any]] = [*query.dense.items(), *query.sparse.items()]
    if not vectors:
        raise StoreError("Search query has no vector (give at least one dense or sparse vector)")
    where = _filter(query)
    options: dict[str, Any] = {"with_payload": query.with_payload, "filter": where}
    if query.with_vector:
        options["with_vector"] = [name for name, _ in query.dense.items()] or True
    if len(vectors) == 1:
        name, vector = vectors[0]
        return QueryRequest(query.limit, query=_nearest(name, vector), **options)
    fusion: Any = Fusion.Rrf(k=query.rrf_k) if query.fusion == "rrf" else Fusion.Dbsf()
    prefetches = [
        Prefetch(query.prefetch_limit, query=_nearest(n, v), filter=where) for n, v in vectors
    ]
    return QueryRequest(query.limit, prefetches=prefetches, query=fusion, **options)


def _vectors(vector: Any) -> dict[str, Any]:
    """A returned point's dense vectors by name (the unnamed vector is "")."""
    if vector is None:
        return {}
    if isinstance(vector, dict):
        return {name: value for name, value in vector.items() if isinstance(value, list)}
    return {"": vector} if isinstance(vector, list) else {}


class EdgeStore:
    """Qdrant Edge shards under `root`: `<root>/<collection>/` plus a `<collection>.layout.json`."""

    upsert_batch = 1024
    scroll_page = 4096

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._shards: dict[str, EdgeShard] = {}
        self._unmarked: set[str] = set()  # collections whose loaded marker this object removed

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _shard_dir(self, collection: str) -> Path:
        if not collection or collection in {".", ".."} or "/" in collection or "\\" in collection:
            raise StoreError(f'Collection name "{collection}" cannot be used as a folder name')
        return self.root / collection

    def _layout_file(self, collection: str) -> Path:
        return self.root / f"{collection}{LAYOUT_SUFFIX}"

    def _marker_file(self, collection: str) -> Path:
        return self.root / f"{collection}{MARKER_SUFFIX}"

    def _in_use(self, path: Path) -> StoreError:
        return StoreInUseError(
            f"Qdrant store {path} is in use by another process "
            "(close it or use another --qdrant-path)"
        )

    @contextmanager
    def _opening(self, path: Path, hint: str = "") -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            # The WAL lock is the only guard against two writers; the binding reports it only
            # in the message text.
            if "WouldBlock" in str(exc):
                raise self._in_use(path) from exc
            raise ShardDamagedError(f"Cannot open Qdrant Edge shard {path}: {exc}{hint}") from exc

    def _shard(self, collection: str) -> EdgeShard:
        """The open shard of `collection`, loaded on first use and kept until close()."""
        shard = self._shards.get(collection)
        if shard is None:
            path = self._shard_dir(collection)
            if not path.is_dir():
                raise StoreError(
                    f'Collection "{collection}" does not exist in {self.root} '
                    "(create it with ensure_collection first)"
                )
            with self._opening(path):
                shard = EdgeShard.load(str(path))
            self._shards[collection] = shard
            logger.debug("opened Qdrant Edge shard %s", path)
        return shard

    def _write_layout(self, collection: str, layout: VectorLayout) -> None:
        write_json_atomic(self._layout_file(collection), layout.to_json())

    def drop(self, collection: str) -> None:
        """Delete a collection's shard and sidecars, even one the engine can no longer open.

        The shard is opened first to take its lock (so a shard in use is never deleted); a
        shard too damaged to open is deleted anyway, which is what replacing it means.
        """
        path = self._shard_dir(collection)
        self.clear_loaded(collection)
        if path.is_dir():
            try:
                self._shard(collection)
                self._close_one(collection)
            except StoreInUseError:
                raise
            except StoreError as exc:
                self._shards.pop(collection, None)
                logger.warning("replacing damaged collection %s: %s", collection, exc)
            shutil.rmtree(path)
        self._layout_file(collection).unlink(missing_ok=True)
        logger.info('deleted collection "%s" from %s', collection, self.root)

    def _close_one(self, collection: str) -> None:
        shard = self._shards.pop(collection, None)
        if shard is not None:
            with _edge_errors(f'Closing collection "{collection}" in {self.root} failed'):
                try:
                    shard.flush()
                finally:
                    shard.close()

    def check_writable(self) -> None:
        """Create the root if needed and prove a file can be written there."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".write-check.")
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise StoreError(
                f"Qdrant store {self.root} is not writable: {exc.strerror or exc} "
                "(fix its permissions or use another --qdrant-path)"
            ) from exc

    def layout(self, collection: str) -> VectorLayout | None:
        """The layout recorded when the collection was created, or None if it does not exist."""
        sidecar = self._layout_file(collection)
        if not (sidecar.is_file() and self._shard_dir(collection).is_dir()):
            return None
        try:
            return VectorLayout.from_json(json.loads(sidecar.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"Layout file {sidecar} is unreadable: {exc} (use --recreate to replace it)"
            ) from exc

    def ensure_collection(
        self, collection: str, layout: VectorLayout, recreate: bool = False
    ) -> None:
        """Create the collection, or check it matches `layout` (StoreError naming both if not)."""
        path = self._shard_dir(collection)
        self.root.mkdir(parents=True, exist_ok=True)
        if recreate:
            self.drop(collection)
        existing = self.layout(collection)
        if existing is not None:
            if not existing.matches(layout):
                raise StoreError(
                    f'Collection "{collection}" exists with {existing.describe()} but this run '
                    f"needs {layout.describe()} (use --recreate to replace it)"
                )
            self._shard(collection)  # take the lock now, so "in use" shows before any work
            return
        if path.is_dir():
            # A shard without its sidecar (a crash between the two writes): let the engine
            # check the configuration against the segments, then record it.
            self._close_one(collection)
            hint = f" (use --recreate to replace it with {layout.describe()})"
            with self._opening(path, hint):
                self._shards[collection] = EdgeShard.load(str(path), _edge_config(layout))
        else:
            with self._opening(path):
                self._shards[collection] = EdgeShard.create(str(path), _edge_config(layout))
            logger.info('created collection "%s" in %s: %s', collection, path, layout.describe())
        self._write_layout(collection, layout)

    def loaded_marker(self, collection: str) -> dict[str, Any] | None:
        """What the last complete load recorded ({"signature", "count"}), or None."""
        try:
            data = json.loads(self._marker_file(collection).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("count"), int):
            return None
        return data

    def mark_loaded(self, collection: str, signature: str, count: int) -> None:
        """Record that the collection holds exactly the `count` points of `signature`."""
        write_json_atomic(self._marker_file(collection), {"signature": signature, "count": count})
        self._unmarked.discard(collection)

    def clear_loaded(self, collection: str) -> None:
        """Forget the loaded marker: done before any write, so an interrupted or foreign write
        (a killed run, `upload`) never leaves a marker that vouches for the old points."""
        if collection not in self._unmarked:
            self._marker_file(collection).unlink(missing_ok=True)
            self._unmarked.add(collection)

    def upsert(self, collection: str, batch: PointBatch) -> None:
        """Insert or overwrite points by id, ~1024 points per engine update."""
        self.clear_loaded(collection)
        shard = self._shard(collection)
        # One tolist() per whole array: per-row conversion is the ingest bottleneck.
        dense = {name: np.asarray(a, dtype=np.float32).tolist() for name, a in batch.dense.items()}
        for start in range(0, len(batch), self.upsert_batch):
            stop = min(start + self.upsert_batch, len(batch))
            points = []
            for i in range(start, stop):
                vector: dict[str, Any] = {name: rows[i] for name, rows in dense.items()}
                for name, rows in batch.sparse.items():
                    vector[name] = _sparse(rows[i])
                points.append(Point(batch.ids[i], vector, batch.payloads[i]))
            with _edge_errors(f'Upsert to collection "{collection}" in {self.root} failed'):
                shard.update(UpdateOperation.upsert_points(points))
        logger.debug('upserted %d points into "%s"', len(batch), collection)

    def point_ids(self, collection: str) -> set[str]:
        """Every point id, as canonical UUID strings."""
        shard = self._shard(collection)
        ids: set[str] = set()
        offset = None
        with _edge_errors(f'Listing points of "{collection}" in {self.root} failed'):
            while True:
                records, offset = shard.scroll(
                    ScrollRequest(offset=offset, limit=self.scroll_page, with_payload=False)
                )
                ids.update(str(record.id) for record in records)
                if offset is None:
                    return ids

    def delete(self, collection: str, ids: list[str]) -> None:
        """Delete points by id."""
        self.clear_loaded(collection)
        shard = self._shard(collection)
        with _edge_errors(f'Delete from collection "{collection}" in {self.root} failed'):
            for start in range(0, len(ids), self.scroll_page):
                part: list[Any] = ids[start : start + self.scroll_page]
                shard.update(UpdateOperation.delete_points(part))

    def count(self, collection: str) -> int:
        """Exact number of points."""
        shard = self._shard(collection)
        with _edge_errors(f'Counting collection "{collection}" in {self.root} failed'):
            return int(shard.count(CountRequest(exact=True)))

    def search(self, collection: str, queries: list[SearchQuery]) -> list[list[Hit]]:
        """Run the queries as one planned batch; hits per query, best first."""
        if not queries:
            return []
        shard = self._shard(collection)
        requests = [_request(query) for query in queries]
        with _edge_errors(f'Search in collection "{collection}" in {self.root} failed'):
            if len(requests) == 1:
                results = [shard.query(requests[0])]
            else:
                results = shard.query_batch(QueryBatchRequest(requests))
        return [
            [Hit(str(p.id), float(p.score), p.payload or {}, _vectors(p.vector)) for p in points]
            for points in results
        ]

    def finish(self, collection: str, build_index: bool = True) -> None:
        """Flush, build the HNSW index once (blocking) when `build_index`, and close the shard.

        Closing keeps memory flat over hundreds of collections; a later call reopens it.
        """
        shard = self._shard(collection)
        with _edge_errors(f'Finishing collection "{collection}" in {self.root} failed'):
            shard.flush()
            if build_index:
                logger.info('building the index of "%s"', collection)
                shard.optimize()
        self._close_one(collection)

    def collections(self) -> list[str]:
        """Names of the collections under the root, sorted."""
        if not self.root.is_dir():
            return []
        names = (p.name[: -len(LAYOUT_SUFFIX)] for p in self.root.glob(f"*{LAYOUT_SUFFIX}"))
        return sorted(name for name in names if (self.root / name).is_dir())

    def close(self) -> None:
        """Flush and close every open shard, releasing their WAL locks."""
        for collection in list(self._shards):
            self._close_one(collection)
