"""What reading every collection back costs on an unchanged re-run of a whole corpus.

One full `run` over the corpus with a tiny generated model of MiniLM's width (384 d, so the
vectors read back are as large as MiniLM's), then unchanged re-runs, interleaved: this tree
(every collection scanned: ids, vectors, payloads, digest, a sample against the cache) against
a baseline tree given with --baseline-src (marker + count only). A first re-run with this tree
rewrites markers that lack a digest, so it is not timed. Also times the verify step alone
(`check_held` over every collection, in-process).

    PYTHONPATH=src python bench/rerun_verify.py --chunked-dir CORPUS --baseline-src OTHER/src
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_command(src: Path, chunked: Path, out: Path, model: Path) -> tuple[list[str], dict]:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    command = [
        sys.executable, "-m", "embed_collections", "run", "--chunked-dir", str(chunked),
        "--output-dir", str(out), "--lease-dir", str(out.parent / "leases"),
        "--models", str(model), "--device", "cpu", "-q",
    ]  # fmt: skip
    return command, env


def timed(src: Path, chunked: Path, out: Path, model: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all threads and children) of one run."""
    command, env = run_command(src, chunked, out, model)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 3):
        raise SystemExit(f"run failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu


def verify_seconds(out: Path) -> tuple[float, float, int, int]:
    """The verify step alone: check_held on every collection of the finished store."""
    from embed_collections.corpus.chunks import load_collection
    from embed_collections.corpus.discovery import discover_collections
    from embed_collections.engine.cache import EmbeddingCache
    from embed_collections.runner.sinks import check_held
    from embed_collections.stores.edge import EdgeStore
    from embed_collections.stores.open import point_id

    summary = json.loads((out / "embedding_summary_v6.json").read_text(encoding="utf-8"))
    chunked = Path(summary["chunked_dir"])
    found = discover_collections(chunked)
    loaded = {name: load_collection(name, folder, root=chunked) for name, folder in found.items()}
    held = points = 0
    with EmbeddingCache(out / "cache" / "embeddings.sqlite"), EdgeStore(out / "qdrant") as store:
        started, cpu = time.perf_counter(), time.process_time()
        for name, collection in loaded.items():
            marker = store.loaded_marker(name)
            layout = store.layout(name)
            if marker is None or layout is None:
                continue
            expected = {point_id(name, c.chunk_id) for c in collection.chunks}
            check = check_held(store, name, layout, marker["signature"], expected)
            held += check.count is not None
            points += check.count or 0
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return seconds, cpu, held, points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunked-dir", type=Path, required=True)
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    from embed_collections.engine.tiny_model import build_tiny_model

    work = args.workdir or Path(tempfile.mkdtemp(prefix="rerun-verify-"))
    model = work / "tiny384"
    if not model.exists():
        build_tiny_model(model, 384, seed=1)
    here = Path(__file__).resolve().parents[1] / "src"
    out = work / "out"
    first = timed(here, args.chunked_dir, out, model)[0] if not out.exists() else 0.0
    timed(here, args.chunked_dir, out, model)  # rewrites markers without a digest
    ours, baseline, verify = [], [], []
    for _ in range(args.repeats):
        ours.append(timed(here, args.chunked_dir, out, model))
        baseline.append(timed(args.baseline_src.resolve(), args.chunked_dir, out, model))
        verify.append(verify_seconds(out))
    result = {
        "first_run_s": round(first, 1),
        "unchanged_rerun_wall_s": [round(s[0], 2) for s in ours],
        "unchanged_rerun_cpu_s": [round(s[1], 2) for s in ours],
        "baseline_rerun_wall_s": [round(s[0], 2) for s in baseline],
        "baseline_rerun_cpu_s": [round(s[1], 2) for s in baseline],
        "median_rerun_wall_s": round(statistics.median(s[0] for s in ours), 2),
        "median_rerun_cpu_s": round(statistics.median(s[1] for s in ours), 2),
        "median_baseline_wall_s": round(statistics.median(s[0] for s in baseline), 2),
        "median_baseline_cpu_s": round(statistics.median(s[1] for s in baseline), 2),
        "verify_step_wall_s": [round(v[0], 2) for v in verify],
        "verify_step_cpu_s": [round(v[1], 2) for v in verify],
        "collections_verified": verify[-1][2],
        "points_verified": verify[-1][3],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
