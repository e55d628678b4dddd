"""Shared pieces of the benchmarks: the corpus slice, the models, timing and memory helpers."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The measurements in bench/README.md use a 222-collection, 12,374-chunk documentation corpus
# (not shipped): point BENCH_CORPUS at such a tree; the bundled examples are the fallback.
DEFAULT_CORPUS = Path(os.environ.get("BENCH_CORPUS") or REPO / "examples" / "Chunked")
WORK = REPO / "bench" / "results"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def slice_collections(corpus: Path, quick: bool) -> list[str]:
    """The documented slice: Docling plus the first 40 Qdrant documentation collections
    (1,755 chunks in 41 collections: one large collection and many small ones, as users have).
    Quick mode: Docling's neighbours, five small collections."""
    from embed_collections.corpus.discovery import discover_collections

    names = list(discover_collections(corpus))
    docs = [n for n in names if n.startswith("documentation")]
    return docs[:5] if quick else ["Docling", *docs[:40]]


def load_texts(corpus: Path, names: list[str]) -> dict[str, list[str]]:
    """Chunk texts per collection, in file order (what a naive script would embed)."""
    from embed_collections.corpus.chunks import load_collection
    from embed_collections.corpus.discovery import discover_collections

    found = discover_collections(corpus)
    return {n: [c.text for c in load_collection(n, found[n]).chunks] for n in names}


def tiny_model(size: int) -> Path:
    """A cached random model folder (generated once; see embed_collections.engine.models.tiny)."""
    from embed_collections.engine.models.tiny import build_tiny_model

    folder = WORK / "models" / f"tiny{size}"
    if not (folder / "modules.json").exists():
        build_tiny_model(folder, size, seed=size)
    return folder


def bench_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of a child process."""
    wrapper = (
        "import resource, subprocess, sys, time, json;"
        "t = time.perf_counter(); rc = subprocess.run(sys.argv[1:]).returncode;"
        "s = time.perf_counter() - t;"
        "print(json.dumps([s, rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *command],
        env=bench_env(),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    seconds, code, max_rss_kb = json.loads(out.stdout.strip().splitlines()[-1])
    if code not in (0,):
        raise SystemExit(f"benchmark command failed with exit code {code}: {' '.join(command)}")
    return seconds, max_rss_kb * 1024


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    """A one-line description of the machine the numbers come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def own_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def now() -> str:
    return time.strftime("%Y-%m-%d")
