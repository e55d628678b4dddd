"""Payload filters and returned vectors in both stores (Qdrant Edge and qdrant-client's local
mode): the filter applies inside the engine, to plain and fused (prefetch) searches alike."""

from __future__ import annotations

import numpy as np
import pytest

from embed_collections.errors import UsageError
from embed_collections.stores.base import PointBatch, SearchQuery, VectorLayout
from embed_collections.stores.edge import EdgeStore
from embed_collections.stores.open import point_id
from embed_collections.stores.server import ServerStore

LAYOUT = VectorLayout(dense={"a": 8, "b": 4}, sparse=("bm25",))


@pytest.fixture(scope="module", params=["edge", "local"])
def store(request, tmp_path_factory):
    """One filled collection per store, shared by the module's searches (they only read)."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    made = EdgeStore(tmp_path / "edge") if request.param == "edge" else None
    made = made if made is not None else ServerStore(path=tmp_path / "local")
    rng = np.random.default_rng(0)
    n = 30
    made.ensure_collection("c", LAYOUT)
    made.upsert(
        "c",
        PointBatch(
            ids=[point_id("c", str(i)) for i in range(n)],
            dense={
                name: rng.normal(size=(n, size)).astype(np.float32)
                for name, size in LAYOUT.dense.items()
            },  # fmt: skip
            payloads=[
                {"source_file": f"f{i % 3}.md", "metadata": {"page": i % 5, "draft": i % 2 == 0}}
                for i in range(n)
            ],
            sparse={"bm25": [([1, 2 + i % 4], [1.0, 0.5]) for i in range(n)]},
        ),
    )
    yield made
    made.close()


def query(**options) -> SearchQuery:
    rng = np.random.default_rng(1)
    dense = {"a": rng.normal(size=8).astype(np.float32), "b": rng.normal(size=4)}
    return SearchQuery(dense=dense, sparse={"bm25": ([1], [1.0])}, limit=20, **options)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ((("source_file", "f1.md"),), 10),
        ((("metadata.page", 3),), 6),
        ((("metadata.draft", False), ("source_file", "f0.md")), 5),
        ((("source_file", "missing.md"),), 0),
    ],
)
def test_filters_apply_inside_fused_searches(store, where, expected):
    if isinstance(store, EdgeStore) and any(isinstance(v, bool) for _, v in where):
        with pytest.raises(UsageError, match="cannot filter on"):
            store.search("c", [query(where=where)])
        return
    hits = store.search("c", [query(where=where)])[0]
    assert len(hits) == expected
    for hit in hits:
        for key, value in where:
            found = hit.payload
            for part in key.split("."):
                found = found[part]
            assert found == value


def test_vectors_come_back_only_when_asked(store):
    plain = store.search("c", [query()])[0]
    assert all(hit.vectors == {} for hit in plain)
    hits = store.search("c", [query(with_vector=True)])[0]
    assert {len(v) for hit in hits for v in hit.vectors.values()} == {8, 4}
    assert all(set(hit.vectors) == {"a", "b"} for hit in hits)
