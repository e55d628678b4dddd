"""`run --executor ray` vs `--executor local` on the same slice, MiniLM on CPU, whole processes.

Three ways, interleaved per repeat so machine noise hits all alike:
local (in-process), ray-fresh (the run starts its own local Ray: what a single user pays) and
ray-joined (the run joins a Ray started once with `ray start --head`: the cluster case).

    python bench/ray_bench.py                 # Docling, 3 repeats
    python bench/ray_bench.py --quick         # a tiny model on five small collections

`--waves`: one actor pool per model per run against one per model per wave. A 3-wave run
(`--wave-size 600` on the slice: Docling, then the Qdrant documentation collections) with two
tiny models (`--minilm`: MiniLM and a tiny one) under `--executor ray` (a private Ray each run,
so the actors run the code of the process that started it), this tree's code against an older
tree's `src` (`--before-src`, e.g. `git archive <rev> src | tar -x -C /tmp/before`), interleaved:

    python bench/ray_bench.py --waves --before-src /tmp/before/src --corpus $BENCH_CORPUS
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

from common import (
    DEFAULT_CORPUS,
    MINILM,
    REPO,
    WORK,
    machine,
    median,
    now,
    run_timed,
    slice_collections,
    tiny_model,
)

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
    parser.add_argument("--waves", action="store_true", help="pool per run vs pool per wave")
    parser.add_argument("--before-src", type=Path, help="the older tree's src (with --waves)")
    parser.add_argument("--minilm", action="store_true", help="MiniLM + a tiny model (--waves)")
    parser.add_argument("--wave-size", type=int, default=600)
    args = parser.parse_args()
    if args.waves:
        compare_waves(args)
        return
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


def compare_waves(args: argparse.Namespace) -> None:
    """Pool starts and wall seconds of a multi-wave Ray run, this tree against `--before-src`."""
    if args.before_src is None:
        raise SystemExit("--waves needs --before-src (an older tree's src folder)")
    names = slice_collections(args.corpus, quick=False)
    models = [MINILM if args.minilm else str(tiny_model(32)), str(tiny_model(48))]
    trees = {"pool per wave (before)": args.before_src.resolve(), "pool per run": REPO / "src"}
    seconds: dict[str, list[float]] = {label: [] for label in trees}
    starts: dict[str, list[int]] = {label: [] for label in trees}
    embed: dict[str, list[float]] = {label: [] for label in trees}  # the "embed <model>" phases
    reads: dict[str, list[float]] = {label: [] for label in trees}  # "load chunks"
    waves: dict[str, int] = {}
    for repeat in range(args.repeats):
        for label, src in trees.items():
            out = WORK / f"ray-waves-{'before' if 'before' in label else 'now'}"
            shutil.rmtree(out, ignore_errors=True)
            run = command(args.corpus, names, models[0], out, "ray")
            run[run.index("--models") + 1 : run.index("--models") + 2] = models
            run += ["--wave-size", str(args.wave_size)]
            os.environ["PYTHONPATH"] = str(src)  # the driver's and (private Ray) the actors'
            try:
                seconds[label].append(run_timed(run)[0])
            finally:
                os.environ.pop("PYTHONPATH", None)
            summary = json.loads((out / "embedding_summary_v6.json").read_text())
            starts[label].append(sum(m["loads"] for m in summary["models"].values()))
            phases = summary["phases"]
            embed[label].append(sum(v for k, v in phases.items() if k.startswith("embed ")))
            reads[label].append(phases.get("load chunks", 0.0))
            waves[label] = summary.get("waves") or len(
                [line for line in (out / "embedding_v6.log").read_text().splitlines()
                 if "embedding" in line and "Ray actor" in line]
            ) // len(models)  # fmt: skip
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in seconds.items()))
    result = {
        "date": now(),
        "machine": machine(),
        "load_average": os.getloadavg(),
        "collections": len(names),
        "models": models,
        "wave_size": args.wave_size,
        "waves": waves,
        "seconds": seconds,
        "medians": {k: median(v) for k, v in seconds.items()},
        "pool_starts": starts,
        "embed_seconds": embed,
        "embed_medians": {k: median(v) for k, v in embed.items()},
        "load_chunks_seconds": reads,
        "load_chunks_medians": {k: median(v) for k, v in reads.items()},
    }
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "ray_waves.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
