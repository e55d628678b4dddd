"""`embed-collections serve` under load: latency p50/p99 and queries/s at 1, 8 and 32 concurrent
clients, dense and hybrid, one model and a two-model ensemble; beside it plain `search` (the
Python API, models loaded per call, and the CLI as a whole process) and what an
mcp-server-qdrant user has (fastembed-style query embedding, one Qdrant query).

Stores: `run` over the corpus slice (see common.py; `--whole` for the whole corpus) with BM25,
once with the packaged MiniLM and once with MiniLM + a static model (MiniLM's own input token
embeddings as a sentence-transformers StaticEmbedding, `tiny_model.build_static_model`),
sharing one embedding cache (`--collections A,B`: a store of only those). The server runs as its
own process (`serve --port 0`); the clients run in another (`bench/http_load.py`: kept-alive
connections on raw asyncio streams, each client sending its next query when the last one is
answered), so they do not share the server's interpreter; each round reports the CPU seconds the
server and the clients used. Every request searches every collection ("collections": "all",
top_k 10) unless `--target` names some. Rounds of every server are interleaved, repeat by repeat;
`--compare-src DIR` adds a server running another source tree (e.g. an earlier commit's `src`,
from `git archive COMMIT src | tar -x -C DIR`) to compare before and after on the same load. The
served top-10 of every query are checked against `open(...).search`.

fastembed-style: fastembed itself is not installed here (it would replace the environment's
huggingface_hub); its query path is reproduced with what it runs: onnxruntime on the project's
own ONNX export of MiniLM, the model's tokenizer (truncation 256), mean pooling, normalisation,
then one Qdrant Edge query per collection, in one process, one client.

    python bench/serve_bench.py --quick      # 5 small collections, short rounds (harness check)
    python bench/serve_bench.py              # the slice, 2 interleaved repeats
    python bench/serve_bench.py --collections Docling --target Docling --only minilm \
        --no-baselines --repeats 5 --compare-src /tmp/before/src    # one collection, before/after
"""

from __future__ import annotations

import argparse
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


def build_stores(
    corpus: Path, names: list[str] | None, root: Path, only: str | None = None
) -> dict[str, Path]:
    """The two runs (one model, two-model ensemble; `only`: one of them), made once and reused."""
    import numpy as np

    import embed_collections as ec
    from embed_collections.engine.models.resolve import resolve_model
    from embed_collections.engine.models.tiny import build_static_model

    static = root / "minilm-static"
    if not (static / "modules.json").exists():
        from safetensors.numpy import load_file

        weights = load_file(str(Path(resolve_model(MINILM).path) / "model.safetensors"))
        key = next(k for k in weights if k.endswith("word_embeddings.weight"))
        build_static_model(static, np.asarray(weights[key], dtype=np.float32))
    runs = {"minilm": [MINILM], "minilm+static": [MINILM, str(static)]}
    runs = {label: models for label, models in runs.items() if only in (None, label)}
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
    """`embed-collections serve --port 0` as a child process (`src`: the source tree it runs)."""

    def __init__(
        self,
        out: Path,
        src: Path | None = None,
        args: list[str] | None = None,
        blocked: list[str] | None = None,
    ) -> None:
        """`blocked`: modules the server must not find (the environment before they were
        installed), shadowed by modules that raise ImportError."""
        command = [sys.executable, "-c", "from embed_collections.cli.main import main; main()"]
        command += ["serve", "--output-dir", str(out), "--port", "0", "-q", *(args or [])]
        env = bench_env()
        paths = [str(src)] if src is not None else []
        if blocked:
            shadow = out.parent / "blocked-imports"
            shadow.mkdir(exist_ok=True)
            for name in blocked:
                (shadow / f"{name}.py").write_text(f"raise ImportError('{name} blocked')\n")
            paths.insert(0, str(shadow))
        if paths:
            env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if "http://" not in line:
            self.process.kill()
            raise SystemExit(f"serve did not start: {line!r}")
        self.url = line.split(" on ", 1)[1].split()[0]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def load(server: Server, mode: str, clients: int, per_client: int, target: str = "all") -> dict:
    """`clients` concurrent clients in their own process, each sending `per_client` queries back
    to back; with the server's CPU seconds per query and the clients' CPU seconds."""
    command = [sys.executable, str(Path(__file__).parent / "http_load.py"), "--url", server.url]
    command += ["--clients", str(clients), "--per-client", str(per_client)]
    for query in QUERIES:
        command += ["--body", json.dumps({"query": query, "mode": mode, "collections": target})]
    before = server.cpu_seconds()
    done = subprocess.run(command, env=bench_env(), capture_output=True, text=True, check=True)
    used = server.cpu_seconds() - before
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["server_cpu_ms_per_query"] = 1000 * used / result["requests"]
    result["server_cores"] = used / result["wall_s"]
    result["load_average"] = os.getloadavg()[0]
    return result


def served_top10(url: str, out: Path, target: str) -> dict:
    """Whether the server's top-10 chunk ids equal `open(...).search` for every query and mode."""
    import httpx

    import embed_collections as ec

    same = differ = 0
    with ec.open(out) as opened, httpx.Client(base_url=url, timeout=120) as http:
        opened.encoder.load()
        try:
            for mode in ("dense", "hybrid"):
                for query in QUERIES:
                    body = {"query": query, "mode": mode, "collections": target, "top_k": 10}
                    served = [h["chunk_id"] for h in http.post("/search", json=body).json()["hits"]]
                    direct = [h.chunk_id for h in opened.search(query, target, 10, mode)]
                    same, differ = same + (served == direct), differ + (served != direct)
        finally:
            opened.encoder.unload()
    return {"identical": same, "different": differ}


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

    from embed_collections.engine.backends.export import ensure_exported
    from embed_collections.engine.models.resolve import resolve_model
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
    parser.add_argument("--collections", help="comma-separated collections to build stores of")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--per-client", type=int, default=0, help="queries per client [auto]")
    parser.add_argument("--clients", default="1,8,32", help="client counts [1,8,32]")
    parser.add_argument("--modes", default="dense,hybrid", help="modes [dense,hybrid]")
    parser.add_argument(
        "--target", default="all", help='collections each request searches ["all"], e.g. Docling'
    )
    parser.add_argument("--only", help="one store label: minilm or minilm+static")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--compare-src", type=Path, help="also serve this source tree (before)")
    parser.add_argument(
        "--compare-block",
        default="",
        help="modules hidden from the --compare-src server, e.g. uvloop,httptools",
    )
    parser.add_argument(
        "--serve-args", default="", help='extra `serve` options, e.g. "--threads 2"'
    )
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.collections:
        names = args.collections.split(",")
        root = WORK / "serve" / "-".join(names)
    else:
        names = None if args.whole else slice_collections(args.corpus, args.quick)
        root = WORK / "serve" / ("whole" if args.whole else "quick" if args.quick else "slice")
    root.mkdir(parents=True, exist_ok=True)
    outs = build_stores(args.corpus, names, root, args.only)
    repeats = 1 if args.quick else args.repeats
    clients_list = [int(c) for c in args.clients.split(",")]
    modes = args.modes.split(",")
    servers: dict[str, Server] = {}
    rounds: dict[str, list[dict]] = {}
    checks = {}
    try:
        for label, out in outs.items():
            servers[label] = Server(out, args=args.serve_args.split())
            if args.compare_src:
                blocked = [name for name in args.compare_block.split(",") if name]
                servers[f"{label}|before"] = Server(out, args.compare_src, blocked=blocked)
        for label, server in servers.items():  # warm-up, and the answers checked
            load(server, modes[0], 4, 3, args.target)
            checks[label] = served_top10(server.url, outs[label.split("|")[0]], args.target)
            print(label, "top-10 against search:", checks[label], file=sys.stderr)
        for repeat in range(repeats):
            order = list(servers) if repeat % 2 == 0 else list(reversed(servers))
            for mode in modes:
                for clients in clients_list:
                    for label in order:
                        per_client = args.per_client or (
                            4 if args.quick else max(4, 240 // clients if clients > 1 else 60)
                        )
                        result = load(servers[label], mode, clients, per_client, args.target)
                        key = f"{label}|{mode}|{clients}"
                        rounds.setdefault(key, []).append(result)
                        print(key, json.dumps(result), file=sys.stderr)
    finally:
        for server in servers.values():
            server.close()
    measures = ("p50_ms", "p99_ms", "qps", "server_cpu_ms_per_query", "server_cores")
    served = {
        key: {name: statistics.median(r[name] for r in results) for name in measures}
        | {
            "qps_runs": [round(r["qps"], 1) for r in results],
            "client_cpu_s": statistics.median(r["client_cpu_s"] for r in results),
            "load_average": [round(r["load_average"], 1) for r in results],
            "errors": sum(r["errors"] for r in results),
        }
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
        "top10_against_search": checks,
        "served": served,
        "baselines": baselines,
    }
    path = root / f"serve_bench-{args.target}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
