"""One device vs two CPU workers (`--device cpu` vs `--device cpu:0,cpu:1`), whole processes.

On a machine with N cores, two CPU workers each get N/2 threads, so the model's work is the same;
the difference is the scheduling overhead of the worker processes (spawn, a second model load,
the queue, the parent caching what comes back). The issue's target: at most 10%.

    python bench/workers_bench.py                 # Docling, MiniLM, 3 interleaved repeats
    python bench/workers_bench.py --quick         # a tiny model, one repeat
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import DEFAULT_CORPUS, MINILM, WORK, machine, median, now, run_timed, tiny_model

WAYS = {"one-device": "cpu", "two-workers": "cpu:0,cpu:1"}


def command(corpus: Path, names: list[str], model: str, out: Path, device: str) -> list[str]:
    return [
        sys.executable, "-m", "embed_collections", "run", "-q", "--no-index",
        "--chunked-dir", str(corpus), "--output-dir", str(out), "--lease-dir", str(out / "leases"),
        "--device", device, "--collections", *names, "--models", model,
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--collections", nargs="+", default=["Docling"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    model = str(tiny_model(32)) if args.quick else MINILM
    repeats = 1 if args.quick else args.repeats
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    embed: dict[str, list[float]] = {way: [] for way in WAYS}
    for repeat in range(repeats):
        order = list(WAYS) if repeat % 2 == 0 else list(reversed(WAYS))
        for way in order:
            out = WORK / f"workers-bench-{way}"
            shutil.rmtree(out, ignore_errors=True)  # every text is embedded in every run
            seconds[way].append(run_timed(command(args.corpus, args.collections, model, out,
                                                  WAYS[way]))[0])  # fmt: skip
            summary = json.loads((out / "embedding_summary_v6.json").read_text())
            embed[way].append(next(iter(summary["models"].values()))["embed_seconds"])
        print(f"repeat {repeat + 1}: " + ", ".join(f"{w} {seconds[w][-1]:.1f}s" for w in WAYS))
    medians = {way: median(values) for way, values in seconds.items()}
    result = {
        "date": now(),
        "machine": machine(),
        "collections": args.collections,
        "model": model,
        "seconds": seconds,
        "embed_seconds": embed,
        "medians": medians,
        "overhead": medians["two-workers"] / medians["one-device"] - 1,
    }
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "workers_bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
