"""The server store: qdrant-client against a Qdrant server (`url=`) or its local mode (`path=`)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import (
    ApiException,
    ResponseHandlingException,
    UnexpectedResponse,
)

from embed_collections.errors import StoreError, UsageError
from embed_collections.stores.base import (
    LOOKUP_INDEXES,
    Hit,
    PointBatch,
    PointLookup,
    ScanDigest,
    SearchQuery,
    SparseVec,
    StorageOptions,
    StoreScan,
    VectorLayout,
)

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 3
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
CLIENT_ERRORS = (ApiException, httpx.HTTPError, OSError, ValueError)


def _transient(exc: Exception) -> bool:
    """Whether a failed request is worth retrying (connection trouble, overload, 5xx)."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in RETRY_STATUS
    return isinstance(exc, (ResponseHandlingException, httpx.TransportError, OSError))


def _reason(exc: Exception) -> str:
    """The useful part of a client error: the wrapped transport error, if there is one."""
    inner = getattr(exc, "source", None) or exc.__cause__
    return str(inner or exc) or type(exc).__name__


def _sparse(vector: SparseVec) -> models.SparseVector:
    indices, values = vector
    return models.SparseVector(
        indices=np.asarray(indices).tolist(), values=np.asarray(values, dtype=float).tolist()
    )


def _vector(vector: Any) -> Any:
    if isinstance(vector, tuple):
        return _sparse(vector)
    return np.asarray(vector, dtype=np.float32).tolist()


def _point_vector(dense: dict[str, list], sparse: dict[str, list[SparseVec]], i: int) -> Any:
    """Row i as the client wants it: a plain list for one unnamed vector, else a dict by name."""
    if set(dense) == {""} and not sparse:
        return dense[""][i]
    row: dict[str, Any] = {name: rows[i] for name, rows in dense.items()}
    for name, rows in sparse.items():
        row[name] = _sparse(rows[i])
    return row


def _filter(query: SearchQuery | PointLookup) -> models.Filter | None:
    """Every (key, value) of `where` must match exactly (and a lookup's range hold)."""
    between = query.between if isinstance(query, PointLookup) else None
    if not query.where and between is None:
        return None
    must: list[Any] = [
        models.FieldCondition(key=key, match=models.MatchValue(value=value))
        for key, value in query.where
    ]
    if between is not None:
        key, low, high = between
        must.append(models.FieldCondition(key=key, range=models.Range(gte=low, lte=high)))
    return models.Filter(must=must)


SCHEMAS = {"keyword": models.PayloadSchemaType.KEYWORD, "integer": models.PayloadSchemaType.INTEGER}


def _vectors(vector: Any) -> dict[str, Any]:
    """A returned point's dense vectors by name (the unnamed vector is "")."""
    if isinstance(vector, dict):
        return {name: value for name, value in vector.items() if isinstance(value, list)}
    return {"": vector} if isinstance(vector, list) else {}


STORAGE_KEY = "embed_collections_storage"  # collection metadata: the storage options asked for
BINARY_ENCODINGS = {
    "binary": models.BinaryQuantizationEncoding.ONE_BIT,
    "binary-1.5bit": models.BinaryQuantizationEncoding.ONE_AND_HALF_BITS,
    "binary-2bit": models.BinaryQuantizationEncoding.TWO_BITS,
}


def _quantization(storage: StorageOptions) -> models.QuantizationConfig | None:
    """The server's quantization config (kept in RAM), or None."""
    if storage.quantization == "int8":
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=0.99, always_ram=True
            )
        )
    if storage.quantization in BINARY_ENCODINGS:
        return models.BinaryQuantization(
            binary=models.BinaryQuantizationConfig(
                always_ram=True, encoding=BINARY_ENCODINGS[storage.quantization]
            )
        )
    return None


def _vector_params(size: int, storage: StorageOptions) -> models.VectorParams:
    # Originals stay on disk (mmap) on a server whatever --on-disk says, as before: its RAM is
    # shared by every collection.
    return models.VectorParams(
        size=size,
        distance=models.Distance.COSINE,
        on_disk=True,
        datatype=models.Datatype.FLOAT16 if storage.vector_dtype == "float16" else None,
        quantization_config=_quantization(storage),
    )


def _search_params(storage: StorageOptions) -> models.SearchParams | None:
    """Score the quantized copy for `oversampling` x the limit, then rescore with originals."""
    if not storage.quantized:
        return None
    quantization = models.QuantizationSearchParams(rescore=True, oversampling=storage.oversampling)
    return models.SearchParams(quantization=quantization)


def _request(query: SearchQuery, params: models.SearchParams | None = None) -> models.QueryRequest:
    """One search: plain nearest for a single vector, prefetch + fusion for several."""
    vectors: list[tuple[str, Any]] = [*query.dense.items(), *query.sparse.items()]
    if not vectors:
        raise StoreError("Search query has no vector (give at least one dense or sparse vector)")
    where = _filter(query)
    with_vector: Any = False
    if query.with_vector:
        names = [name for name in query.dense if name]
        with_vector = names or True
    if len(vectors) == 1:
        name, vector = vectors[0]
        nearest: Any = _vector(vector)
        if query.uses_mmr:
            mmr = models.Mmr(
                diversity=query.diversity, candidates_limit=max(query.candidates, query.limit)
            )
            nearest = models.NearestQuery(nearest=nearest, mmr=mmr)
        return models.QueryRequest(
            query=nearest,
            using=name or None,
            limit=query.limit,
            with_payload=query.with_payload,
            with_vector=with_vector,
            filter=where,
            params=params,
        )
    fusion: models.Query
    if query.fusion == "dbsf":
        fusion = models.FusionQuery(fusion=models.Fusion.DBSF)
    elif query.rrf_k == 60:
        # The default k: the plain form also works on servers older than parametrised RRF.
        fusion = models.FusionQuery(fusion=models.Fusion.RRF)
    else:
        fusion = models.RrfQuery(rrf=models.Rrf(k=query.rrf_k))
    prefetch = [
        models.Prefetch(
            query=_vector(v),
            using=n or None,
            limit=query.prefetch_limit,
            filter=where,
            params=params,
        )
        for n, v in vectors
    ]
    return models.QueryRequest(
        prefetch=prefetch,
        query=fusion,
        limit=query.limit,
        with_payload=query.with_payload,
        with_vector=with_vector,
        filter=where,
    )


class ServerStore:
    """Collections on a Qdrant server, loaded as Qdrant advises: batches, parallel, retries."""

    scroll_page = 4096

    def __init__(
        self,
        url: str | None = None,
        path: Path | None = None,
        api_key: str | None = None,
        batch_size: int = 128,
        parallel: int = 2,
        max_retries: int = 3,
        timeout: float = 30,
    ) -> None:
        if (url is None) == (path is None):
            raise UsageError("ServerStore needs exactly one of url= (a server) or path= (local)")
        self.url = url
        self.path = Path(path) if path is not None else None
        self.api_key = api_key
        self.location = url if url is not None else str(path)
        self.batch_size = max(1, batch_size)
        # Local mode is not thread-safe.
        self.parallel = max(1, parallel) if url is not None else 1
        self.max_retries = max(0, max_retries)
        self.timeout = timeout
        self._client: QdrantClient | None = None

    def __enter__(self) -> ServerStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connect(self, timeout: float) -> QdrantClient:
        if self.url is None:
            return QdrantClient(path=str(self.path))
        # check_compatibility would make a request (and warn) from the constructor.
        return QdrantClient(
            url=self.url,
            api_key=self.api_key,
            timeout=max(1, round(timeout)),
            check_compatibility=False,
        )

    @property
    def client(self) -> QdrantClient:
        """The client, created on first use."""
        if self._client is None:
            self._client = self._connect(self.timeout)
        return self._client

    def _failed(self, what: str, exc: Exception) -> StoreError:
        return StoreError(f"{what} at {self.location} failed: {_reason(exc)}")

    def check_writable(self) -> None:
        """Fail within seconds when the server is unreachable or refuses us."""
        if self.url is None:
            try:
                self.client.get_collections()
            except (*CLIENT_ERRORS, RuntimeError) as exc:
                raise StoreError(
                    f"Qdrant local store {self.path} cannot be opened: {exc} "
                    "(close the other client or use another path)"
                ) from exc
            return
        probe = self._connect(CHECK_TIMEOUT_S)
        try:
            probe.get_collections()
        except UnexpectedResponse as exc:
            hint = "check --qdrant-api-key" if exc.status_code in (401, 403) else "check the URL"
            raise StoreError(
                f"Qdrant at {self.url} refused the request: HTTP {exc.status_code} "
                f"{exc.reason_phrase} ({hint})"
            ) from exc
        except CLIENT_ERRORS as exc:
            raise StoreError(
                f"Cannot reach Qdrant at {self.url}: {_reason(exc)} (start the server, fix "
                "--qdrant-url, or omit it to use the embedded store)"
            ) from exc
        finally:
            probe.close()

    def layout(self, collection: str) -> VectorLayout | None:
        """The existing collection's layout read back from its config, or None."""
        try:
            if not self.client.collection_exists(collection):
                return None
            config = self.client.get_collection(collection).config
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Reading collection "{collection}"', exc) from exc
        params = config.params
        storage = StorageOptions.from_json(
            (getattr(config, "metadata", None) or {}).get(STORAGE_KEY)
        )
        if params.vectors is None:
            dense: dict[str, int] = {}
        elif isinstance(params.vectors, models.VectorParams):
            dense = {"": params.vectors.size}
        else:
            dense = {name: p.size for name, p in params.vectors.items()}
        sparse = tuple(sorted(params.sparse_vectors or {}))
        return VectorLayout(dense=dense, sparse=sparse, storage=storage)

    def ensure_collection(
        self, collection: str, layout: VectorLayout, recreate: bool = False
    ) -> None:
        """Create the collection, or check it matches `layout` (StoreError naming both if not)."""
        existing = self.layout(collection)
        if existing is not None and not recreate:
            if not existing.matches(layout):
                raise StoreError(
                    f'Collection "{collection}" exists with {existing.describe()} but this run '
                    f"needs {layout.describe()} (use --recreate to replace it)"
                )
            return
        vectors: models.VectorParams | dict[str, models.VectorParams]
        if set(layout.dense) == {""}:
            vectors = _vector_params(layout.dense[""], layout.storage)
        else:
            vectors = {
                name: _vector_params(size, layout.storage) for name, size in layout.dense.items()
            }
        # Only non-default options are recorded, so servers without collection metadata
        # (before Qdrant 1.16) still take the default layout.
        default = layout.storage == StorageOptions()
        metadata = None if default else {STORAGE_KEY: layout.storage.to_json()}
        sparse = {
            name: models.SparseVectorParams(
                modifier=models.Modifier.IDF if layout.sparse_idf else None
            )
            for name in layout.sparse
        }
        try:
            if existing is not None:
                self.client.delete_collection(collection)
                logger.info('deleted collection "%s" at %s', collection, self.location)
            self.client.create_collection(
                collection,
                vectors_config=vectors,
                sparse_vectors_config=sparse or None,
                metadata=metadata,
            )
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Creating collection "{collection}"', exc) from exc
        logger.info(
            'created collection "%s" at %s: %s', collection, self.location, layout.describe()
        )

    def drop(self, collection: str) -> None:
        """Delete the collection if it exists."""
        try:
            if self.client.collection_exists(collection):
                self.client.delete_collection(collection)
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Deleting collection "{collection}"', exc) from exc

    def loaded_marker(self, collection: str) -> dict[str, Any] | None:
        """None: a server keeps no marker, so every run reloads (upserts are idempotent)."""
        return None

    def mark_loaded(self, collection: str, signature: str, count: int, digest: str = "") -> None:
        """Nothing is recorded on a server (see `loaded_marker`)."""

    def clear_loaded(self, collection: str) -> None:
        """Nothing is recorded on a server (see `loaded_marker`)."""

    def unchanged_since_marked(self, collection: str) -> bool:
        """False: a server keeps no marker."""
        return False

    def _send(self, collection: str, points: list[models.PointStruct], wait: bool) -> None:
        """One upsert request, retried with exponential back-off on transient failures."""
        for attempt in range(self.max_retries + 1):
            try:
                self.client.upsert(collection, points=points, wait=wait)
                return
            except CLIENT_ERRORS as exc:
                if not _transient(exc) or attempt == self.max_retries:
                    raise StoreError(
                        f'Upsert of {len(points)} points to "{collection}" at '
                        f"{self.location} failed after {attempt + 1} attempt(s): {_reason(exc)}"
                    ) from exc
                delay = 0.5 * 2**attempt
                logger.warning(
                    "upsert to %s failed (%s); retrying in %.1fs", collection, exc, delay
                )
                time.sleep(delay)

    def upsert(self, collection: str, batch: PointBatch) -> None:
        """Insert or overwrite points by id: `batch_size` per request, `parallel` in flight."""
        if not len(batch):
            return
        # Create the client before the worker threads need it, so they never race to make one.
        _ = self.client
        dense = {name: np.asarray(a, dtype=np.float32).tolist() for name, a in batch.dense.items()}
        requests = []
        for start in range(0, len(batch), self.batch_size):
            stop = start + self.batch_size
            points = [
                models.PointStruct(
                    id=batch.ids[i],
                    vector=_point_vector(dense, batch.sparse, i),
                    payload=batch.payloads[i],
                )
                for i in range(start, min(stop, len(batch)))
            ]
            requests.append(points)
        *head, last = requests
        if head and self.parallel > 1:
            with ThreadPoolExecutor(self.parallel) as pool:
                futures = [pool.submit(self._send, collection, r, False) for r in head]
                for future in futures:
                    future.result()
        else:
            for request in head:
                self._send(collection, request, False)
        # Updates apply in order, so waiting for the last one waits for them all.
        self._send(collection, last, True)
        logger.debug('upserted %d points into "%s"', len(batch), collection)

    def point_ids(self, collection: str) -> set[str]:
        """Every point id, as canonical UUID strings."""
        ids: set[str] = set()
        offset = None
        try:
            while True:
                records, offset = self.client.scroll(
                    collection, limit=self.scroll_page, offset=offset, with_payload=False
                )
                ids.update(str(record.id) for record in records)
                if offset is None:
                    return ids
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Listing points of "{collection}"', exc) from exc

    def scan(self, collection: str, keep: frozenset[str] = frozenset()) -> StoreScan:
        """Read every point back, vectors and payloads included, into a `StoreScan`."""
        layout = self.layout(collection)
        names = list(layout.dense) if layout else [""]
        digest = ScanDigest(names, keep)
        offset = None
        try:
            while True:
                records, offset = self.client.scroll(
                    collection,
                    limit=self.scroll_page,
                    offset=offset,
                    with_payload=True,
                    with_vectors=True,
                )
                ids, sparse, payloads = [], [], []
                dense: dict[str, list[Any]] = {name: [] for name in names}
                for record in records:
                    ids.append(str(record.id))
                    vector: Any = record.vector
                    named = vector if isinstance(vector, dict) else {"": vector}
                    for name in names:
                        dense[name].append(named.get(name) or [])
                    sparse.append(
                        [
                            [key, list(value.indices), list(value.values)]
                            for key, value in sorted(named.items())
                            if isinstance(value, models.SparseVector)
                        ]
                    )
                    payloads.append(record.payload)
                digest.add_page(ids, dense, sparse, payloads)
                if offset is None:
                    return digest.result()
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Reading points of "{collection}" back', exc) from exc

    def delete(self, collection: str, ids: list[str]) -> None:
        """Delete points by id."""
        if not ids:
            return
        try:
            self.client.delete(collection, models.PointIdsList(points=list(ids)), wait=True)
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Deleting from "{collection}"', exc) from exc

    def count(self, collection: str) -> int:
        """Exact number of points."""
        try:
            return self.client.count(collection, exact=True).count
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Counting "{collection}"', exc) from exc

    def search(self, collection: str, queries: list[SearchQuery]) -> list[list[Hit]]:
        """Run the queries in one batch request; hits per query, best first."""
        if not queries:
            return []
        # Local mode searches the float32 originals by brute force: it ignores (and warns about)
        # quantization parameters, so they go only to a server.
        layout = self.layout(collection) if self.url is not None else None
        params = _search_params(layout.storage) if layout else None
        requests = [_request(query, params) for query in queries]
        try:
            responses = self.client.query_batch_points(collection, requests)
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Search in "{collection}"', exc) from exc
        return [
            [Hit(str(p.id), float(p.score), p.payload or {}, _vectors(p.vector)) for p in r.points]
            for r in responses
        ]

    def lookup(self, collection: str, lookup: PointLookup) -> list[Hit]:
        """The points whose payload matches `lookup` (payload only, score 0)."""
        hits: list[Hit] = []
        offset = None
        try:
            while len(hits) < lookup.limit:
                records, offset = self.client.scroll(
                    collection,
                    scroll_filter=_filter(lookup),
                    limit=min(lookup.limit - len(hits), self.scroll_page),
                    offset=offset,
                    with_payload=True,
                )
                hits.extend(Hit(str(r.id), 0.0, r.payload or {}) for r in records)
                if offset is None:
                    break
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Looking up points of "{collection}"', exc) from exc
        return hits

    def retrieve(self, collection: str, ids: list[str]) -> list[Hit]:
        """The points with these ids that exist (payload only)."""
        try:
            records = self.client.retrieve(collection, list(ids), with_payload=True)
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Retrieving points of "{collection}"', exc) from exc
        return [Hit(str(r.id), 0.0, r.payload or {}) for r in records]

    def index_payload(self, collection: str) -> None:
        """Create the missing payload indexes `read` looks points up by (a server only: local
        mode has no payload indexes)."""
        if self.url is None:
            return
        have = self.payload_indexes(collection)
        try:
            for field_name, kind in LOOKUP_INDEXES.items():
                if field_name not in have:
                    self.client.create_payload_index(
                        collection, field_name, field_schema=SCHEMAS[kind], wait=True
                    )
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Indexing the payload of "{collection}"', exc) from exc

    def payload_indexes(self, collection: str) -> set[str]:
        """The payload fields the collection has an index on."""
        try:
            schema = self.client.get_collection(collection).payload_schema
        except CLIENT_ERRORS as exc:
            raise self._failed(f'Reading the payload indexes of "{collection}"', exc) from exc
        return set(schema or {})

    def finish(self, collection: str, build_index: bool = True) -> None:
        """Nothing to do: the server persists and indexes in the background."""

    def collections(self) -> list[str]:
        """Names of the collections on the server, sorted."""
        try:
            return sorted(c.name for c in self.client.get_collections().collections)
        except CLIENT_ERRORS as exc:
            raise self._failed("Listing collections", exc) from exc

    def close(self) -> None:
        """Close the client (local mode releases its lock on the folder)."""
        if self._client is not None:
            self._client.close()
            self._client = None
