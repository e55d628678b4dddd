"""What one chunk of a wave costs the driver in memory: the figure `--wave-size auto` divides by.

A wave is held as `LoadedCollection`s plus, while it is embedded, the wave's digest -> text dict,
each collection's digest set and each model's set of missing digests (`runner/waves.embed_wave`).
Each repeat is a fresh process that loads the corpus as one wave, builds those for two models, and
reports its resident memory growth per chunk (and per byte of chunk JSON). The combine works in
slices of `--upload-batch-size` points, so its buffers do not grow with the wave.

    python bench/wave_memory.py --corpus $BENCH_CORPUS        # 3 repeats
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import DEFAULT_CORPUS, WORK, machine, median, now

PROBE = r"""
import gc, json, sys
from pathlib import Path
from embed_collections.corpus.chunks import load_collection
from embed_collections.corpus.discovery import discover_collections, find_chunk_files
from embed_collections.engine.cache import text_digest

def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096

corpus = Path(sys.argv[1])
found = discover_collections(corpus)
json_bytes = sum(f.stat().st_size for d in found.values() for f in find_chunk_files(d))
gc.collect()
before = rss()
wave = [load_collection(name, folder) for name, folder in found.items()]
digests = [{text_digest(c.text) for c in loaded.chunks} for loaded in wave]
texts = {text_digest(c.text): c.text for loaded in wave for c in loaded.chunks}
missing = [set(texts), set(texts)]  # two models, nothing cached yet: the largest case
gc.collect()
grown = rss() - before
chunks = sum(len(loaded.chunks) for loaded in wave)
chars = sum(len(c.text) for loaded in wave for c in loaded.chunks)
print(json.dumps({"chunks": chunks, "unique": len(texts), "json_bytes": json_bytes,
                  "mean_chars": chars / chunks, "rss_growth": grown}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for repeat in range(args.repeats):
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(args.corpus)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"repeat {repeat + 1}: {runs[-1]}")
    first = runs[0]
    per_chunk = median([r["rss_growth"] / r["chunks"] for r in runs])
    result = {
        "date": now(),
        "machine": machine(),
        "corpus": str(args.corpus),
        "chunks": first["chunks"],
        "unique_texts": first["unique"],
        "mean_chars": round(first["mean_chars"], 1),
        "json_bytes_per_chunk": round(first["json_bytes"] / first["chunks"], 1),
        "rss_bytes_per_chunk": round(per_chunk, 1),
        "rss_per_json_byte": round(per_chunk * first["chunks"] / first["json_bytes"], 3),
        "runs": runs,
    }
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "wave_memory.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
