"""11. The embedding cache: vectors/s through `EmbeddingCache.put_vectors` and bytes per vector.

Writes N random 384-d float32 vectors in shards of 1,024 (the shard size the executors use) into
a fresh cache, and reports the write rate, the bytes the cache's files take per vector (every
file under the cache folder, SQLite's WAL included after a close) against the 1,536 raw bytes, and
the read-back rate of `get_vectors` in shards of 1,024. Median of interleaved repeats.

    python bench/cache_bench.py [--vectors 20480] [--repeats 3] [--dim 384]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from embed_collections.engine.cache import EmbeddingCache

SHARD = 1024


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under the folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(count: int, dim: int, seed: int) -> dict[str, float]:
    """One fresh cache: write `count` vectors in shards, close, size it, read them back."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    digests = [rng.bytes(32) for _ in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache" / "embeddings.sqlite"
        with EmbeddingCache(path) as cache:
            cache.register_model("fp", dim, {})
            start = time.perf_counter()
            for at in range(0, count, SHARD):
                cache.put_vectors(
                    "fp", digests[at : at + SHARD], vectors[at : at + SHARD], [100] * SHARD
                )
            wrote = time.perf_counter() - start
        size = folder_bytes(path.parent)
        with EmbeddingCache(path) as cache:
            start = time.perf_counter()
            for at in range(0, count, SHARD):
                back = cache.get_vectors("fp", digests[at : at + SHARD], dim)
                assert np.array_equal(back, vectors[at : at + SHARD])
            read = time.perf_counter() - start
    return {
        "write_vectors_per_s": count / wrote,
        "read_vectors_per_s": count / read,
        "bytes_per_vector": size / count,
        "ratio_to_raw": size / count / (dim * 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=20480)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    runs = [measure(args.vectors, args.dim, seed) for seed in range(args.repeats)]
    result = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    result["repeats"] = [{k: round(v, 2) for k, v in r.items()} for r in runs]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
