"""`serve` while `run` is killed with SIGKILL at random moments (issue 34): every answer must
come from one finished run, none may be a 5xx.

A tree of collections whose every text names its generation ("g7 c3 chunk ..."); one finished
run of generation 0 is served (uvicorn on loopback, in this process); then, for each kill, the
tree is rewritten as the next generation, a `run` child is started and killed with SIGKILL at a
random moment of its store-writing window (measured first, from a run that finished: from its
first write into a shard to its final summary, which the finished marker follows; a run that
wrote its final summary before the kill counts as finished, and may be served), while a
client thread queries `/search` without pause. An answer is *mixed* when its hits come from
two generations; `answers_from_unfinished_runs` lists generations no run finished that were
served. At the end one complete run must be picked up.

    python bench/kill_serve.py                  # 20 kills
    python bench/kill_serve.py --kills 5 --collections 4 --chunks 100
    git archive 9e63884 src | tar -x -C /tmp/before     # the code before issue 34:
    python bench/kill_serve.py --kills 5 --src /tmp/before/src
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import REPO, bench_env, tiny_model

SRC = REPO / "src"  # --src: another tree's package (e.g. the commit before issue 34)


def write_tree(chunked: Path, generation: int, collections: int, chunks: int) -> None:
    for c in range(collections):
        path = chunked / f"c{c}" / f"c{c}_chunks.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        records = [
            {"text": f"g{generation} c{c} chunk {i} about topic {i % 7}", "metadata": {}}
            for i in range(chunks)
        ]
        path.write_text(json.dumps(records), encoding="utf-8")


def run_command(chunked: Path, out: Path, model: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "embed_collections",
        "run",
        *("--chunked-dir", str(chunked), "--output-dir", str(out)),
        *("--lease-dir", str(out.parent / "leases"), "--models", str(model)),
        *("--device", "cpu", "--backend", "torch", "--no-index", "-q"),
    ]


def child_env() -> dict[str, str]:
    return {**bench_env(), "PYTHONPATH": str(SRC)}


def store_written(out: Path, since: float) -> bool:
    """Whether a file of a shard changed after `since`: the run writes the store now."""
    for path in (out / "qdrant").glob("*/**/*"):
        try:
            if path.stat().st_mtime > since:
                return True
        except OSError:  # removed meanwhile: written too
            return True
    return False


def summarised(out: Path, since: float) -> bool:
    """Whether a run started after `since` wrote its final summary (it ran to its end; the
    finished marker follows at once; the code before issue 34 writes no marker)."""
    path = out / "embedding_summary_v6.json"
    try:
        fresh = path.stat().st_mtime > since
        return fresh and not json.loads(path.read_text(encoding="utf-8")).get("running")
    except (OSError, ValueError):
        return False


def start(command: list[str], out: Path) -> tuple[subprocess.Popen, float]:
    """A run child, returned once it writes the store (with the time it began to)."""
    since = time.time()
    child = subprocess.Popen(
        command, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while not store_written(out, since) and child.poll() is None:
        time.sleep(0.005)
    return child, time.monotonic()


class Client(threading.Thread):
    """Queries /search without pause; counts answers by what they hold."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, threading.Event()
        self.answers = self.mixed = self.errors = 0
        self.generations: set[str] = set()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                answer = client.post("/search", json={"query": "topic 3", "top_k": 1000})
                self.answers += 1
                if answer.status_code >= 500:
                    self.errors += 1
                    continue
                found = {hit["text"].split()[0] for hit in answer.json().get("hits", [])}
                self.mixed += len(found) > 1
                self.generations |= found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--collections", type=int, default=6)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=34)
    parser.add_argument("--src", type=Path, default=SRC, help="the package tree to run and serve")
    args = parser.parse_args()
    globals()["SRC"] = args.src.resolve()
    sys.path.insert(0, str(SRC))
    from embed_collections.query.live import LiveRun
    from embed_collections.query.server import BackgroundServer, create_app
    from embed_collections.query.service import SearchService

    rng = random.Random(args.seed)
    model = tiny_model(32)
    root = Path(tempfile.mkdtemp(prefix="kill-serve-"))
    chunked, out = root / "Chunked", root / "out"
    command = run_command(chunked, out, model)

    write_tree(chunked, 0, args.collections, args.chunks)
    subprocess.run(command, env=child_env(), check=True, stdout=subprocess.DEVNULL)
    write_tree(chunked, 1, args.collections, args.chunks)  # the window: a run that rewrites all
    since = time.time()
    child, began = start(command, out)
    while not summarised(out, since) and child.poll() is None:
        time.sleep(0.005)
    window = time.monotonic() - began
    child.wait()
    finished = {"g0", "g1"}
    print(f"store-writing window: {window:.2f} s (first shard write to final summary)")

    service = SearchService(LiveRun(out, poll_seconds=0.05).start())
    killed = completed = 0
    with BackgroundServer(create_app(service)) as server:
        client = Client(server.url)
        client.start()
        for kill in range(args.kills):
            write_tree(chunked, kill + 2, args.collections, args.chunks)
            since = time.time()
            child, began = start(command, out)
            time.sleep(rng.uniform(0, window))
            child.send_signal(signal.SIGKILL)
            child.wait()
            if not summarised(out, since):
                killed += 1
            else:  # it ran to its end before the kill: it may be served
                completed += 1
                finished.add(f"g{kill + 2}")
            time.sleep(0.2)
        health = httpx.get(server.url + "/healthz").json()
        write_tree(chunked, 99, args.collections, args.chunks)
        subprocess.run(command, env=child_env(), check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while "g99" not in client.generations and time.monotonic() < deadline:
            time.sleep(0.05)
        client.stop.set()
        client.join()
    service.close()
    unfinished = sorted(client.generations - finished - {"g99"})
    print(
        json.dumps(
            {
                "kills": args.kills,
                "killed_mid_run": killed,
                "finished_before_the_kill": completed,
                "answers": client.answers,
                "mixed_answers": client.mixed,
                "5xx": client.errors,
                "answers_from_unfinished_runs": unfinished,
                "healthz_after_kills": {k: health.get(k) for k in ("newer_run", "last_error")},
                "picked_up_the_next_complete_run": "g99" in client.generations,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
