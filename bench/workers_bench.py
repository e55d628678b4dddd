"""One device vs two CPU workers (`--device cpu` vs `--device cpu:0,cpu:1`), whole processes.

On a machine with N cores, two CPU workers each get N/2 threads, so the model's work is the same;
the difference is the scheduling overhead of the worker processes (spawn, a second model load,
the queue, the parent caching what comes back). The issue's target: at most 10%.

    python bench/workers_bench.py                 # Docling, MiniLM, 3 interleaved repeats
    python bench/workers_bench.py --quick         # a tiny model, one repeat
    python bench/workers_bench.py --kills 20      # worker kills: no run may hang or lose a text
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (
    DEFAULT_CORPUS,
    MINILM,
    WORK,
    bench_env,
    machine,
    median,
    now,
    run_timed,
    tiny_model,
)

WAYS = {"one-device": "cpu", "two-workers": "cpu:0,cpu:1"}


def command(corpus: Path, names: list[str], model: str, out: Path, device: str) -> list[str]:
    return [
        sys.executable, "-m", "embed_collections", "run", "-q", "--no-index",
        "--chunked-dir", str(corpus), "--output-dir", str(out), "--lease-dir", str(out / "leases"),
        "--device", device, "--collections", *names, "--models", model,
    ]  # fmt: skip


KILL_CHILD = """
import sys
from pathlib import Path
from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.executors.local import embed_pending
from embed_collections.engine.models.folders import model_fingerprint
from embed_collections.engine.models.resolve import resolve_model
from embed_collections.engine.options import EngineOptions

if __name__ == "__main__":
    spec, out = resolve_model(sys.argv[1]), Path(sys.argv[2])
    opts = EngineOptions(device="cpu:0,cpu:1", backend="torch", show_progress=False,
                         lease_dir=out / "leases", max_batch_tokens=256).resolved()
    texts = {text_digest(t): t for t in (f"Text {i} " + "word " * (i % 40) for i in range(400))}
    with EmbeddingCache(out / "c.sqlite") as cache:
        fingerprint = model_fingerprint(spec, "torch", opts.dtype)
        embed_pending(spec, fingerprint, texts, cache, opts, [])
        print("missing", len(cache.missing(fingerprint, texts)))
"""


def kill_loop(kills: int, timeout: float) -> dict:
    """Kill one worker at a random batch (SIGKILL, from 0: right after its unit is handed out)
    `kills` times; every run must finish in time with every text cached."""
    model, script = tiny_model(32), WORK / "kill_child.py"
    WORK.mkdir(parents=True, exist_ok=True)
    script.write_text(KILL_CHILD)
    outcomes = []
    for attempt in range(kills):
        out = WORK / "workers-kill"
        shutil.rmtree(out, ignore_errors=True)
        fault = f"kill@cpu:{attempt % 2}#{random.randint(0, 6)}"
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, str(script), str(model), str(out)], capture_output=True,
                text=True, timeout=timeout, env={**bench_env(), "EMBED_COLLECTIONS_FAULT": fault},
            )  # fmt: skip
            lines = done.stdout.split()
            missing = int(lines[-1]) if done.returncode == 0 and lines else None
            outcome = "ok" if missing == 0 else f"exit {done.returncode}, missing {missing}"
        except subprocess.TimeoutExpired:
            outcome = "hang"
        outcomes.append({"fault": fault, "outcome": outcome,
                         "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
        print(outcomes[-1], flush=True)
    return {"date": now(), "machine": machine(), "kills": outcomes,
            "hangs": sum(o["outcome"] == "hang" for o in outcomes),
            "ok": sum(o["outcome"] == "ok" for o in outcomes)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--collections", nargs="+", default=["Docling"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kills", type=int, default=0, help="worker-kill runs instead [0]")
    parser.add_argument("--kill-timeout", type=float, default=300.0)
    args = parser.parse_args()
    if args.kills:
        result = kill_loop(args.kills, args.kill_timeout)
        (WORK / "workers_kills.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({k: result[k] for k in ("hangs", "ok")}))
        return
    model = str(tiny_model(32)) if args.quick else MINILM
    repeats = 1 if args.quick else args.repeats
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    embed: dict[str, list[float]] = {way: [] for way in WAYS}
    shares: dict[str, list[dict[str, int]]] = {way: [] for way in WAYS}  # chunks per device
    for repeat in range(repeats):
        order = list(WAYS) if repeat % 2 == 0 else list(reversed(WAYS))
        for way in order:
            out = WORK / f"workers-bench-{way}"
            shutil.rmtree(out, ignore_errors=True)  # every text is embedded in every run
            seconds[way].append(run_timed(command(args.corpus, args.collections, model, out,
                                                  WAYS[way]))[0])  # fmt: skip
            summary = json.loads((out / "embedding_summary_v6.json").read_text())
            model_summary = next(iter(summary["models"].values()))
            embed[way].append(model_summary["embed_seconds"])
            shares[way].append({d["device"]: d["chunks"] for d in model_summary["devices"]})
        print(f"repeat {repeat + 1}: " + ", ".join(f"{w} {seconds[w][-1]:.1f}s" for w in WAYS))
    medians = {way: median(values) for way, values in seconds.items()}
    result = {
        "date": now(),
        "machine": machine(),
        "collections": args.collections,
        "model": model,
        "seconds": seconds,
        "embed_seconds": embed,
        "chunks_per_device": shares,
        "medians": medians,
        "overhead": medians["two-workers"] / medians["one-device"] - 1,
    }
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "workers_bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
