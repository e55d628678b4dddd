"""`query/live.py` pieces on real files: the server's private copy of the store."""

from __future__ import annotations

import os

from embed_collections.query.live import copy_sparse


def disk_bytes(path) -> int:
    return os.stat(path).st_blocks * 512


def test_a_sparse_file_is_copied_with_its_holes(tmp_path):
    """The embedded store's vector files are 32 MB each and mostly holes: a copy that wrote the
    holes out filled /tmp with gigabytes per served run."""
    source = tmp_path / "chunk_0.mmap"
    with open(source, "wb") as handle:
        handle.truncate(32 << 20)
        handle.seek(5 << 20)
        handle.write(b"vectors" * 1000)
        handle.seek((32 << 20) - 3)
        handle.write(b"end")
    target = tmp_path / "copy.mmap"
    copy_sparse(str(source), str(target))
    assert target.read_bytes() == source.read_bytes()
    assert os.stat(target).st_size == 32 << 20
    assert disk_bytes(target) <= disk_bytes(source) + (1 << 20)  # not 32 MB
    assert os.stat(target).st_mtime_ns == os.stat(source).st_mtime_ns  # as copy2 keeps it


def test_an_empty_and_a_dense_file_are_copied_whole(tmp_path):
    empty, dense = tmp_path / "empty", tmp_path / "dense"
    empty.write_bytes(b"")
    dense.write_bytes(os.urandom(3 << 20))
    for source in (empty, dense):
        target = tmp_path / f"{source.name}.copy"
        copy_sparse(str(source), str(target))
        assert target.read_bytes() == source.read_bytes()
