"""The content-addressed cache: round trips, missing keys, and durability across a kill."""

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from embed_collections.engine.cache import CacheError, EmbeddingCache, text_digest


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
