"""The content-addressed cache: round trips, missing keys, and durability across a kill."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from embed_collections.engine.cache import CacheError, EmbeddingCache, text_digest, write_shard


def test_round_trip_keeps_order_and_exact_values(tmp_path):
    digests = [text_digest(t) for t in ("a", "b", "c")]
    vectors = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        cache.register_model("fp", 5, {"model": "m"})
        cache.put_vectors("fp", digests, vectors, [1, 2, 3])
        assert cache.model_dim("fp") == 5
        back = cache.get_vectors("fp", [digests[2], digests[0], digests[2]], 5)
        assert np.array_equal(back, vectors[[2, 0, 2]])
        assert cache.missing("fp", digests + [text_digest("d")]) == [text_digest("d")]
        assert cache.missing("other-model", digests[:1]) == digests[:1]
        assert cache.token_counts("fp", digests) == dict(zip(digests, [1, 2, 3]))


def test_missing_vector_is_an_error_not_zeros(tmp_path):
    with EmbeddingCache(tmp_path / "c.sqlite") as cache, pytest.raises(CacheError, match="lacks 1"):
        cache.get_vectors("fp", [text_digest("nope")], 4)


def test_committed_batches_survive_kill_and_torn_transaction_is_dropped(tmp_path):
    path = tmp_path / "c.sqlite"
    script = textwrap.dedent(
        f"""
        import os, signal, numpy as np
        from embed_collections.engine.cache import EmbeddingCache, text_digest
        cache = EmbeddingCache(__import__("pathlib").Path({str(path)!r}))
        for batch in range(5):
            digests = [text_digest(f"{{batch}}-{{i}}") for i in range(100)]
            cache.put_vectors("fp", digests, np.full((100, 8), batch, np.float32))
        # a transaction left open when the process dies must never be read back
        cache.db.execute("BEGIN")
        cache.db.execute("INSERT INTO vectors VALUES ('fp', x'00', x'0000', 0)")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert process.returncode == -signal.SIGKILL
    with EmbeddingCache(path) as cache:
        digests = [text_digest(f"{b}-{i}") for b in range(5) for i in range(100)]
        assert cache.missing("fp", digests) == []
        vectors = cache.get_vectors("fp", digests, 8)
        assert vectors[-1, 0] == 4.0
        assert cache.missing("fp", [b"\x00"]) == [b"\x00"]
        assert cache.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


WRITER = """
import sys, numpy as np
from pathlib import Path
from embed_collections.engine.cache import EmbeddingCache
cache = EmbeddingCache(Path(sys.argv[1]))
for batch in range(10_000):
    rng = np.random.default_rng(batch)
    cache.put_vectors("fp", [rng.bytes(32) for _ in range(1024)],
                      rng.normal(size=(1024, 384)).astype(np.float32), [batch] * 1024)
    print(batch, flush=True)
"""


def expected_batch(batch: int) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(batch)
    digests = [rng.bytes(32) for _ in range(1024)]
    return digests, rng.normal(size=(1024, 384)).astype(np.float32)


def test_writer_killed_mid_way_keeps_every_acknowledged_shard_exactly(tmp_path):
    path = tmp_path / "cache" / "embeddings.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    acknowledged = [int(writer.stdout.readline()) for _ in range(8)]
    writer.send_signal(signal.SIGKILL)  # while it writes the next shards
    writer.wait()
    with EmbeddingCache(path) as cache:
        for batch in range(acknowledged[-1] + 3):
            digests, vectors = expected_batch(batch)
            present = set(digests) - set(cache.missing("fp", digests))
            if batch in acknowledged:
                assert present == set(digests)
            # whatever was committed, acknowledged or not, is the exact vector, never a torn one
            kept = [i for i, d in enumerate(digests) if d in present]
            back = cache.get_vectors("fp", [digests[i] for i in kept], 384)
            assert np.array_equal(back, vectors[kept])
            assert set(cache.token_counts("fp", [digests[i] for i in kept]).values()) <= {batch}


class KillAtCommit:
    """A connection that dies at the moment a shard would be committed."""

    def __init__(self, db):
        self.db = db

    def __getattr__(self, name):
        return getattr(self.db, name)

    def execute(self, sql, *args):
        if sql == "COMMIT":
            os.kill(os.getpid(), signal.SIGKILL)
        return self.db.execute(sql, *args)


def test_rows_written_but_not_committed_are_never_read_and_get_overwritten(tmp_path):
    path = tmp_path / "embeddings.sqlite"
    script = textwrap.dedent(
        f"""
        import numpy as np, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_cache import KillAtCommit
        from embed_collections.engine.cache import EmbeddingCache, text_digest
        cache = EmbeddingCache(__import__("pathlib").Path({str(path)!r}))
        cache.put_vectors("fp", [text_digest("kept")], np.ones((1, 4), np.float32))
        cache.db = KillAtCommit(cache.db)
        cache.put_vectors("fp", [text_digest("torn")], np.full((1, 4), 7, np.float32))
        """
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert process.returncode == -signal.SIGKILL, process.stderr
    segment = path.with_suffix(".vectors") / "000001.f32"
    assert segment.stat().st_size == 32  # the torn row reached the file...
    with EmbeddingCache(path) as cache:
        assert cache.missing("fp", [text_digest("torn")]) == [
            text_digest("torn")
        ]  # ...not the index
        cache.put_vectors("fp", [text_digest("next")], np.full((1, 4), 2, np.float32))
        both = cache.get_vectors("fp", [text_digest("kept"), text_digest("next")], 4)
        assert both.tolist() == [[1.0] * 4, [2.0] * 4]
    assert segment.stat().st_size == 32  # the next shard took the torn row's place


def test_bytes_on_disk_stay_near_the_raw_vector_size(tmp_path):
    path = tmp_path / "cache" / "embeddings.sqlite"
    rng = np.random.default_rng(3)
    with EmbeddingCache(path) as cache:
        for _ in range(4):
            cache.put_vectors(
                "fp", [rng.bytes(32) for _ in range(1024)], rng.normal(size=(1024, 384))
            )
    size = sum(p.stat().st_size for p in path.parent.rglob("*") if p.is_file())
    assert size / 4096 <= 1.2 * 384 * 4


def old_layout_cache(path, vectors, digests):
    """A cache as the previous release wrote it: one SQLite row per vector."""
    db = sqlite3.connect(path)
    db.executescript(
        """
        PRAGMA journal_mode=WAL;
        CREATE TABLE models (fingerprint TEXT PRIMARY KEY, dim INTEGER, info TEXT, created REAL);
        CREATE TABLE memo (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE vectors (fingerprint TEXT, digest BLOB, value BLOB, tokens INTEGER,
            PRIMARY KEY (fingerprint, digest)) WITHOUT ROWID;
        """
    )
    db.execute("INSERT INTO models VALUES ('fp', 64, '{}', 0)")
    rows = [("fp", d, v.tobytes(), i) for i, (d, v) in enumerate(zip(digests, vectors))]
    rows += [("unregistered", d, v.tobytes(), 1) for d, v in zip(digests[:2], vectors)]
    rows.append(("sparse", digests[0], b"\x01\x02\x03", 0))
    db.executemany("INSERT INTO vectors VALUES (?, ?, ?, ?)", rows)
    db.commit()
    db.close()


def test_an_old_cache_is_upgraded_in_place_with_a_message(tmp_path, caplog):
    path = tmp_path / "embeddings.sqlite"
    digests = [text_digest(str(i)) for i in range(5000)]
    vectors = np.random.default_rng(4).normal(size=(5000, 64)).astype(np.float32)
    old_layout_cache(path, vectors, digests)
    old_size = path.stat().st_size
    with caplog.at_level("WARNING"), EmbeddingCache(path) as cache:
        assert "old layout" in caplog.text and "5000 vectors moved" in caplog.text
        assert np.array_equal(cache.get_vectors("fp", digests[::-1], 64), vectors[::-1])
        assert cache.token_counts("fp", digests[:3]) == dict(zip(digests[:3], [0, 1, 2]))
        # a model the old cache never registered is still read, from its rows
        assert np.array_equal(cache.get_vectors("unregistered", digests[:2], 64), vectors[:2])
        assert cache.get_many("sparse", digests[:1]) == [b"\x01\x02\x03"]
        assert cache.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 3
    assert path.stat().st_size < old_size / 2  # the moved rows' pages were given back
    caplog.clear()
    with caplog.at_level("WARNING"), EmbeddingCache(path):
        assert caplog.text == ""  # upgraded once


def test_two_writer_processes_share_one_cache(tmp_path):
    path = tmp_path / "embeddings.sqlite"
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from pathlib import Path
        from embed_collections.engine.cache import EmbeddingCache, text_digest
        me = sys.argv[2]
        with EmbeddingCache(Path(sys.argv[1])) as cache:
            for batch in range(20):
                keys = [text_digest(f"{me}-{batch}-{i}") for i in range(64)]
                cache.put_vectors("fp", keys, np.full((64, 8), batch + (me == "b") * 100.0))
        """
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, str(path), me]) for me in ("a", "b")]
    assert [w.wait() for w in writers] == [0, 0]
    with EmbeddingCache(path) as cache:
        for me, shift in (("a", 0), ("b", 100)):
            keys = [text_digest(f"{me}-{b}-{i}") for b in range(20) for i in range(64)]
            back = cache.get_vectors("fp", keys, 8)
            assert np.array_equal(back[:, 0], np.repeat(np.arange(20) + shift, 64))


def test_a_worker_shard_is_indexed_in_place_and_non_finite_rows_are_left_out(tmp_path):
    path = tmp_path / "cache" / "embeddings.sqlite"
    digests = [text_digest(str(i)) for i in range(6)]
    vectors = np.random.default_rng(5).normal(size=(6, 16)).astype(np.float32)
    vectors[2] = np.nan
    with EmbeddingCache(path) as cache:
        folder = cache.shard_dir("fp")
        write_shard(folder, "s1", digests, vectors, [7] * 6)
        rows_inode = (folder / "s1.f32").stat().st_ino
        assert cache.adopt_shard("fp", folder / "s1.json") == 5
        assert list(folder.iterdir()) == []  # adopted: nothing left to re-read
        segment = path.with_suffix(".vectors") / "000001.f32"
        assert segment.stat().st_ino == rows_inode  # renamed, not copied
        keep = [0, 1, 3, 4, 5]
        back = cache.get_vectors("fp", [digests[i] for i in keep], 16)
        assert np.array_equal(back, vectors[keep])
        assert cache.missing("fp", digests) == [digests[2]]
        # later shards appended by the driver land after the adopted rows
        cache.put_vectors("fp", [text_digest("x")], np.ones((1, 16), np.float32))
        assert np.array_equal(cache.get_vectors("fp", digests[:1], 16), vectors[:1])


def test_shards_finished_before_the_driver_died_are_indexed_on_the_next_run(tmp_path):
    path = tmp_path / "embeddings.sqlite"
    vectors = np.arange(32, dtype=np.float32).reshape(4, 8)
    digests = [text_digest(str(i)) for i in range(4)]
    with EmbeddingCache(path) as cache:
        folder = cache.shard_dir("fp")
    write_shard(folder, "a", digests[:2], vectors[:2], [1, 2])
    write_shard(folder, "b", digests[2:], vectors[2:], [3, 4])
    (folder / "b.f32").unlink()  # lost to a kill mid-adoption: embedded again, not an error
    (folder / ".c.f32.tmp").write_bytes(b"\x00" * 7)  # a worker killed mid-write
    with EmbeddingCache(path) as cache:
        assert cache.adopt_finished_shards("fp") == 2
        assert cache.missing("fp", digests) == digests[2:]
        assert np.array_equal(cache.get_vectors("fp", digests[:2], 8), vectors[:2])
        assert cache.token_counts("fp", digests[:2]) == dict(zip(digests[:2], [1, 2]))
        assert sorted(p.name for p in folder.iterdir()) == [".c.f32.tmp"]
