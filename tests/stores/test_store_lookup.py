"""Payload lookups, payload indexes and MMR on both stores: Qdrant Edge and qdrant-client (its
local mode, the same client code a server gets)."""

from __future__ import annotations

import numpy as np
import pytest

from embed_collections.stores.base import (
    LOOKUP_INDEXES,
    PointBatch,
    PointLookup,
    SearchQuery,
    VectorLayout,
)
from embed_collections.stores.edge import EdgeStore
from embed_collections.stores.isolated import IsolatedStore
from embed_collections.stores.server import ServerStore

VECTORS = np.array([[1, 0, 0], [0.99, 0.01, 0], [0.7, 0.7, 0], [0, 0, 1]], dtype=np.float32)
IDS = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(1, 5)]
QUERY = {"": np.array([1, -0.05, 0], dtype=np.float32)}


@pytest.fixture(params=["edge", "isolated", "client"])
def store(request, tmp_path):
    kinds = {"edge": EdgeStore, "isolated": IsolatedStore}
    opened = (
        ServerStore(path=tmp_path / "local")
        if request.param == "client"
        else kinds[request.param](tmp_path / "store")
    )
    opened.ensure_collection("c", VectorLayout(dense={"": 3}))
    payloads = [
        {"n": i, "doc_id": "a" if i < 3 else "b", "position": i, "chunk_id": f"c{i}"}
        for i in range(4)
    ]
    opened.upsert("c", PointBatch(IDS, {"": VECTORS}, payloads))
    yield opened
    opened.close()


def test_lookup_matches_payload_and_ranges(store):
    found = store.lookup("c", PointLookup(where=(("doc_id", "a"),), between=("position", 1, 5)))
    assert sorted(hit.payload["n"] for hit in found) == [1, 2]
    assert [h.payload["n"] for h in store.lookup("c", PointLookup((("chunk_id", "c3"),)))] == [3]
    assert len(store.lookup("c", PointLookup(limit=3))) == 3
    assert store.lookup("c", PointLookup((("chunk_id", "nope"),))) == []


def test_retrieve_finds_points_by_id_and_skips_missing_ones(store):
    found = store.retrieve("c", [IDS[2], "00000000-0000-0000-0000-000000000099"])
    assert [hit.payload["n"] for hit in found] == [2]


def test_mmr_keeps_the_best_hit_and_skips_its_near_duplicate(store):
    nearest = store.search("c", [SearchQuery(dense=QUERY, limit=2)])[0]
    diverse = store.search("c", [SearchQuery(dense=QUERY, limit=2, diversity=0.9)])[0]
    assert [hit.payload["n"] for hit in nearest] == [0, 1]
    assert diverse[0].payload["n"] == 0 and diverse[1].payload["n"] != 1


def test_payload_indexes_are_created_where_the_store_has_them(store):
    store.index_payload("c")
    store.index_payload("c")  # again: nothing is missing
    if isinstance(store, ServerStore):  # local mode keeps no payload indexes
        assert store.payload_indexes("c") == set()
    else:
        assert store.payload_indexes("c") == set(LOOKUP_INDEXES)
