"""`serve` under 500 slow-loris connections (issue 34): each must be closed within the request
timeout, while normal queries keep their latency.

A one-collection tiny-model run is served by a real `serve` child (`--request-timeout`); this
process measures the latency of sequential `/search` queries alone, then opens N connections
that each send a partial request head and then one more header byte every second (uvicorn's own
keep-alive timer restarts on every byte), queries again while they hang, and records when the
server closed each one and what it answered.

    python bench/slowloris.py                       # 500 connections, 5 s timeout
    python bench/slowloris.py --connections 100 --timeout 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import REPO, bench_env, tiny_model

sys.path.insert(0, str(REPO / "src"))  # this tree's package, for tiny_model


def make_run(root: Path) -> Path:
    chunked, out = root / "Chunked", root / "out"
    path = chunked / "docs" / "docs_chunks.json"
    path.parent.mkdir(parents=True)
    texts = [f"chunk {i} about topic {i % 11} and pruning roses" for i in range(300)]
    path.write_text(json.dumps([{"text": t, "metadata": {}} for t in texts]), encoding="utf-8")
    command = [sys.executable, "-m", "embed_collections", "run", "--chunked-dir", str(chunked)]
    command += ["--output-dir", str(out), "--models", str(tiny_model(32)), "--device", "cpu"]
    command += ["--backend", "torch", "--lease-dir", str(root / "leases"), "-q"]
    subprocess.run(command, env=env(), check=True, stdout=subprocess.DEVNULL)
    return out


def env() -> dict[str, str]:
    return {**bench_env(), "PYTHONPATH": str(REPO / "src")}


def latencies(url: str, count: int) -> list[float]:
    seconds = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(count):
            started = time.perf_counter()
            answer = client.post("/search", json={"query": f"topic {i % 11}", "top_k": 5})
            seconds.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="slowloris-"))
    out = make_run(root)
    serve = [sys.executable, "-m", "embed_collections", "serve", "--output-dir", str(out)]
    serve += ["--port", "0", "--request-timeout", str(args.timeout), "--threads", "1"]
    child = subprocess.Popen(serve, env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        found = re.search(r"http://[\d.]+:\d+", line)
        assert found, line
        url = found.group(0)
        port = int(url.rsplit(":", 1)[1])
        latencies(url, 20)  # warm-up
        alone = latencies(url, args.queries)

        selector = selectors.DefaultSelector()
        opened: dict[socket.socket, float] = {}
        for _ in range(args.connections):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            opened[sock] = time.monotonic()
        answers: dict[str, int] = {}
        lifetimes: list[float] = []
        during: list[float] = []
        last_drip = time.monotonic()
        deadline = time.monotonic() + args.timeout * 4 + 30
        while opened and time.monotonic() < deadline:
            if not during:
                during = latencies(url, args.queries)  # while every slow connection hangs
            if time.monotonic() - last_drip >= 1.0:  # one more byte each, as slow-loris does
                for sock in opened:
                    with contextlib.suppress(OSError):
                        sock.send(b"a")
                last_drip = time.monotonic()
            for key, _ in selector.select(timeout=0.1):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "?"
                    answers[status] = answers.get(status, 0) + 1
                    continue
                lifetimes.append(time.monotonic() - opened.pop(sock))
                selector.unregister(sock)
                sock.close()
        print(
            json.dumps(
                {
                    "connections": args.connections,
                    "request_timeout_s": args.timeout,
                    "closed": len(lifetimes),
                    "still_open_at_the_end": len(opened),
                    "answers": answers,
                    "lifetime_s": {
                        "min": round(min(lifetimes), 3),
                        "median": round(statistics.median(lifetimes), 3),
                        "max": round(max(lifetimes), 3),
                    },
                    "query_ms_alone": summary_ms(alone),
                    "query_ms_during": summary_ms(during),
                },
                indent=2,
            )
        )
    finally:
        child.terminate()
        child.wait(timeout=60)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50": round(1000 * statistics.median(ordered), 2),
        "p99": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 2),
    }


if __name__ == "__main__":
    main()
