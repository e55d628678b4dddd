"""`embed-collections run` against what users would pick instead, as whole child processes on the
same texts, into the same kind of store, interleaved repeats, plus this machine's fp32 GEMM rate
measured in the same run and the share of it each process reaches (model FLOPs counted from the
real token counts).

Peers (each one child process, model loaded once, every chunk of every collection embedded):
- ours:           `embed-collections run` with default settings and the packaged MiniLM;
- fastembed:      `TextEmbedding` with the project's own ONNX export registered as a custom model
                  (mean pooling, normalized), the folder's stock tokenizer_config (truncation at
                  model_max_length 512), documented defaults (batch 256, parallel None);
- fastembed-256:  the same with tokenizer_config's model_max_length set to the model's
                  max_seq_length (256), so it computes the same vectors as the others;
- st:             plain `SentenceTransformer(...).encode(texts)` (batch 32, torch);
- original:       the original script's schedule (bench/original_schedule.py): reload per
                  collection;
- on CUDA only:   fastembed-gpu (`cuda=True`, needs the fastembed-gpu package) and st-fp16.
Peers write into Qdrant Edge (qdrant-edge-py, one shard per collection, HNSW built), as ours does;
`--peer-store local` uses qdrant-client local mode with `upload_points` instead.

    pip install -e ".[bench]"              # fastembed: never in the default install
    python bench/peers.py --quick          # three small collections, 1 repeat (< 3 min)
    python bench/peers.py --collections Docling --repeats 3
    python bench/peers.py --repeats 1      # the whole corpus
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_CORPUS, MINILM, WORK, bench_env, machine, median, now

CPU_PEERS = ("ours", "fastembed", "fastembed-256", "st", "original")
GPU_PEERS = ("ours-cuda", "fastembed-gpu", "st-fp16")
GEMM_TOKENS = 32 * 256  # one batch of 32 texts at max_seq_length: the engine's CPU batch
FASTEMBED_NAME = "embed-collections/all-MiniLM-L6-v2-onnx"


# --------------------------------------------------------------------------------------------
# children: each runs in its own process; the parent measures it from outside


def chunk_texts(corpus: Path, names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """(chunk_id, text) per collection, in file order: what a hand-written script would embed."""
    from embed_collections.corpus.chunks import load_collection
    from embed_collections.corpus.discovery import discover_collections

    found = discover_collections(corpus)
    return {n: [(c.chunk_id, c.text) for c in load_collection(n, found[n]).chunks] for n in names}


class PeerStore:
    """What a user script does with its vectors: one collection per chunk collection."""

    def __init__(self, kind: str, root: Path, dim: int) -> None:
        self.kind, self.root, self.dim = kind, root, dim
        if kind == "local":
            from qdrant_client import QdrantClient

            self.client = QdrantClient(path=str(root))

    def write(self, name: str, rows: list[tuple[str, str]], vectors) -> None:
        """Create the collection, upload the points with their text, build the index (Edge)."""
        if self.kind == "local":
            from qdrant_client import models

            self.client.recreate_collection(
                name, vectors_config=models.VectorParams(size=self.dim, distance="Cosine")
            )
            points = (
                models.PointStruct(id=i, vector=v.tolist(), payload={"text": t, "chunk_id": c})
                for i, ((c, t), v) in enumerate(zip(rows, vectors))
            )
            self.client.upload_points(name, points)
            return
        from qdrant_edge import (
            Distance,
            EdgeConfig,
            EdgeShard,
            EdgeVectorParams,
            Point,
            UpdateOperation,
        )

        config = EdgeConfig(vectors={"": EdgeVectorParams(self.dim, Distance.Cosine)})
        shard = EdgeShard.create(str(self.root / name), config)
        listed = vectors.tolist()
        for start in range(0, len(rows), 1024):
            points = [
                Point(i, {"": listed[i]}, {"text": rows[i][1], "chunk_id": rows[i][0]})
                for i in range(start, min(start + 1024, len(rows)))
            ]
            shard.update(UpdateOperation.upsert_points(points))
        shard.flush()
        shard.optimize()
        shard.close()

    def close(self) -> None:
        """Release the store."""
        if self.kind == "local":
            self.client.close()


def child_peer(args: argparse.Namespace) -> None:
    """One peer as its users would write it: load once, embed each collection, store it."""
    import numpy as np

    started = time.perf_counter()
    by_collection = chunk_texts(args.corpus, args.collections)
    if args.child.startswith("fastembed"):
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        TextEmbedding.add_custom_model(
            model=FASTEMBED_NAME,
            pooling=PoolingType.MEAN,
            normalization=True,
            sources=ModelSource(hf=FASTEMBED_NAME),  # never fetched: specific_model_path wins
            dim=384,
            model_file="model.onnx",
        )
        model = TextEmbedding(
            FASTEMBED_NAME,
            specific_model_path=str(args.model),
            cuda=args.child == "fastembed-gpu",  # not AUTO: the CPU peer stays on the CPU
        )

        def embed(texts: list[str]):
            return np.stack(list(model.embed(texts)))  # defaults: batch_size 256, parallel None

    else:
        import torch
        from sentence_transformers import SentenceTransformer

        if args.child == "st-fp16":
            model = SentenceTransformer(
                str(args.model), device="cuda", model_kwargs={"torch_dtype": torch.float16}
            )
        else:
            model = SentenceTransformer(str(args.model), device="cpu")

        def embed(texts: list[str]):
            return np.asarray(model.encode(texts), dtype=np.float32)  # default batch 32

    loaded = time.perf_counter()
    spent = {"load": loaded - started, "embed": 0.0, "store": 0.0, "texts": 0}
    args.store.mkdir(parents=True, exist_ok=True)
    store = PeerStore(args.peer_store, args.store, 384)
    for name, rows in by_collection.items():
        t = time.perf_counter()
        vectors = embed([text for _, text in rows])
        spent["embed"] += time.perf_counter() - t
        spent["texts"] += len(rows)
        t = time.perf_counter()
        store.write(name, rows, vectors)
        spent["store"] += time.perf_counter() - t
    store.close()
    print(json.dumps(spent))


def child_gemm(args: argparse.Namespace) -> None:
    """fp32 GEMM GFLOP/s at the model's shapes (one batch of tokens), best of several, per
    library; torch on CUDA too when present."""
    import numpy as np
    import torch

    config = json.loads((Path(args.model) / "config.json").read_text())
    h, inner = config["hidden_size"], config["intermediate_size"]
    shapes = [(GEMM_TOKENS, h, h), (GEMM_TOKENS, h, inner), (GEMM_TOKENS, inner, h)]
    rng = np.random.default_rng(0)
    rates: dict[str, float] = {}

    def best(run, m: int, k: int, n: int, reps: int = 3, clock=time.perf_counter) -> float:
        run()  # warm
        times = []
        for _ in range(reps):
            t = clock()
            run()
            times.append(clock() - t)
        return 2 * m * k * n / max(min(times), 1e-9) / 1e9

    def measure(lib: str, clock) -> float:
        flops = seconds = 0.0
        for m, k, n in shapes:
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((k, n), dtype=np.float32)
            if lib == "torch":
                ta, tb = torch.from_numpy(a), torch.from_numpy(b)
                rate = best(lambda ta=ta, tb=tb: torch.matmul(ta, tb), m, k, n, clock=clock)
            else:
                rate = best(lambda a=a, b=b: a @ b, m, k, n, clock=clock)
            flops += 2 * m * k * n
            seconds += 2 * m * k * n / rate  # weighted by each shape's share of the model
        return flops / seconds

    for lib in ("numpy", "torch"):
        rates[lib] = measure(lib, time.perf_counter)  # all cores, per wall second
    # One thread per CPU second: the per-core rate, which other processes on a shared machine
    # disturb far less than the wall-clock rate.
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        for lib in ("numpy", "torch"):
            rates[f"{lib}-1-thread-cpu"] = measure(lib, time.process_time)
    if torch.cuda.is_available():
        for dtype in (torch.float32, torch.float16):
            m, k, n = GEMM_TOKENS * 4, h, inner
            a = torch.randn(m, k, device="cuda", dtype=dtype)
            b = torch.randn(k, n, device="cuda", dtype=dtype)

            def run(a=a, b=b):
                torch.matmul(a, b)
                torch.cuda.synchronize()

            rates[f"cuda-{str(dtype).split('.')[-1]}"] = best(run, m, k, n, reps=20)
    print(json.dumps(rates))


# --------------------------------------------------------------------------------------------
# parent


def run_measured(command: list[str]) -> dict:
    """Wall, CPU (user+sys) seconds and peak RSS of a child, measured by a wrapper process."""
    wrapper = (
        "import resource, subprocess, sys, time, json;"
        "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE,"
        " text=True); s = time.perf_counter() - t;"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(json.dumps([s, p.returncode, u.ru_utime + u.ru_stime, u.ru_maxrss, p.stdout]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *command],
        env=bench_env(),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    wall, code, cpu, rss_kb, stdout = json.loads(out.stdout.strip().splitlines()[-1])
    if code != 0:
        raise SystemExit(f"benchmark command failed with exit code {code}: {' '.join(command)}")
    lines = [x for x in stdout.strip().splitlines() if x.startswith("{")]
    inner = json.loads(lines[-1]) if lines else {}
    return {"wall": wall, "cpu": cpu, "rss": rss_kb * 1024, "inner": inner}


def ours_command(corpus: Path, names: list[str] | None, out: Path, device: str) -> list[str]:
    """`embed-collections run` with default settings but the packaged MiniLM as the only model."""
    command = [
        sys.executable, "-m", "embed_collections", "run", "-q", "--chunked-dir", str(corpus),
        "--output-dir", str(out), "--lease-dir", str(out / "leases"), "--device", device,
        "--models", MINILM,
    ]  # fmt: skip
    return command + (["--collections", *names] if names else [])


def peer_command(
    peer: str, corpus: Path, names: list[str], model: Path, store: Path, peer_store: str
) -> list[str]:
    """This script in child mode for one peer."""
    child = "fastembed" if peer == "fastembed-256" else peer
    return [
        sys.executable, str(Path(__file__).resolve()), "--child", child, "--corpus", str(corpus),
        "--model", str(model), "--store", str(store), "--peer-store", peer_store,
        "--collections", *names,
    ]  # fmt: skip


def original_command(corpus: Path, names: list[str], store: Path) -> list[str]:
    """bench/original_schedule.py with the packaged MiniLM only."""
    script = Path(__file__).with_name("original_schedule.py")
    return [
        sys.executable, str(script), "--corpus", str(corpus), "--store", str(store),
        "--collections", *names, "--models", MINILM,
    ]  # fmt: skip


def fastembed_folder(export: Path, model: Path, max_length: int | None) -> Path:
    """A folder fastembed loads as a custom model: the project's ONNX export and the model's
    tokenizer files; `max_length` overrides tokenizer_config's model_max_length (fastembed's
    truncation)."""
    folder = WORK / "peers" / f"fastembed-{max_length or 'stock'}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "model.onnx").symlink_to(export / "model.onnx")
    for name in ("tokenizer.json", "config.json", "special_tokens_map.json"):
        shutil.copy2(model / name, folder / name)
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    if max_length:
        tokenizer_config["model_max_length"] = max_length
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


def model_flops(model: Path, texts: list[str], max_length: int) -> tuple[float, int]:
    """Forward FLOPs of the encoder over `texts` at their real token counts (truncated at
    `max_length`, special tokens included, no padding) and the token total: per layer and token
    8h^2 (Q, K, V, output projections) + 4h*i (MLP) + 4n*h (scores and weighted sum)."""
    from tokenizers import Tokenizer

    config = json.loads((model / "config.json").read_text())
    h, inner = config["hidden_size"], config["intermediate_size"]
    layers = config["num_hidden_layers"]
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    counts = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    flops = sum(layers * n * (8 * h * h + 4 * h * inner + 4 * n * h) for n in counts)
    return float(flops), sum(counts)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (asked in a child, so this process stays light)."""
    probe = "import torch; print(torch.cuda.is_available())"
    out = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True)
    return out.stdout.strip() == "True"


def fastembed_gpu_available() -> bool:
    """Whether onnxruntime has the CUDA provider (the fastembed-gpu package)."""
    probe = "import onnxruntime as o; print('CUDAExecutionProvider' in o.get_available_providers())"
    out = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True)
    return out.stdout.strip() == "True"


def bench(args: argparse.Namespace, save: Path) -> dict:
    """Set up once (export, folders, a warm-up run), then the interleaved repeats; the raw data
    is saved to `save` after every process."""
    from embed_collections.corpus.discovery import discover_collections
    from embed_collections.engine.backends.export import ensure_exported
    from embed_collections.engine.models.resolve import resolve_model

    found = list(discover_collections(args.corpus))
    names = args.collections or found
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"Collections {missing} are not in {args.corpus} (see `discover`)")
    if args.limit:
        names = names[: args.limit]
    whole = names == found
    spec = resolve_model(MINILM)
    model = Path(spec.path)
    max_seq = spec.settings.max_seq_length or 256
    export = ensure_exported(spec, "onnx")  # the project's own export, built with its code
    folders = {"fastembed": fastembed_folder(export, model, None)}
    folders["fastembed-256"] = fastembed_folder(export, model, max_seq)
    stock_max = json.loads((model / "tokenizer_config.json").read_text())["model_max_length"]

    peers = list(args.peers)
    gpu = cuda_available()
    if gpu:
        peers += [p for p in GPU_PEERS if p != "fastembed-gpu" or fastembed_gpu_available()]
        folders["fastembed-gpu"] = folders["fastembed-256"]

    by_collection = chunk_texts(args.corpus, names)
    texts = [t for rows in by_collection.values() for _, t in rows]
    unique = list(dict.fromkeys(texts))
    flops = {
        "all": model_flops(model, texts, max_seq),
        "unique": model_flops(model, unique, max_seq),
        "all-stock": model_flops(model, texts, stock_max),
    }
    print(
        f"{len(names)} collections, {len(texts)} chunks ({len(unique)} unique); "
        f"peers {', '.join(peers)}; load {load_average()}",
        flush=True,
    )

    warm = WORK / "peers" / "warm"  # one-time costs (runtime check) out of the first repeat
    shutil.rmtree(warm, ignore_errors=True)
    run_measured(ours_command(args.corpus, [min(names, key=lambda n: len(by_collection[n]))],
                              warm, "cpu"))  # fmt: skip

    rows: dict[str, list[dict]] = {p: [] for p in peers}
    gemm: list[dict] = []
    loads = [load_average()]
    data = {
        "machine": machine(),
        "cores": os.cpu_count(),
        "cpu_model": lscpu_model(),
        "date": now(),
        "command": " ".join(["python bench/peers.py", *sys.argv[1:]]),
        "collections": len(names),
        "chunks": len(texts),
        "unique_texts": len(unique),
        "max_seq_length": max_seq,
        "fastembed_stock_max_length": stock_max,
        "flops": flops,
        "peer_store": args.peer_store,
        "gpu": gpu,
        "loads": loads,
        "gemm": gemm,
        "rows": rows,
    }
    for repeat in range(args.repeats):
        gemm_command = [sys.executable, str(Path(__file__).resolve()), "--child", "gemm",
                        "--model", str(model)]  # fmt: skip
        gemm.append(run_measured(gemm_command)["inner"])
        order = peers if repeat % 2 == 0 else peers[::-1]  # alternate: no peer always first
        for peer in order:
            out = WORK / "peers" / f"{peer}-{repeat}"
            shutil.rmtree(out, ignore_errors=True)
            listed = None if whole else names
            if peer in ("ours", "ours-cuda"):
                device = "cuda" if peer == "ours-cuda" else "cpu"
                result = run_measured(ours_command(args.corpus, listed, out, device))
                summary = json.loads((out / "embedding_summary_v6.json").read_text())
                result["inner"] = {"models": summary.get("models")}
            elif peer == "original":
                result = run_measured(original_command(args.corpus, names, out))
            else:
                source = folders.get(peer, model)
                command = peer_command(peer, args.corpus, names, source, out, args.peer_store)
                result = run_measured(command)
            rows[peer].append(result)
            shutil.rmtree(out, ignore_errors=True)
            save.write_text(json.dumps(data, indent=2))  # a stopped run keeps finished rounds
            print(
                f"repeat {repeat + 1} {peer}: {result['wall']:.1f} s wall, {result['cpu']:.1f} s "
                f"CPU, {result['rss'] / 2**20:.0f} MiB; load {load_average()}",
                flush=True,
            )
        loads.append(load_average())
        save.write_text(json.dumps(data, indent=2))
    return data


def lscpu_model() -> str:
    """lscpu's model name line (falls back to /proc/cpuinfo)."""
    try:
        out = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return machine()


def ours_embed_seconds(result: dict) -> float | None:
    """The embedding seconds `run` reports for its model(s), from its summary."""
    models = result["inner"].get("models") or {}
    items = models.values() if isinstance(models, dict) else models
    total = 0.0
    for item in items:
        seconds = item.get("embed_seconds") if isinstance(item, dict) else None
        if seconds is None:
            return None
        total += seconds
    return total or None


def report(data: dict) -> str:
    """The markdown table: medians over repeats, ratios to ours, GEMM shares."""
    rows = {peer: results for peer, results in data["rows"].items() if results}
    gemm_cpu = median([max(g["numpy"], g["torch"]) for g in data["gemm"]])
    singles = [
        max(g["numpy-1-thread-cpu"], g["torch-1-thread-cpu"])
        for g in data["gemm"]
        if "torch-1-thread-cpu" in g
    ]
    per_core = median(singles) if singles else gemm_cpu / data.get("cores", os.cpu_count() or 1)
    ours = {k: median([r[k] for r in rows["ours"]]) for k in ("wall", "cpu", "rss")}
    lines = [
        f"Machine: {data['cpu_model']} ({data['machine']}); date {data['date']}; command "
        f"`{data['command']}`; {data['collections']} collections, {data['chunks']} chunks "
        f"({data['unique_texts']} unique); medians of {len(rows['ours'])} interleaved repeats "
        f"(runs per process in the last column); "
        f"peers store into {'Qdrant Edge' if data['peer_store'] == 'edge' else 'qdrant-client local mode'}; "  # noqa: E501
        f"load average (1/5/15 min) per round: {' | '.join(data['loads'])}.",
        "",
        f"fp32 GEMM at the model's shapes ({GEMM_TOKENS} tokens x hidden/MLP): "
        + ", ".join(
            f"{k} {median([g[k] for g in data['gemm'] if k in g]):.1f}"
            for k in dict.fromkeys(k for g in data["gemm"] for k in g)
        )
        + " GFLOP/s (median over rounds of each round's best; `-1-thread-cpu`: one thread, per "
        f"CPU second); ceiling = the faster of numpy and torch: {gemm_cpu:.1f} GFLOP/s on all "
        f"cores per wall second, {per_core:.1f} GFLOP/s per CPU second.",
        "",
        "| process | wall s | CPU s | peak RSS MiB | chunks/s | wall vs ours | CPU vs ours | "
        "RSS vs ours | share of GEMM (wall) | share of GEMM (CPU s) | runs (wall) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for peer, results in rows.items():
        wall = median([r["wall"] for r in results])
        cpu = median([r["cpu"] for r in results])
        rss = median([r["rss"] for r in results])
        if peer in ("ours", "ours-cuda", "original"):
            key = "unique" if peer != "original" else "all"
        else:
            key = "all-stock" if peer == "fastembed" else "all"
        share = share_cpu = ""
        if not peer.endswith(("cuda", "gpu", "fp16")):
            share = f"{100 * data['flops'][key][0] / wall / 1e9 / gemm_cpu:.0f}%"
            share_cpu = f"{100 * data['flops'][key][0] / cpu / 1e9 / per_core:.0f}%"
        runs = ", ".join(f"{r['wall']:.1f}" for r in results)
        lines.append(
            f"| {peer} | {wall:.1f} | {cpu:.1f} | {rss / 2**20:.0f} | "
            f"{data['chunks'] / wall:.1f} | "
            f"{wall / ours['wall']:.2f}x | {cpu / ours['cpu']:.2f}x | {rss / ours['rss']:.2f}x | "
            f"{share} | {share_cpu} | {runs} |"
        )
    embed = [ours_embed_seconds(r) for r in rows["ours"]]
    if all(embed):
        seconds = median([e for e in embed if e])
        rate = data["flops"]["unique"][0] / seconds / 1e9
        lines += [
            "",
            f"Ours inside the model (its summary's embedding seconds, median {seconds:.1f} s): "
            f"{rate:.1f} GFLOP/s = {100 * rate / gemm_cpu:.0f}% of the GEMM ceiling.",
        ]
    tokens = {k: v[1] for k, v in data["flops"].items()}
    lines += [
        "",
        "Share of GEMM (wall) = model FLOPs at the real token counts / whole-process wall / "
        "ceiling; (CPU s) = the same FLOPs / the process's CPU seconds / the one-thread rate, "
        "which a loaded machine disturbs less; "
        f"tokens: {tokens['unique']} (unique texts, ours), {tokens['all']} (every chunk at "
        f"{data['max_seq_length']}), {tokens['all-stock']} (every chunk at "
        f"{data['fastembed_stock_max_length']}, fastembed with the stock tokenizer_config).",
    ]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments; run a child, or the whole benchmark and print its table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )  # noqa: E501
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--collections", nargs="+", help="only these collections [all]")
    parser.add_argument("--limit", type=int, help="only the first N of the collections")
    parser.add_argument("--quick", action="store_true", help="three small collections, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="[3; 1 with --quick]")
    parser.add_argument("--peers", nargs="+", default=list(CPU_PEERS), choices=CPU_PEERS)
    parser.add_argument("--peer-store", choices=("edge", "local"), default="edge")
    parser.add_argument("--report", type=Path, help="only print the table of a saved .json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "gemm":
        return child_gemm(args)
    if args.child:
        return child_peer(args)
    if args.report:
        return print(report(json.loads(args.report.read_text())))
    if args.quick and not args.collections:
        from embed_collections.corpus.discovery import discover_collections

        docs = [n for n in discover_collections(args.corpus) if n.startswith("documentation")]
        args.collections = docs[:3]
    args.repeats = args.repeats or (1 if args.quick else 3)
    WORK.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = bench(args, WORK / f"peers-{stamp}.json")
    text = report(data)
    print(text)
    (WORK / f"peers-{stamp}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
