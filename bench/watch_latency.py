"""19. Seconds from saving one changed page to `serve` returning its new text: `run --docs --watch`
on a folder of pages, `serve` on its output over HTTP, then one page at a time gets a new
sentence and the clock runs until a search for that sentence returns it.

    BENCH_RAW=path/to/Raw python bench/watch_latency.py --repeats 3 [--pages 0]

`--pages 0`: every page (the whole shared corpus: the first run embeds all of it, minutes on a
CPU). Prints each latency and the watch's own update time (chunk + incremental run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import machine, now

import embed_collections as ec


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def search(port: int, query: str) -> list[dict]:
    body = json.dumps({"query": query, "top_k": 3, "collections": "all"}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/search", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data = json.loads(response.read())
    return data.get("hits", data) if isinstance(data, dict) else data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    raw = Path(os.environ.get("BENCH_RAW", "Raw"))
    work = Path(tempfile.mkdtemp())
    docs, out = work / "docs", work / "out"
    pages = sorted(raw.rglob("*.md"))
    pages = pages[: args.pages] if args.pages else pages
    for page in pages:
        target = docs / page.relative_to(raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, target)
    updates: list[dict] = []
    stop = threading.Event()
    options = {"docs": docs, "models": ["minilm"], "device": "cpu", "quiet": True}
    options["lease_dir"] = work / "leases"
    started = time.perf_counter()
    watcher = threading.Thread(
        target=ec.watch,
        args=(None, out),
        kwargs={"on_update": updates.append, "stop": stop, **options},
        daemon=True,
    )
    watcher.start()
    while not updates:
        time.sleep(0.2)
    first_run = time.perf_counter() - started
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "embed_collections", "serve", "--output-dir", str(out)]
        + ["--port", str(port), "--poll-seconds", "0.1", "-q"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                search(port, "warm up")
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        latencies, update_seconds = [], []
        for repeat in range(args.repeats):
            page = docs / pages[(repeat * 97) % len(pages)].relative_to(raw)
            sentence = f"Zebra quokka marker {repeat} {time.time_ns()} appears here."
            seen = len(updates)
            saved = time.perf_counter()
            page.write_text(page.read_text() + f"\n\n## Fresh {repeat}\n\n{sentence}\n")
            while True:
                try:
                    hits = search(port, sentence)
                except OSError:  # a search during serve's reload may time out: not there yet
                    hits = []
                if any(sentence in str(hit.get("text", "")) for hit in hits):
                    break
                assert time.perf_counter() - saved < 300, "the new text never came"
                time.sleep(0.05)
            latencies.append(time.perf_counter() - saved)
            while len(updates) == seen:
                time.sleep(0.05)
            update_seconds.append(updates[-1]["seconds"])
            print(f"repeat {repeat}: {latencies[-1]:.2f}s to searchable ({page.name}); "
                  f"watch update {updates[-1]['seconds']}s")  # fmt: skip
            time.sleep(1.0)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        stop.set()
    print(f"{now()} {machine()}")
    print(
        f"{len(pages)} pages; first run (chunk + embed all) {first_run:.1f}s; save -> serve "
        f"returns the new text: median {statistics.median(latencies):.2f}s "
        f"(max {max(latencies):.2f}s) over {len(latencies)}; watch update median "
        f"{statistics.median(update_seconds):.2f}s"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
