"""A small closed-loop HTTP load generator, run as its own process so that the clients do not share
the server's interpreter: `clients` kept-alive connections (raw asyncio streams, requests encoded
once up front), each sending its next POST when the last answer has arrived.

Prints one JSON line: latency p50/p99, queries/s, errors (non-200 answers), and the CPU seconds this
process used (user + system), so a report can say what the clients cost the shared cores.

    python bench/http_load.py --url http://127.0.0.1:8000 --clients 32 --per-client 20 \\
        --body '{"query": "install with pip", "collections": "Docling", "mode": "dense"}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from urllib.parse import urlsplit


def encode_post(host: str, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 answer with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def run(url: str, bodies: list[bytes], clients: int, per_client: int, warmup: int) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [encode_post(f"{host}:{port}", "/search", body) for body in bodies]
    latencies: list[float] = []
    errors = 0
    sizes: list[int] = []

    async def client(index: int, count: int, record: bool) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in range(count):
                request = requests[(index * 7 + i) % len(requests)]
                started = time.perf_counter()
                writer.write(request)
                status, body = await read_answer(reader)
                if record:
                    latencies.append(time.perf_counter() - started)
                    errors += status != 200
                    sizes.append(len(body))
        finally:
            writer.close()

    await asyncio.gather(*(client(i, warmup, False) for i in range(min(clients, 4))))
    cpu = os.times()
    started = time.perf_counter()
    await asyncio.gather(*(client(i, per_client, True) for i in range(clients)))
    wall = time.perf_counter() - started
    used = os.times()
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "qps": len(latencies) / wall,
        "wall_s": wall,
        "errors": errors,
        "client_cpu_s": (used.user - cpu.user) + (used.system - cpu.system),
        "mean_body_bytes": statistics.mean(sizes) if sizes else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="requests per warm-up client")
    parser.add_argument("--body", action="append", required=True, help="a JSON body (repeatable)")
    args = parser.parse_args()
    bodies = [json.dumps(json.loads(body)).encode() for body in args.body]
    result = asyncio.run(run(args.url, bodies, args.clients, args.per_client, args.warmup))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
