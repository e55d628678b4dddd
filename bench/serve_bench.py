"""`embed-collections serve` under load: latency p50/p99 and queries/s at 1, 8 and 32 concurrent
clients, dense and hybrid, one model and a two-model ensemble; beside it plain `search` (the
Python API, models loaded per call, and the CLI as a whole process) and what an
mcp-server-qdrant user has (fastembed-style query embedding, one Qdrant query).

Stores: `run` over the corpus slice (see common.py; `--whole` for the whole corpus) with BM25,
once with the packaged MiniLM and once with MiniLM + a static model (MiniLM's own input token
embeddings as a sentence-transformers StaticEmbedding, `tiny_model.build_static_model`),
sharing one embedding cache. The server runs as its own process (`serve --port 0`); clients are
asyncio + httpx in this process, each sending its next query when the last one is answered.
Every request searches every collection ("collections": "all", top_k 10).

fastembed-style: fastembed itself is not installed here (it would replace the environment's
huggingface_hub); its query path is reproduced with what it runs: onnxruntime on the project's
own ONNX export of MiniLM, the model's tokenizer (truncation 256), mean pooling, normalisation,
then one Qdrant Edge query per collection, in one process, one client.

    python bench/serve_bench.py --quick      # 5 small collections, short rounds (harness check)
    python bench/serve_bench.py              # the slice, 2 interleaved repeats
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_CORPUS, MINILM, WORK, bench_env, machine, now, slice_collections

QUERIES = [
    "How do I convert a PDF to markdown?",
    "create a collection with cosine distance",
    "payload filter on a keyword field",
    "how to install with pip",
    "snapshot and restore a collection",
    "table structure recognition",
    "quantization to reduce memory",
    "OCR for scanned documents",
    "hybrid search with sparse vectors",
    "upload points in batches",
    "configure HNSW parameters",
    "export a document to JSON",
    "what is the default port of the server?",
    "delete points by filter",
    "run the pipeline on a GPU",
    "distributed deployment with shards and replicas",
]
CLIENTS = (1, 8, 32)


def build_stores(corpus: Path, names: list[str] | None, root: Path) -> dict[str, Path]:
    """The two runs (one model, two-model ensemble), made once and reused."""
    import numpy as np

    import embed_collections as ec
    from embed_collections.engine.models import resolve_model
    from embed_collections.engine.tiny_model import build_static_model

    static = root / "minilm-static"
    if not (static / "modules.json").exists():
        from safetensors.numpy import load_file

        weights = load_file(str(Path(resolve_model(MINILM).path) / "model.safetensors"))
        key = next(k for k in weights if k.endswith("word_embeddings.weight"))
        build_static_model(static, np.asarray(weights[key], dtype=np.float32))
    runs = {"minilm": [MINILM], "minilm+static": [MINILM, str(static)]}
    outs = {}
    for label, models in runs.items():
        out = root / f"run-{label}"
        if not (out / "run_config.json").exists():
            started = time.perf_counter()
            ec.run(
                corpus,
                out,
                models=models,
                collections=names,
                sparse="bm25",
                cache_dir=str(root / "cache"),
                lease_dir=str(root / "leases"),
                device="cpu",
                quiet=True,
            )
            print(f"built {label} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        outs[label] = out
    return outs


class Server:
    """`embed-collections serve --port 0` as a child process."""

    def __init__(self, out: Path) -> None:
        command = [sys.executable, "-c", "from embed_collections.cli.main import main; main()"]
        args = ["serve", "--output-dir", str(out), "--port", "0", "-q"]
        self.process = subprocess.Popen(
            command + args, env=bench_env(), stdout=subprocess.PIPE, text=True
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if "http://" not in line:
            self.process.kill()
            raise SystemExit(f"serve did not start: {line!r}")
        self.url = line.split(" on ", 1)[1].split()[0]

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


async def load(url: str, mode: str, clients: int, per_client: int, target: str = "all") -> dict:
    """`clients` concurrent clients, each sending `per_client` queries back to back."""
    import httpx

    latencies: list[float] = []
    errors = 0

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in range(per_client):
            query = QUERIES[(index * 7 + i) % len(QUERIES)]
            body = {"query": query, "mode": mode, "collections": target}
            started = time.perf_counter()
            answer = await http.post(url + "/search", json=body)
            latencies.append(time.perf_counter() - started)
            errors += answer.status_code != 200

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(min(clients, 4))))  # warm-up
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "qps": len(latencies) / wall,
        "requests": len(latencies),
        "errors": errors,
    }


def plain_api(out: Path, mode: str, count: int) -> dict:
    """Today's `search` through the Python API: models loaded for each query (one client)."""
    import embed_collections as ec

    latencies = []
    with ec.open(out) as opened:
        for i in range(count + 1):
            started = time.perf_counter()
            opened.search(QUERIES[i % len(QUERIES)], None, 10, mode)
            latencies.append(time.perf_counter() - started)
    latencies = sorted(latencies[1:])
    return {"p50_ms": 1000 * statistics.median(latencies), "requests": len(latencies)}


def plain_cli(out: Path, mode: str, count: int) -> dict:
    """`embed-collections search all QUERY` as a whole process per query."""
    latencies = []
    command = [sys.executable, "-c", "from embed_collections.cli.main import main; main()"]
    for i in range(count):
        args = ["search", "all", QUERIES[i], "--output-dir", str(out), "--mode", mode, "-q"]
        started = time.perf_counter()
        subprocess.run(command + args, env=bench_env(), check=True, capture_output=True)
        latencies.append(time.perf_counter() - started)
    return {"p50_ms": 1000 * statistics.median(latencies), "requests": count}


def fastembed_style(out: Path, count: int) -> dict:
    """One MiniLM through onnxruntime as fastembed runs it, then a Qdrant query per collection."""
    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer

    from embed_collections.engine.models import resolve_model
    from embed_collections.engine.runtimes import ensure_exported
    from embed_collections.stores.base import SearchQuery
    from embed_collections.stores.edge import EdgeStore

    spec = resolve_model(MINILM)
    export = ensure_exported(spec, "onnx")
    session = onnxruntime.InferenceSession(
        str(export / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    inputs = [i.name for i in session.get_inputs()]
    tokenizer = Tokenizer.from_file(str(Path(spec.path) / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.no_padding()
    store = EdgeStore(out / "qdrant")
    names = store.collections()
    latencies = []
    try:
        for i in range(count + 1):
            started = time.perf_counter()
            encoding = tokenizer.encode(QUERIES[i % len(QUERIES)])
            feeds = {
                "input_ids": np.array([encoding.ids], dtype=np.int64),
                "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
            }
            hidden = session.run(None, {k: v for k, v in feeds.items() if k in inputs})[0]
            vector = hidden[0].mean(axis=0)
            vector /= np.linalg.norm(vector)
            for name in names:
                store.search(name, [SearchQuery(dense={"": vector}, limit=10)])
            latencies.append(time.perf_counter() - started)
    finally:
        store.close()
    latencies = sorted(latencies[1:])
    return {"p50_ms": 1000 * statistics.median(latencies), "requests": len(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--whole", action="store_true", help="the whole corpus, not the slice")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--per-client", type=int, default=0, help="queries per client [auto]")
    parser.add_argument(
        "--target", default="all", help='collections each request searches ["all"], e.g. Docling'
    )
    parser.add_argument("--only", help="one store label: minilm or minilm+static")
    parser.add_argument("--no-baselines", action="store_true")
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    names = None if args.whole else slice_collections(args.corpus, args.quick)
    root = WORK / "serve" / ("whole" if args.whole else "quick" if args.quick else "slice")
    root.mkdir(parents=True, exist_ok=True)
    outs = build_stores(args.corpus, names, root)
    if args.only:
        outs = {args.only: outs[args.only]}
    repeats = 1 if args.quick else args.repeats
    rounds: dict[str, list[dict]] = {}
    for repeat in range(repeats):
        for label in outs if repeat % 2 == 0 else reversed(list(outs)):
            server = Server(outs[label])
            try:
                for mode in ("dense", "hybrid"):
                    for clients in CLIENTS:
                        per_client = args.per_client or (
                            4 if args.quick else max(4, 240 // clients if clients > 1 else 60)
                        )
                        result = asyncio.run(
                            load(server.url, mode, clients, per_client, args.target)
                        )
                        key = f"{label}|{mode}|{clients}"
                        rounds.setdefault(key, []).append(result)
                        print(key, json.dumps(result), file=sys.stderr)
            finally:
                server.close()
    served = {
        key: {
            name: statistics.median(r[name] for r in results)
            for name in ("p50_ms", "p99_ms", "qps")
        }
        | {"errors": sum(r["errors"] for r in results)}
        for key, results in rounds.items()
    }
    count = 3 if args.quick else 8
    baselines = {}
    if not args.no_baselines:
        minilm = root / "run-minilm"
        baselines = {
            "api-per-call|dense": plain_api(minilm, "dense", count),
            "api-per-call|hybrid": plain_api(minilm, "hybrid", count),
            "cli-process|dense": plain_cli(minilm, "dense", min(count, 4)),
            "fastembed-style|dense": fastembed_style(minilm, count * 4),
        }
    for key, value in baselines.items():
        print(key, json.dumps(value), file=sys.stderr)
    report = {
        "date": now(),
        "machine": machine(),
        "load_average": os.getloadavg(),
        "collections": len(names) if names else "all",
        "target": args.target,
        "repeats": repeats,
        "served": served,
        "baselines": baselines,
    }
    path = root / f"serve_bench-{args.target}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
