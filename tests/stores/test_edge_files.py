"""The loaded marker's file stats on a real Qdrant Edge shard: what proves a shard unchanged
without opening it, and what any write (in place, through a map, a file added or removed, an
old mtime put back) does to that proof."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from embed_collections.stores import edge_files
from embed_collections.stores.base import PointBatch, VectorLayout
from embed_collections.stores.edge import EdgeStore
from embed_collections.stores.isolated import IsolatedStore
from embed_collections.stores.open import point_id

LAYOUT = VectorLayout({"": 8})


@pytest.fixture
def marked(tmp_path) -> Path:
    """A store whose collection "c" was loaded completely and marked, as a run leaves it."""
    root = tmp_path / "qdrant"
    rng = np.random.default_rng(0)
    ids = [point_id("c", f"chunk-{i}") for i in range(5)]
    batch = PointBatch(ids=ids, dense={"": rng.normal(size=(5, 8)).astype(np.float32)},
                       payloads=[{"text": f"t{i}"} for i in range(5)])  # fmt: skip
    with EdgeStore(root) as store:
        store.check_writable()
        store.ensure_collection("c", LAYOUT)
        store.upsert("c", batch)
        store.finish("c", build_index=False)
        store.mark_loaded("c", "sig", 5, "digest")
    return root


def unchanged(root: Path) -> bool:
    with EdgeStore(root) as store:
        return store.unchanged_since_marked("c")


def biggest_file(root: Path) -> Path:
    return max((p for p in (root / "c").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_a_marked_shard_is_unchanged_and_its_marker_lists_every_file(marked):
    marker = edge_files.read_marker(marked, "c")
    assert marker is not None and marker["count"] == 5 and marker["digest"] == "digest"
    files = {row[0] for row in marker["files"]}
    assert files == {
        str(p.relative_to(marked / "c")) for p in (marked / "c").rglob("*") if p.is_file()
    }
    assert unchanged(marked)
    # the run's process reads the same answer without the store's child
    store = IsolatedStore(marked)
    try:
        assert store.unchanged_since_marked("c")
        assert store.loaded_marker("c") == marker
    finally:
        store.close()


def test_opening_the_shard_counts_as_a_change(marked):
    with EdgeStore(marked) as store:
        assert store.count("c") == 5
    assert not unchanged(marked)


def test_a_write_through_a_memory_map_is_a_change(marked):
    path = biggest_file(marked)
    with path.open("r+b") as handle, mmap.mmap(handle.fileno(), 0) as mapped:
        mapped[0] = (mapped[0] + 1) % 256
    assert not unchanged(marked)


def test_an_old_mtime_put_back_is_still_a_change(marked):
    path = biggest_file(marked)
    info = path.stat()
    with path.open("r+b") as handle:
        handle.write(b"\x01\x02\x03\x04")
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_size == info.st_size and path.stat().st_mtime_ns == info.st_mtime_ns
    assert not unchanged(marked)


def test_a_file_added_or_removed_is_a_change(marked, tmp_path):
    extra = marked / "c" / "segments" / "extra.dat"
    extra.write_bytes(b"x")
    assert not unchanged(marked)
    extra.unlink()
    assert unchanged(marked)  # the same files with the same stats again
    (marked / "c" / "edge_config.json").unlink()
    assert not unchanged(marked)


def test_a_write_clears_the_marker_and_a_marker_without_stats_is_never_trusted(marked):
    with EdgeStore(marked) as store:
        store.clear_loaded("c")
        assert store.loaded_marker("c") is None
        assert not store.unchanged_since_marked("c")
    edge_files.marker_file(marked, "c").write_text('{"signature": "sig", "count": 5}')
    assert not unchanged(marked)


def test_the_clock_has_passed_every_recorded_time_when_the_marker_is_written(marked):
    marker = edge_files.read_marker(marked, "c")
    newest = max(max(row[2], row[3]) for row in marker["files"])
    probe = marked / "c" / "later.dat"
    probe.write_bytes(b"x")  # any write from now on gets a later time than any recorded one
    assert probe.stat().st_mtime_ns > newest
