"""What an unchanged re-run of a whole corpus costs: this tree against a baseline tree.

One full `run` over the corpus with a tiny generated model of MiniLM's width (384 d, so the
vectors read back are as large as MiniLM's), copied for the baseline tree (--baseline-src, e.g.
the previous commit's `src` from `git archive`), so each tree keeps its own store: a tree that
reads the shards back changes their files, which would send this tree's next re-run to the full
read-back. One untimed re-run each (markers written by a copy are refreshed), then interleaved
timed re-runs: this tree (files unchanged: no shard opened), the baseline tree, and this tree with
--verify-full (every collection read back and compared, as before the fast path).

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


def run_command(
    src: Path, chunked: Path, out: Path, model: Path, *extra: str
) -> tuple[list[str], dict]:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    command = [
        sys.executable, "-m", "embed_collections", "run", "--chunked-dir", str(chunked),
        "--output-dir", str(out), "--lease-dir", str(out.parent / "leases"),
        "--models", str(model), "--device", "cpu", "-q", *extra,
    ]  # fmt: skip
    return command, env


def timed(src: Path, chunked: Path, out: Path, model: Path, *extra: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all threads and children) of one run."""
    command, env = run_command(src, chunked, out, model, *extra)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 3):
        raise SystemExit(f"run failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu


def trusted(out: Path) -> int:
    """Collections the last run of `out` found unchanged by their files' stats alone."""
    log = (out / "embedding_v6.log").read_text(encoding="utf-8").splitlines()
    last = max(i for i, line in enumerate(log) if "Environment:" in line)
    return sum("files unchanged since its last load" in line for line in log[last:])


def summarise(runs: list[tuple[float, float]]) -> dict:
    return {
        "wall_s": [round(r[0], 2) for r in runs],
        "cpu_s": [round(r[1], 2) for r in runs],
        "median_wall_s": round(statistics.median(r[0] for r in runs), 2),
        "median_cpu_s": round(statistics.median(r[1] for r in runs), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunked-dir", type=Path, required=True)
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    from embed_collections.engine.models.tiny import build_tiny_model

    work = args.workdir or Path(tempfile.mkdtemp(prefix="rerun-verify-"))
    model = work / "tiny384"
    if not model.exists():
        build_tiny_model(model, 384, seed=1)
    here = Path(__file__).resolve().parents[1] / "src"
    baseline_src = args.baseline_src.resolve()
    out, base_out = work / "out", work / "out-baseline"
    first = timed(here, args.chunked_dir, out, model)[0] if not out.exists() else 0.0
    if not base_out.exists():
        # --sparse=always: every shard holds 32 MB files that are mostly holes; a plain copy
        # writes them out in full (22 GB for this corpus's 222 shards)
        subprocess.run(["cp", "-a", "--sparse=always", str(out), str(base_out)], check=True)
    timed(here, args.chunked_dir, out, model)  # refreshes markers written by another tree
    timed(baseline_src, args.chunked_dir, base_out, model)
    ours, baseline, full = [], [], []
    for _ in range(args.repeats):
        ours.append(timed(here, args.chunked_dir, out, model))
        trusted_now = trusted(out)
        baseline.append(timed(baseline_src, args.chunked_dir, base_out, model))
        full.append(timed(here, args.chunked_dir, out, model, "--verify-full"))
    result = {
        "first_run_s": round(first, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "collections_trusted_by_stats": trusted_now,
        "this_tree": summarise(ours),
        "baseline": summarise(baseline),
        "this_tree_verify_full": summarise(full),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
