"""The store interface every sink implements, and the plain records that cross it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from embed_collections.errors import UsageError

SparseVec = tuple[list[int], list[float]]
"""A sparse vector as (indices, values)."""

PayloadMatch = tuple[tuple[str, "str | int | bool"], ...]
"""Payload filter: every (key, value) must match exactly (`source_file`, `metadata.lang`, ...)."""

DOCUMENT_FIELD = "doc_id"
POSITION_FIELD = "position"  # the chunk's place in its document: chunk_index, else record order
SECTION_FIELD = "section"  # the chunk's section path joined with " > " ("" outside any section)
LOOKUP_INDEXES = {DOCUMENT_FIELD: "keyword"}
"""The payload fields `read` looks points up by, indexed in the store (Qdrant payload indexes).

A chunk is found by its point id (`retrieve`), its neighbours and section among its document's
points, which the `doc_id` index finds; `position` and `section` are checked on those few. Each
index costs every open Qdrant Edge shard about 5 MB of mapped files whatever its size (an
integer index on `position` another 6 MB, with no gain at documentation's document sizes)."""


QUANTIZATIONS = ("none", "int8", "binary", "binary-1.5bit", "binary-2bit")
VECTOR_DTYPES = ("float32", "float16")
BITS_PER_DIMENSION = {"int8": 8.0, "binary": 1.0, "binary-1.5bit": 1.5, "binary-2bit": 2.0}


@dataclass(frozen=True)
class StorageOptions:
    """How a collection keeps its dense vectors.

    `quantization` other than "none" keeps a quantized copy in RAM and the original vectors on
    disk; searches score the quantized copy for `oversampling` x the hits asked for, then rescore
    those with the originals. `vector_dtype` is the originals' type; `on_disk` keeps the
    originals memory-mapped instead of in RAM (implied by quantization).
    """

    quantization: str = "none"
    vector_dtype: str = "float32"
    on_disk: bool = False
    oversampling: float = 3.0

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise UsageError(
                f'Unknown --quantization "{self.quantization}"; choose one of '
                + ", ".join(QUANTIZATIONS)
            )
        if self.vector_dtype not in VECTOR_DTYPES:
            raise UsageError(
                f'Unknown --vector-dtype "{self.vector_dtype}"; choose one of '
                + ", ".join(VECTOR_DTYPES)
            )
        if not self.oversampling >= 1.0:
            raise UsageError(f"--oversampling {self.oversampling} must be at least 1.0")
        if self.quantization != "none" and not self.on_disk:
            object.__setattr__(self, "on_disk", True)  # the point of quantizing: originals off RAM

    @property
    def quantized(self) -> bool:
        return self.quantization != "none"

    def describe(self) -> str:
        """`int8 quantized, float32 on disk, oversampling 3`; "" for the default."""
        if self == StorageOptions():
            return ""
        where = "on disk" if self.on_disk else "in RAM"
        quantized = f"{self.quantization} quantized, " if self.quantized else ""
        rescore = f", oversampling {self.oversampling:g}" if self.quantized else ""
        return f"{quantized}{self.vector_dtype} {where}{rescore}"

    def ram_bytes(self, dim: int) -> float:
        """Bytes of RAM one vector of `dim` dimensions needs (index and payload aside)."""
        quantized = dim * BITS_PER_DIMENSION[self.quantization] / 8 if self.quantized else 0.0
        return quantized + (0.0 if self.on_disk else self.original_bytes(dim))

    def original_bytes(self, dim: int) -> float:
        return dim * (2 if self.vector_dtype == "float16" else 4)

    def to_json(self) -> dict[str, Any]:
        return {
            "quantization": self.quantization,
            "vector_dtype": self.vector_dtype,
            "on_disk": self.on_disk,
            "oversampling": self.oversampling,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> StorageOptions:
        return cls(**(data or {}))


@dataclass(frozen=True)
class VectorLayout:
    """What a collection stores per point: named dense vectors (size each) and sparse vectors.

    The single unnamed dense vector of `concat`/`average` mode is the name "". All dense vectors
    use cosine distance; sparse vectors use Qdrant's IDF modifier unless `sparse_idf` is off
    (a learned sparse model weighs its own terms).
    """

    dense: dict[str, int]
    sparse: tuple[str, ...] = ()
    storage: StorageOptions = field(default_factory=StorageOptions)
    sparse_idf: bool = True

    def describe(self) -> str:
        """Human-readable form used in error messages: `dense{"": 80}, sparse[bm25]`."""
        dense = ", ".join(f'"{name}": {size}' for name, size in sorted(self.dense.items()))
        sparse = ", ".join(self.sparse)
        storage = self.storage.describe()
        sparse += "" if self.sparse_idf or not self.sparse else " without IDF"
        return f"dense{{{dense}}}, sparse[{sparse}]" + (f", {storage}" if storage else "")

    def matches(self, other: VectorLayout | None) -> bool:
        """True when points of one layout fit a collection of the other (sparse order aside)."""
        if other is None:
            return False
        return (
            self.dense == other.dense
            and sorted(self.sparse) == sorted(other.sparse)
            and self.storage == other.storage
            and self.sparse_idf == other.sparse_idf
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"dense": dict(self.dense), "sparse": list(self.sparse)}
        if self.storage != StorageOptions():
            data["storage"] = self.storage.to_json()
        if not self.sparse_idf:
            data["sparse_idf"] = False
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VectorLayout:
        dense = {name: int(size) for name, size in data["dense"].items()}
        storage = StorageOptions.from_json(data.get("storage"))
        idf = bool(data.get("sparse_idf", True))
        return cls(dense=dense, sparse=tuple(data["sparse"]), storage=storage, sparse_idf=idf)


@dataclass
class PointBatch:
    """Rows of points to upsert; every list and array is aligned with `ids`.

    `dense` maps vector name -> float32 array (N x size); `sparse` maps name -> N sparse vectors.
    """

    ids: list[str]
    dense: dict[str, np.ndarray]
    payloads: list[dict[str, Any]]
    sparse: dict[str, list[SparseVec]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def slice(self, start: int, stop: int) -> PointBatch:
        """The rows start..stop, for splitting a batch into upload requests."""
        return PointBatch(
            ids=self.ids[start:stop],
            dense={name: array[start:stop] for name, array in self.dense.items()},
            payloads=self.payloads[start:stop],
            sparse={name: rows[start:stop] for name, rows in self.sparse.items()},
        )


@dataclass(frozen=True)
class StoreScan:
    """A collection read back point by point: its ids, a digest of everything it holds (ids,
    vectors, payloads, in the store's id order) and the points whose dense vectors are unusable
    (not finite, or all zero). `kept` holds the dense vectors of the ids a caller asked for."""

    ids: frozenset[str]
    digest: str
    unusable: tuple[str, ...]
    kept: dict[str, dict[str, np.ndarray]]


class ScanDigest:
    """Builds a `StoreScan` page by page from what a scroll returns, in the store's order."""

    def __init__(self, dense_names: list[str], keep: frozenset[str] = frozenset()) -> None:
        self.names = sorted(dense_names)
        self.keep = keep
        self.hash = hashlib.sha256()
        self.ids: set[str] = set()
        self.unusable: list[str] = []
        self.kept: dict[str, dict[str, np.ndarray]] = {}

    def add_page(
        self,
        ids: list[str],
        dense: dict[str, list[list[float]]],
        sparse: list[Any],
        payloads: list[Any],
    ) -> None:
        """One page: ids, dense rows by vector name, sparse vectors and payloads, aligned."""
        if not ids:
            return
        self.ids.update(ids)
        self.hash.update("\n".join(ids).encode())
        bad = np.zeros(len(ids), dtype=bool)
        for name in self.names:
            rows = np.asarray(dense[name], dtype=np.float32)
            with np.errstate(all="ignore"):
                finite = np.isfinite(rows).all(axis=1)
                bad |= ~finite | ~np.any(rows != 0, axis=1)
            self.hash.update(name.encode() + b"\0" + rows.tobytes())
            for i, point in enumerate(ids):
                if point in self.keep:
                    self.kept.setdefault(point, {})[name] = rows[i]
        self.unusable.extend(point for point, flag in zip(ids, bad) if flag)
        self.hash.update(json.dumps([sparse, payloads], sort_keys=True, default=str).encode())

    def result(self) -> StoreScan:
        return StoreScan(
            frozenset(self.ids), self.hash.hexdigest(), tuple(self.unusable), self.kept
        )


@dataclass(frozen=True)
class SearchQuery:
    """One query: one vector searches plainly; several are prefetched and fused (RRF or DBSF)."""

    dense: dict[str, np.ndarray] = field(default_factory=dict)
    sparse: dict[str, SparseVec] = field(default_factory=dict)
    limit: int = 10
    fusion: Literal["rrf", "dbsf"] = "rrf"
    rrf_k: int = 60
    prefetch_limit: int = 100
    with_payload: bool = True
    where: PayloadMatch = ()  # applied by the store (and to every prefetch), not afterwards
    with_vector: bool = False
    diversity: float = 0.0  # MMR: 0 ranks by relevance only, 1 by difference from hits above
    candidates: int = 100  # MMR: how many nearest points the diverse hits are chosen from

    @property
    def uses_mmr(self) -> bool:
        """Whether the store's own MMR answers this query (one dense vector, diversity > 0)."""
        return self.diversity > 0 and len(self.dense) == 1 and not self.sparse


@dataclass(frozen=True)
class PointLookup:
    """Points found by their payload, not by a vector: every (key, value) of `where` matches
    exactly and, with `between` = (field, low, high), the integer field lies in low..high."""

    where: PayloadMatch = ()
    between: tuple[str, int, int] | None = None
    limit: int = 1000


@dataclass(frozen=True)
class Hit:
    """One search result (`vectors`: its dense vectors by name, when asked for)."""

    id: str
    score: float
    payload: dict[str, Any]
    vectors: dict[str, Any] = field(default_factory=dict)


class Store(Protocol):
    """A Qdrant-like sink; collections are created, filled, pruned, counted and searched."""

    location: str

    def check_writable(self) -> None:
        """Fail fast (StoreError) when the store is unreachable or read-only (run preflight)."""

    def layout(self, collection: str) -> VectorLayout | None:
        """The existing collection's layout, or None when it does not exist."""

    def ensure_collection(
        self, collection: str, layout: VectorLayout, recreate: bool = False
    ) -> None:
        """Create the collection, or check it matches `layout` (StoreError naming both if not)."""

    def drop(self, collection: str) -> None:
        """Delete the collection, also one too damaged to open (never one in use)."""

    def loaded_marker(self, collection: str) -> dict[str, Any] | None:
        """{"signature", "count"} of the last complete load, or None (no marker, or a write
        since: every write clears it)."""

    def mark_loaded(self, collection: str, signature: str, count: int, digest: str = "") -> None:
        """Record that the collection now holds exactly `count` points made from `signature`,
        whose content has the `StoreScan.digest` `digest`."""

    def clear_loaded(self, collection: str) -> None:
        """Remove the marker (done by every write before it writes)."""

    def unchanged_since_marked(self, collection: str) -> bool:
        """True only when the store can prove, without reading the points, that nothing was
        written since `mark_loaded` (the embedded store compares its files' stats)."""

    def upsert(self, collection: str, batch: PointBatch) -> None:
        """Insert or overwrite points by id."""

    def point_ids(self, collection: str) -> set[str]:
        """Every point id in the collection (as canonical UUID strings)."""

    def scan(self, collection: str, keep: frozenset[str] = frozenset()) -> StoreScan:
        """Read every point back (vectors and payloads): ShardDamagedError when that fails."""

    def delete(self, collection: str, ids: list[str]) -> None:
        """Delete points by id."""

    def count(self, collection: str) -> int:
        """Exact number of points."""

    def search(self, collection: str, queries: list[SearchQuery]) -> list[list[Hit]]:
        """Run queries (batched where the backend can) and return hits per query."""

    def lookup(self, collection: str, lookup: PointLookup) -> list[Hit]:
        """The points whose payload matches `lookup` (score 0, payload only), in no set order."""

    def retrieve(self, collection: str, ids: list[str]) -> list[Hit]:
        """The points with these ids that exist (score 0, payload only)."""

    def index_payload(self, collection: str) -> None:
        """Create the payload indexes of `LOOKUP_INDEXES` that the collection lacks."""

    def payload_indexes(self, collection: str) -> set[str]:
        """The payload fields the collection has an index on."""

    def finish(self, collection: str, build_index: bool = True) -> None:
        """Make the collection durable and searchable (flush, build the index once) and release
        what holding it open costs; later calls reopen it."""

    def collections(self) -> list[str]:
        """Names of the collections in the store."""

    def close(self) -> None:
        """Release files, locks and connections."""
