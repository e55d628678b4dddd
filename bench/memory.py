"""Peak memory of `embed-collections run` as the corpus grows: it must stay flat.

Synthetic corpora of 10k, 100k and 1M short chunks (1,000 per collection) are embedded with a tiny
random model (so the model is not the cost) into the embedded store without building the index.

    python bench/memory.py                  # 10k, 100k, 1M (about 30 minutes on 2 cores)
    python bench/memory.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time

from common import WORK, machine, now, run_timed, tiny_model

WORDS = [
    "qdrant",
    "vector",
    "index",
    "payload",
    "collection",
    "shard",
    "segment",
    "embedding",
    "model",
    "token",
    "batch",
    "query",
    "search",
    "filter",
    "point",
    "cosine",
    "docling",
    "converter",
    "pipeline",
    "markdown",
    "table",
    "figure",
    "layout",
    "api",
    "server",
    "client",
    "request",
    "response",
    "schema",
    "field",
    "async",
    "await",
    "function",
    "parameter",
    "default",
]


def write_corpus(root, chunks: int, per_collection: int = 1000, per_file: int = 100) -> None:
    """Random short texts; a tenth of them repeat, as navigation text does in real documentation."""
    rng = random.Random(chunks)
    shutil.rmtree(root, ignore_errors=True)
    for start in range(0, chunks, per_file):
        collection = root / f"group{start // 100_000:02d}" / f"c{start // per_collection:05d}"
        collection.mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(start, min(chunks, start + per_file)):
            if i % 10 == 0:
                text = "Navigation: Home | Docs | API reference | Changelog"
            else:
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
            records.append({"text": text, "metadata": {"chunk_id": f"chunk-{i}"}})
        (collection / f"f{start:08d}_chunks.json").write_text(json.dumps(records))


def measure(size: int, model) -> dict:
    """Wall time and peak RSS of one `run` over a fresh synthetic corpus of `size` chunks."""
    corpus = WORK / f"memory-corpus-{size}"
    out = WORK / f"memory-out-{size}"
    write_corpus(corpus, size)
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable, "-m", "embed_collections", "run", "-q", "--no-index",
        "--chunked-dir", str(corpus), "--output-dir", str(out), "--lease-dir", str(out / "l"),
        "--device", "cpu", "--models", str(model), "--max-seq-length", "64", "--batch-size", "256",
        "--wave-size", "50000",  # the size section 5 measured (auto would take ~1.4 M here)
    ]  # fmt: skip
    seconds, peak = run_timed(command)
    shutil.rmtree(corpus, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return {"chunks": size, "seconds": round(seconds, 1), "peak_rss_mb": peak // 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    model = tiny_model(32)
    # A model's first run exports it for the CPU runtime and checks it against torch once:
    # warm that up so every size measures the steady state.
    measure(1000, model)
    rows = []
    for size in args.sizes:
        rows.append(measure(size, model))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nMachine: {machine()}; date {now()}\n")
    print("| chunks | wall seconds | peak RSS (MB) |\n|---|---|---|")
    for row in rows:
        print(f"| {row['chunks']:,} | {row['seconds']} | {row['peak_rss_mb']} |")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (WORK / f"memory-{stamp}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
