"""`run --executor ray` vs `--executor local` on the same slice, MiniLM on CPU, whole processes.

Three ways, interleaved per repeat so machine noise hits all alike:
local (in-process), ray-fresh (the run starts its own local Ray: what a single user pays) and
ray-joined (the run joins a Ray started once with `ray start --head`: the cluster case).

    python bench/ray_bench.py                 # Docling, 3 repeats
    python bench/ray_bench.py --quick         # a tiny model on five small collections
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_CORPUS, MINILM, WORK, machine, median, now, run_timed, tiny_model

RAY_PORT = 6391


def command(corpus: Path, names: list[str], model: str, out: Path, executor: str) -> list[str]:
    return [
        sys.executable, "-m", "embed_collections", "run", "-q", "--no-index",
        "--chunked-dir", str(corpus), "--output-dir", str(out), "--lease-dir", str(out / "leases"),
        "--device", "cpu", "--collections", *names, "--models", model, "--executor", executor,
    ]  # fmt: skip


def wait_for_port(port: int, seconds: float = 120) -> None:
    """Until the Ray head's GCS accepts connections (then a moment for its raylet)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(3)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"ray start --head did not listen on port {port}")


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--collections", nargs="+", default=["Docling"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    model = str(tiny_model(32)) if args.quick else MINILM
    names = ["Docling"] if not args.quick else args.collections
    repeats = 1 if args.quick else args.repeats
    temp = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    address = f"127.0.0.1:{RAY_PORT}"
    head = subprocess.Popen(
        [ray_cli(), "start", "--head", "--block", f"--port={RAY_PORT}",
         "--include-dashboard=false", f"--temp-dir={temp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
    )  # fmt: skip
    wait_for_port(RAY_PORT)
    seconds: dict[str, list[float]] = {"local": [], "ray-fresh": [], "ray-joined": []}
    summaries: dict[str, dict] = {}
    try:
        for repeat in range(repeats):
            for label in seconds:
                out = WORK / f"ray-bench-{label}"
                shutil.rmtree(out, ignore_errors=True)
                executor = "local" if label == "local" else "ray"
                if label == "ray-joined":  # the head uses token auth: so must its clients
                    os.environ.update(RAY_ADDRESS=address, RAY_AUTH_MODE="token")
                else:
                    os.environ.pop("RAY_ADDRESS", None)
                    os.environ.pop("RAY_AUTH_MODE", None)
                run_seconds = run_timed(command(args.corpus, names, model, out, executor))[0]
                seconds[label].append(run_seconds)
                summaries[label] = json.loads((out / "embedding_summary_v6.json").read_text())
            print(
                f"repeat {repeat + 1}: "
                + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in seconds.items())
            )
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        os.environ.pop("RAY_AUTH_MODE", None)
        os.killpg(head.pid, signal.SIGTERM)  # only the head this script started
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)
    medians = {k: median(v) for k, v in seconds.items()}
    result = {
        "date": now(),
        "machine": machine(),
        "collections": names,
        "model": model,
        "seconds": seconds,
        "medians": medians,
        "embed_seconds": {
            k: s["models"][next(iter(s["models"]))]["embed_seconds"] for k, s in summaries.items()
        },
        "backend": {
            k: s["models"][next(iter(s["models"]))]["backend"] for k, s in summaries.items()
        },
    }
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "ray_bench.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    for label in ("ray-fresh", "ray-joined"):
        print(f"{label} / local: {medians[label] / medians['local']:.2f}x")


if __name__ == "__main__":
    main()
