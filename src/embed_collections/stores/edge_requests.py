"""The requests and configurations the embedded store sends to Qdrant Edge: collection
configs, searches (plain, fused, MMR) and payload filters, built from the store's own records."""

from __future__ import annotations

from typing import Any

import numpy as np
from qdrant_edge import (
    BinaryQuantizationConfig,
    BinaryQuantizationEncoding,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    Fusion,
    MatchValue,
    Mmr,
    Modifier,
    PayloadSchemaType,
    Prefetch,
    QuantizationSearchParams,
    Query,
    QueryRequest,
    RangeFloat,
    ScalarQuantizationConfig,
    ScalarType,
    SearchParams,
    SparseVector,
    VectorStorageDatatype,
)

from embed_collections.errors import StoreError, UsageError
from embed_collections.stores.base import (
    PayloadMatch,
    PointLookup,
    SearchQuery,
    SparseVec,
    StorageOptions,
    VectorLayout,
)

BINARY_ENCODINGS = {
    "binary": BinaryQuantizationEncoding.OneBit,
    "binary-1.5bit": BinaryQuantizationEncoding.OneAndHalfBits,
    "binary-2bit": BinaryQuantizationEncoding.TwoBits,
}


def quantization_config(storage: StorageOptions) -> Any:
    """The engine's quantization config (kept in RAM), or None."""
    if storage.quantization == "int8":
        return ScalarQuantizationConfig(ScalarType.Int8, quantile=0.99, always_ram=True)
    if storage.quantization in BINARY_ENCODINGS:
        return BinaryQuantizationConfig(
            always_ram=True, encoding=BINARY_ENCODINGS[storage.quantization]
        )
    return None


def vector_params(size: int, storage: StorageOptions) -> EdgeVectorParams:
    datatype = VectorStorageDatatype.Float16 if storage.vector_dtype == "float16" else None
    return EdgeVectorParams(
        size,
        Distance.Cosine,
        on_disk=storage.on_disk or None,
        datatype=datatype,
        quantization_config=quantization_config(storage),
    )


def search_params(storage: StorageOptions) -> SearchParams | None:
    """Score the quantized copy for `oversampling` x the limit, then rescore with originals."""
    if not storage.quantized:
        return None
    return SearchParams(
        quantization=QuantizationSearchParams(rescore=True, oversampling=storage.oversampling)
    )


def edge_config(layout: VectorLayout) -> EdgeConfig:
    # Quantized copies, float16 and on-disk originals exist only in optimized segments, which
    # Qdrant builds once a segment passes its indexing threshold (~10 MB of vectors): below it,
    # `optimize()` would leave every vector float32 in RAM. A 1 KB threshold makes `finish`
    # build them (and the HNSW index) for collections of any size when storage options are set.
    storage = layout.storage
    optimizers = None if storage == StorageOptions() else EdgeOptimizersConfig(indexing_threshold=1)
    return EdgeConfig(
        optimizers=optimizers,
        vectors={name: vector_params(size, layout.storage) for name, size in layout.dense.items()},
        sparse_vectors={
            name: EdgeSparseVectorParams(modifier=Modifier.Idf if layout.sparse_idf else None)
            for name in layout.sparse
        },
    )


def sparse_vector(vector: SparseVec) -> SparseVector:
    indices, values = vector
    return SparseVector(np.asarray(indices).tolist(), np.asarray(values, dtype=float).tolist())


def nearest(name: str, vector: Any) -> Query:
    if isinstance(vector, tuple):
        return Query.Nearest(sparse_vector(vector), using=name)
    return Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using=name)


SCHEMAS = {"keyword": PayloadSchemaType.Keyword, "integer": PayloadSchemaType.Integer}


def build_filter(query: SearchQuery | PointLookup) -> Filter | None:
    """Every (key, value) of `where` must match exactly (and a lookup's range hold)."""
    between = query.between if isinstance(query, PointLookup) else None
    if not query.where and between is None:
        return None
    must = exact_matches(query.where)
    if between is not None:
        key, low, high = between
        must.append(FieldCondition(key, range=RangeFloat(gte=low, lte=high)))
    return Filter(must=must)


def exact_matches(where: PayloadMatch) -> list[Any]:
    for key, value in where:
        if isinstance(value, bool):
            # The binding (0.9) turns True into the integer 1, which never matches a boolean.
            raise UsageError(
                f'Filter "{key}" matches a boolean, which the embedded store (Qdrant Edge 0.9) '
                "cannot filter on; filter on another field, or search a Qdrant server"
            )
    return [FieldCondition(key, match=MatchValue(value)) for key, value in where]


def build_request(query: SearchQuery, params: SearchParams | None = None) -> QueryRequest:
    """One search: plain nearest for a single vector, prefetch + fusion for several."""
    vectors: list[tuple[str, Any]] = [*query.dense.items(), *query.sparse.items()]
    if not vectors:
        raise StoreError("Search query has no vector (give at least one dense or sparse vector)")
    where = build_filter(query)
    options: dict[str, Any] = {"with_payload": query.with_payload, "filter": where}
    if query.with_vector:
        options["with_vector"] = [name for name, _ in query.dense.items()] or True
    if query.uses_mmr:
        name, vector = vectors[0]
        mmr = Mmr(
            np.asarray(vector, dtype=np.float32).tolist(),
            1.0 - query.diversity,  # the engine's lambda weighs relevance
            max(query.candidates, query.limit),
            using=name,
        )
        return QueryRequest(query.limit, query=mmr, params=params, **options)
    if len(vectors) == 1:
        name, vector = vectors[0]
        return QueryRequest(query.limit, query=nearest(name, vector), params=params, **options)
    fusion: Any = Fusion.Rrf(k=query.rrf_k) if query.fusion == "rrf" else Fusion.Dbsf()
    prefetches = [
        Prefetch(query.prefetch_limit, query=nearest(n, v), filter=where, params=params)
        for n, v in vectors
    ]
    return QueryRequest(query.limit, prefetches=prefetches, query=fusion, **options)


def point_vectors(vector: Any) -> dict[str, Any]:
    """A returned point's dense vectors by name (the unnamed vector is "")."""
    if vector is None:
        return {}
    if isinstance(vector, dict):
        return {name: value for name, value in vector.items() if isinstance(value, list)}
    return {"": vector} if isinstance(vector, list) else {}
