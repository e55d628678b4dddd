"""Both stores against real engines: Qdrant Edge and qdrant-client's local mode, in tmp_path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import unused_port

from embed_collections.errors import StoreError, UsageError
from embed_collections.stores.base import PointBatch, SearchQuery, VectorLayout
from embed_collections.stores.edge import EdgeStore
from embed_collections.stores.open import open_store, point_id
from embed_collections.stores.server import ServerStore

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(params=["edge", "local"])
def store(request, tmp_path):
    """Each store on a fresh folder: the embedded engine, and qdrant-client's local mode."""
    made = EdgeStore(tmp_path / "edge") if request.param == "edge" else None
    made = made if made is not None else ServerStore(path=tmp_path / "local")
    yield made
    made.close()


def make_batch(n: int, dims: dict[str, int], seed: int = 0, sparse: bool = False) -> PointBatch:
    """n points with random unit vectors, payloads with nested unicode metadata, optional bm25."""
    rng = np.random.default_rng(seed)
    dense = {name: rng.normal(size=(n, d)).astype(np.float32) for name, d in dims.items()}
    batch = PointBatch(
        ids=[point_id("c", f"chunk-{i}") for i in range(n)],
        dense=dense,
        payloads=[
            {"text": f"chunk {i} — naïve café ✓", "metadata": {"chunk_id": f"chunk-{i}", "n": i}}
            for i in range(n)
        ],
    )
    if sparse:
        batch.sparse["bm25"] = [([i, 1000 + i % 7], [1.0, 0.5]) for i in range(n)]
    return batch


def test_upsert_count_search_payload(store):
    store.check_writable()
    store.ensure_collection("c", VectorLayout(dense={"": 16}))
    batch = make_batch(300, {"": 16})
    store.upsert("c", batch)
    store.finish("c")
    assert store.count("c") == 300
    assert store.layout("c") == VectorLayout(dense={"": 16})
    assert store.collections() == ["c"]
    queries = [SearchQuery(dense={"": batch.dense[""][i]}, limit=3) for i in (0, 7, 299)]
    results = store.search("c", queries)
    for i, hits in zip((0, 7, 299), results, strict=True):
        assert hits[0].id == batch.ids[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].payload == batch.payloads[i]
    assert store.layout("missing") is None


def test_named_and_sparse_vectors_fuse(store):
    layout = VectorLayout(dense={"a": 32, "b": 48}, sparse=("bm25",))
    store.ensure_collection("c", layout)
    batch = make_batch(200, {"a": 32, "b": 48}, sparse=True)
    store.upsert("c", batch)
    store.finish("c")
    target = 42
    vectors = {"a": batch.dense["a"][target], "b": batch.dense["b"][target]}
    query_sparse = {"bm25": ([target], [1.0])}
    rrf = SearchQuery(dense=vectors, sparse=query_sparse, limit=5, fusion="rrf", rrf_k=10)
    dbsf = SearchQuery(dense=vectors, sparse=query_sparse, limit=5, fusion="dbsf")
    default_k = SearchQuery(dense=vectors, sparse=query_sparse, limit=5)
    only_b = SearchQuery(dense={"b": vectors["b"]}, limit=1, with_payload=False)
    only_sparse = SearchQuery(sparse=query_sparse, limit=1)
    results = store.search("c", [rrf, dbsf, default_k, only_b, only_sparse])
    assert [hits[0].id for hits in results] == [batch.ids[target]] * 5
    assert len(results[0]) == 5
    assert results[3][0].payload == {}
    assert store.layout("c") == layout


def test_reupsert_delete_and_point_ids(store):
    store.ensure_collection("c", VectorLayout(dense={"": 8}))
    batch = make_batch(50, {"": 8})
    store.upsert("c", batch)
    store.upsert("c", make_batch(50, {"": 8}, seed=1))
    assert store.count("c") == 50
    store.scroll_page = 7  # force several scroll pages
    assert store.point_ids("c") == set(batch.ids)
    store.delete("c", batch.ids[:10])
    assert store.count("c") == 40
    assert store.point_ids("c") == set(batch.ids[10:])


def test_layout_mismatch_and_recreate(store):
    store.ensure_collection("c", VectorLayout(dense={"": 32}))
    store.upsert("c", make_batch(5, {"": 32}))
    store.ensure_collection("c", VectorLayout(dense={"": 32}))  # same layout: kept
    assert store.count("c") == 5
    wanted = VectorLayout(dense={"": 80}, sparse=("bm25",))
    with pytest.raises(StoreError) as caught:
        store.ensure_collection("c", wanted)
    message = str(caught.value)
    assert 'Collection "c" exists with dense{"": 32}, sparse[]' in message
    assert 'needs dense{"": 80}, sparse[bm25]' in message
    assert "--recreate" in message
    store.ensure_collection("c", wanted, recreate=True)
    assert store.count("c") == 0
    assert store.layout("c") == wanted


def test_edge_survives_close_and_reopen(tmp_path):
    batch = make_batch(20, {"": 8})
    with EdgeStore(tmp_path) as first:
        first.ensure_collection("c", VectorLayout(dense={"": 8}))
        first.upsert("c", batch)
    with EdgeStore(tmp_path) as second:
        assert second.collections() == ["c"]
        assert second.count("c") == 20
        assert second.point_ids("c") == set(batch.ids)
        second.ensure_collection("c", VectorLayout(dense={"": 8}))
    # A shard whose layout sidecar was lost is checked by the engine and adopted, data kept.
    (tmp_path / "c.layout.json").unlink()
    with EdgeStore(tmp_path) as third:
        assert third.layout("c") is None
        with pytest.raises(StoreError, match="--recreate"):
            third.ensure_collection("c", VectorLayout(dense={"": 9}))
        third.ensure_collection("c", VectorLayout(dense={"": 8}))
        assert third.layout("c") == VectorLayout(dense={"": 8})
        assert third.count("c") == 20


def run_child(code: str) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh interpreter that imports the package from src/."""
    preamble = f"import sys; sys.path.insert(0, {SRC!r})\n"
    return subprocess.run(
        [sys.executable, "-c", preamble + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_edge_second_process_gets_in_use_error(tmp_path):
    with EdgeStore(tmp_path) as holder:
        holder.ensure_collection("c", VectorLayout(dense={"": 8}))
        child = run_child(
            f"""
            from pathlib import Path
            from embed_collections.errors import StoreError
            from embed_collections.stores.base import VectorLayout
            from embed_collections.stores.edge import EdgeStore
            try:
                EdgeStore(Path({str(tmp_path)!r})).ensure_collection("c", VectorLayout({{"": 8}}))
            except StoreError as exc:
                print(exc)
                raise SystemExit(3)
            """
        )
    assert child.returncode == 3, child.stderr
    assert child.stdout.strip() == (
        f"Qdrant store {tmp_path / 'c'} is in use by another process "
        "(close it or use another --qdrant-path)"
    )


def test_edge_sigkill_after_upsert_loses_nothing(tmp_path):
    child = run_child(
        f"""
        import os, signal
        from pathlib import Path
        import numpy as np
        from embed_collections.stores.base import PointBatch, VectorLayout
        from embed_collections.stores.edge import EdgeStore
        from embed_collections.stores.open import point_id
        store = EdgeStore(Path({str(tmp_path)!r}))
        store.ensure_collection("c", VectorLayout({{"": 8}}, ("bm25",)))
        ids = [point_id("c", str(i)) for i in range(3000)]
        dense = {{"": np.ones((3000, 8), dtype=np.float32)}}
        sparse = {{"bm25": [([i], [1.0]) for i in range(3000)]}}
        store.upsert("c", PointBatch(ids, dense, [{{"i": i}} for i in range(3000)], sparse))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert child.returncode == -9, child.stderr
    with EdgeStore(tmp_path) as store:
        assert store.count("c") == 3000
        assert store.point_ids("c") == {point_id("c", str(i)) for i in range(3000)}
        hits = store.search("c", [SearchQuery(sparse={"bm25": ([17], [1.0])}, limit=1)])
        assert hits[0][0].payload == {"i": 17}


def test_edge_check_writable_names_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="is not writable") as caught:
        EdgeStore(blocker / "store").check_writable()
    assert str(blocker / "store") in str(caught.value)


def test_server_unreachable_fails_fast():
    with unused_port() as port, pytest.raises(StoreError) as caught:
        url = f"http://127.0.0.1:{port}"
        ServerStore(url=url).check_writable()
    message = str(caught.value)
    assert message.startswith(f"Cannot reach Qdrant at {url}: ")
    assert "omit it to use the embedded store" in message
    assert "\n" not in message


def test_server_upsert_retries_then_reports(monkeypatch):
    monkeypatch.setattr("embed_collections.stores.server.time.sleep", lambda s: None)
    with unused_port() as port:
        store = ServerStore(url=f"http://127.0.0.1:{port}", max_retries=2, parallel=2)
        store.batch_size = 4
        with pytest.raises(StoreError, match=r"failed after 3 attempt\(s\)"):
            store.upsert("c", make_batch(10, {"": 4}))


def test_open_store_picks_by_url(tmp_path):
    assert isinstance(open_store(None, tmp_path), EdgeStore)
    server = open_store("http://127.0.0.1:1", tmp_path, api_key="k", batch_size=64)
    assert isinstance(server, ServerStore)
    assert server.batch_size == 64
    with pytest.raises(UsageError):
        open_store(None, None)


def test_point_id_is_stable_uuid_per_collection():
    first = point_id("Docling", "a_chunks-0001")
    assert first == point_id("Docling", "a_chunks-0001")
    assert first == str(uuid.UUID(first))
    assert first == "adfc3c63-59f4-555a-b776-e4698ddf9081"  # pinned: a change re-ids every point
    assert first != point_id("Other", "a_chunks-0001")
    assert first != point_id("Docling", "a_chunks-0002")
