"""The embedded store: one Qdrant Edge shard per collection, in-process, WAL on.

qdrant-edge-py is beta and its API changed between releases, so every `qdrant_edge` call in the
project lives in this module.
"""

from __future__ import annotations

import fcntl
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
    BinaryQuantizationConfig,
    BinaryQuantizationEncoding,
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
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
    QuantizationSearchParams,
    Query,
    QueryBatchRequest,
    QueryRequest,
    ScalarQuantizationConfig,
    ScalarType,
    ScrollRequest,
    SearchParams,
    SparseVector,
    UpdateOperation,
    VectorStorageDatatype,
)

from embed_collections.atomic import write_json_atomic
from embed_collections.errors import (
    ShardDamagedError,
    StoreError,
    StoreInUseError,
    UsageError,
)
from embed_collections.stores import edge_files
from embed_collections.stores.base import (
    Hit,
    PointBatch,
    ScanDigest,
    SearchQuery,
    SparseVec,
    StorageOptions,
    StoreScan,
    VectorLayout,
)

logger = logging.getLogger(__name__)

WRITER_LOCK = ".writer.lock"


@contextmanager
def _edge_errors(what: str) -> Iterator[None]:
    """Turn the binding's errors into StoreError; it raises bare `Exception`, nothing narrower."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"{what}: {exc}") from exc


BINARY_ENCODINGS = {
    "binary": BinaryQuantizationEncoding.OneBit,
    "binary-1.5bit": BinaryQuantizationEncoding.OneAndHalfBits,
    "binary-2bit": BinaryQuantizationEncoding.TwoBits,
}


def _quantization(storage: StorageOptions) -> Any:
    """The engine's quantization config (kept in RAM), or None."""
    if storage.quantization == "int8":
        return ScalarQuantizationConfig(ScalarType.Int8, quantile=0.99, always_ram=True)
    if storage.quantization in BINARY_ENCODINGS:
        return BinaryQuantizationConfig(
            always_ram=True, encoding=BINARY_ENCODINGS[storage.quantization]
        )
    return None


def _vector_params(size: int, storage: StorageOptions) -> EdgeVectorParams:
    datatype = VectorStorageDatatype.Float16 if storage.vector_dtype == "float16" else None
    return EdgeVectorParams(
        size,
        Distance.Cosine,
        on_disk=storage.on_disk or None,
        datatype=datatype,
        quantization_config=_quantization(storage),
    )


def _search_params(storage: StorageOptions) -> SearchParams | None:
    """Score the quantized copy for `oversampling` x the limit, then rescore with originals."""
    if not storage.quantized:
        return None
    return SearchParams(
        quantization=QuantizationSearchParams(rescore=True, oversampling=storage.oversampling)
    )


def _edge_config(layout: VectorLayout) -> EdgeConfig:
    # Quantized copies, float16 and on-disk originals exist only in optimized segments, which
    # Qdrant builds once a segment passes its indexing threshold (~10 MB of vectors): below it,
    # `optimize()` would leave every vector float32 in RAM. A 1 KB threshold makes `finish`
    # build them (and the HNSW index) for collections of any size when storage options are set.
    storage = layout.storage
    optimizers = None if storage == StorageOptions() else EdgeOptimizersConfig(indexing_threshold=1)
    return EdgeConfig(
        optimizers=optimizers,
        vectors={name: _vector_params(size, layout.storage) for name, size in layout.dense.items()},
        sparse_vectors={
            name: EdgeSparseVectorParams(modifier=Modifier.Idf if layout.sparse_idf else None)
            for name in layout.sparse
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


def _request(query: SearchQuery, params: SearchParams | None = None) -> QueryRequest:
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
        return QueryRequest(query.limit, query=_nearest(name, vector), params=params, **options)
    fusion: Any = Fusion.Rrf(k=query.rrf_k) if query.fusion == "rrf" else Fusion.Dbsf()
    prefetches = [
        Prefetch(query.prefetch_limit, query=_nearest(n, v), filter=where, params=params)
        for n, v in vectors
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
        self._writer: Any = None  # the open lock file while this object is the store's writer
        self._written: set[str] = set()  # open shards this object has written to

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _shard_dir(self, collection: str) -> Path:
        return edge_files.shard_dir(self.root, collection)

    def _layout_file(self, collection: str) -> Path:
        return edge_files.layout_file(self.root, collection)

    def _marker_file(self, collection: str) -> Path:
        return edge_files.marker_file(self.root, collection)

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
            edge_files.check_room(path)
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
                    if collection in self._written:  # a shard only read has nothing to flush
                        shard.flush()
                finally:
                    self._written.discard(collection)
                    shard.close()

    def check_writable(self) -> None:
        """Create the root if needed, prove a file can be written there, and become the store's
        one writer (StoreInUseError naming the holder when another process is)."""
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
        self._lock_writer()

    def _lock_writer(self) -> None:
        """Hold an exclusive `flock` on the store's lock file until close(): two runs (or a run
        and an `upload`) on one store path would otherwise interleave their writes. The kernel
        drops it when the holder exits, even after kill -9."""
        if self._writer is not None:
            return
        path = self.root / WRITER_LOCK
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise StoreInUseError(
                f"Qdrant store {self.root} is being written by another process"
                f"{f' (pid {holder})' if holder else ''}; wait for it to finish or use another "
                "--qdrant-path"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._writer = handle

    def layout(self, collection: str) -> VectorLayout | None:
        """The layout recorded when the collection was created, or None if it does not exist."""
        return edge_files.read_layout(self.root, collection)

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
            self._written.add(collection)
        else:
            with self._opening(path):
                self._shards[collection] = EdgeShard.create(str(path), _edge_config(layout))
            self._written.add(collection)
            logger.info('created collection "%s" in %s: %s', collection, path, layout.describe())
        self._write_layout(collection, layout)

    def loaded_marker(self, collection: str) -> dict[str, Any] | None:
        """What the last complete load recorded ({"signature", "count", "digest"}), or None."""
        return edge_files.read_marker(self.root, collection)

    def mark_loaded(self, collection: str, signature: str, count: int, digest: str = "") -> None:
        """Record that the collection holds exactly the `count` points of `signature`, with the
        stats of its shard's files (the shard is closed first: closing writes to them)."""
        self._close_one(collection)
        edge_files.write_marker(self.root, collection, signature, count, digest)
        self._unmarked.discard(collection)

    def unchanged_since_marked(self, collection: str) -> bool:
        """Whether the shard's files are exactly those its loaded marker recorded (no write of
        any kind since the last complete load), checked without opening the shard."""
        marker = self.loaded_marker(collection)
        if marker is None or collection in self._shards:
            return False
        return edge_files.unchanged_since_marked(self.root, collection, marker)

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
        self._written.add(collection)
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

    def scan(self, collection: str, keep: frozenset[str] = frozenset()) -> StoreScan:
        """Read every point back, vectors and payloads included, into a `StoreScan`.

        A damaged vector or payload file makes the engine fail here (ShardDamagedError) rather
        than at search time.
        """
        layout = self.layout(collection)
        if layout is None:
            raise ShardDamagedError(f'Collection "{collection}" in {self.root} has no layout file')
        shard = self._shard(collection)
        names = list(layout.dense)
        digest = ScanDigest(names, keep)
        offset = None
        try:
            while True:
                records, offset = shard.scroll(
                    ScrollRequest(
                        offset=offset, limit=self.scroll_page, with_payload=True, with_vector=True
                    )
                )
                ids, sparse, payloads = [], [], []
                dense: dict[str, list[Any]] = {name: [] for name in names}
                for record in records:
                    ids.append(str(record.id))
                    vector = record.vector
                    named = vector if isinstance(vector, dict) else {"": vector}
                    for name in names:
                        dense[name].append(named.get(name) or [])
                    sparse.append(
                        [
                            [key, list(value.indices), list(value.values)]
                            for key, value in sorted(named.items())
                            if isinstance(value, SparseVector)
                        ]
                    )
                    payloads.append(record.payload)
                digest.add_page(ids, dense, sparse, payloads)
                if offset is None:
                    return digest.result()
        except (ValueError, TypeError) as exc:  # ragged rows: a vector of the wrong size
            raise ShardDamagedError(
                f'Collection "{collection}" in {self.root} holds unreadable vectors: {exc}'
            ) from exc
        except StoreError:
            raise
        except Exception as exc:
            raise ShardDamagedError(
                f'Reading collection "{collection}" in {self.root} back failed: {exc}'
            ) from exc

    def delete(self, collection: str, ids: list[str]) -> None:
        """Delete points by id."""
        self.clear_loaded(collection)
        shard = self._shard(collection)
        self._written.add(collection)
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
        layout = self.layout(collection)
        params = _search_params(layout.storage) if layout else None
        requests = [_request(query, params) for query in queries]
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
        names = (
            p.name[: -len(edge_files.LAYOUT_SUFFIX)]
            for p in self.root.glob(f"*{edge_files.LAYOUT_SUFFIX}")
        )
        return sorted(name for name in names if (self.root / name).is_dir())

    def close(self) -> None:
        """Flush and close every open shard, releasing their WAL locks and the writer lock."""
        try:
            for collection in list(self._shards):
                self._close_one(collection)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
