"""The second stage on 2 CPU cores: `search` latency with a cross-encoder reranking the first
stage's top 20 and top 50, beside the first stage alone, and `serve` throughput with a reranker
at 1, 8 and 32 clients (beside the same server with `--rerank` off).

No cross-encoder weights ship in any package here (users' machines reach the hub), so the
reranker is a random one of MiniLM-L6's shape (6 layers x 384, 12 heads, 512 positions, as
cross-encoder/ms-marco-MiniLM-L6-v2): its scores are noise, its cost is the real model's. The
first stage is the packaged all-MiniLM-L6-v2 with BM25 (hybrid) over the corpus slice (see
common.py; `--quick`: five small collections). Configurations are interleaved query by query,
repeat by repeat; latency is the whole `Collections.search` call (query embedding, store,
reranking), models loaded once.

    python bench/rerank_bench.py --quick          # harness check
    python bench/rerank_bench.py --repeats 3      # the numbers in bench/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import DEFAULT_CORPUS, MINILM, WORK, machine, now, slice_collections
from serve_bench import QUERIES, Server, load


def cross_encoder() -> Path:
    from embed_collections.engine.models.tiny_kinds import build_tiny_cross_encoder

    folder = WORK / "models" / "ce-minilm-l6-shape"
    if not (folder / "config.json").exists():
        build_tiny_cross_encoder(folder, hidden_size=384, layers=6, heads=12, seed=11)
    return folder


def build_run(corpus: Path, names: list[str], out: Path) -> Path:
    import embed_collections as ec

    if not (out / "run_config.json").exists():
        ec.run(
            corpus, out, models=[MINILM], sparse="bm25", collections=names, device="cpu",
            quiet=True, lease_dir=str(out.parent / "leases"),
        )  # fmt: skip
    return out


def gemm_gflops() -> float:
    """The machine's float32 matrix rate now (torch, 2,048 x 384 x 1,536), to read ms against."""
    import torch

    a, b = torch.randn(2048, 384), torch.randn(384, 1536)
    torch.mm(a, b)
    started, rounds = time.perf_counter(), 20
    for _ in range(rounds):
        torch.mm(a, b)
    return 2 * 2048 * 384 * 1536 * rounds / (time.perf_counter() - started) / 1e9


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def latency(out: Path, reranker_dir: Path, repeats: int, target: str) -> dict[str, dict]:
    """ms per `search` call for each configuration, interleaved."""
    import embed_collections as ec
    from embed_collections.engine import create_reranker

    full = create_reranker(str(reranker_dir)).load("cpu")
    short = create_reranker(str(reranker_dir), max_length=256).load("cpu")
    configs = {
        "first stage": (None, 0),
        "rerank top 20": (full, 20),
        "rerank top 50": (full, 50),
        "rerank top 20, pairs cut at 256 tokens": (short, 20),
        "rerank top 50, pairs cut at 256 tokens": (short, 50),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    scored: dict[str, list[float]] = {name: [] for name in configs}
    with ec.open(out) as opened:
        opened.encoder.load()
        for query in QUERIES[:2]:  # warm-up
            opened.search(query, target, 10, rerank=full, rerank_top_n=20)
        for _ in range(repeats):
            for query in QUERIES:
                for name, (reranker, top_n) in configs.items():
                    started = time.perf_counter()
                    hits = opened.search(
                        query, target, 10, rerank=reranker or False, rerank_top_n=top_n or 50
                    )
                    times[name].append(1000 * (time.perf_counter() - started))
                    scored[name].append(len(hits))
        pairs = [(QUERIES[0], hit.text) for hit in opened.search(QUERIES[0], target, 50)]
    tokens = full.token_counts(pairs)
    return {
        name: {
            "p50_ms": round(statistics.median(values), 1),
            "p90_ms": round(percentile(values, 0.9), 1),
            "searches": len(values),
            "pair_tokens_mean": round(sum(tokens) / len(tokens), 1) if tokens else None,
        }
        for name, values in times.items()
    }


def throughput(out: Path, reranker_dir: Path, per_client: int, target: str) -> list[dict]:
    rows = []
    servers = {
        "rerank off": Server(out),
        "rerank top 20": Server(out, args=["--rerank", str(reranker_dir), "--rerank-top-n", "20"]),
    }
    try:
        for clients in (1, 8, 32):
            for label, server in servers.items():
                count = max(2, per_client // max(1, clients // 4))
                result = load(server, "hybrid", clients, count, target)
                rows.append({"server": label, "clients": clients, **result})
                print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        for server in servers.values():
            server.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-client", type=int, default=16)
    parser.add_argument("--no-serve", action="store_true")
    args = parser.parse_args()
    names = slice_collections(args.corpus, args.quick)
    out = build_run(args.corpus, names, WORK / ("rerank-quick" if args.quick else "rerank"))
    reranker_dir = cross_encoder()
    target = "Docling" if "Docling" in names else names[0]
    report = {
        "date": now(),
        "machine": machine(),
        "load_average_start": os.getloadavg()[0],
        "collections": len(names),
        "target": target,
        "gemm_gflops_start": round(gemm_gflops(), 1),
        "latency": latency(out, reranker_dir, 1 if args.quick else args.repeats, target),
        "gemm_gflops_end": round(gemm_gflops(), 1),
    }
    if not args.no_serve:
        report["serve"] = throughput(
            out, reranker_dir, 4 if args.quick else args.per_client, target
        )
    report["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
