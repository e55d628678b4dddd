"""The run report at corpus scale: size of report.html and the time headless Chromium takes to
open it and draw every chart (from the start of navigation to the page's load handler, as the
page itself logs it), median of repeats.

    python bench/report_bench.py --output-dir OUTPUT      # the report of an existing run
    python bench/report_bench.py --collections 222        # a synthetic summary of that many

The synthetic summary has the shape a real run writes (collections, two models with token-length
histograms and throughput timelines, phases, lease events): numbers drawn from a seeded RNG.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

CONSOLE = re.compile(r"charts drawn in (\d+) ms")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--window-size=1400,2400",
]  # fmt: skip


def synthetic_run(folder: Path, collections: int, seed: int = 0) -> None:
    """Write a summary of `collections` collections and two models into `folder`."""
    from embed_collections.atomic import write_json_atomic
    from embed_collections.engine.telemetry import DeviceTelemetry, ModelTelemetry
    from embed_collections.record.files import SUMMARY_FILE
    from embed_collections.record.summary import CollectionResult, RunSummary
    from embed_collections.record.token_lengths import TokenLengths

    rng = random.Random(seed)
    models = {"sentence-transformers/all-MiniLM-L6-v2": 256, "BAAI/bge-small-en-v1.5": 512}
    summary = RunSummary("2026-12-04T12:00:00", "Local", list(models))
    lengths = {name: TokenLengths(name) for name in models}
    for i in range(collections):
        name = f"collection_{i:03d}_{rng.choice(['docs', 'api', 'guide'])}"
        chunks = int(rng.lognormvariate(4.5, 1.2)) + 1
        counts = [int(rng.lognormvariate(5.2, 0.6)) for _ in range(chunks)]
        if i % 37 == 5:
            summary.failed_collections[name] = f"{name}/x_chunks.json: not valid JSON (line 1)"
            continue
        result = CollectionResult(name=name, total_embeddings_generated=chunks)
        result.unique_texts = len(set(counts))
        result.points_in_store = chunks
        result.processing_time = round(chunks * 0.01, 3)
        for model, window in models.items():
            lengths[model].add(counts, window)
            result.embedded_now[model] = result.unique_texts
            result.truncated_chunks[model] = sum(1 for c in counts if c > window)
        summary.results[name] = result
    telemetry = {}
    for model in models:
        device = DeviceTelemetry(device="cpu")
        for step in range(400):  # thinned to the summary's limit as a run would
            device.chunks += 60
            device.mark(step * 0.8 + rng.random() * 0.1)
        item = ModelTelemetry(model=model, fingerprint="0" * 16, dim=384, max_seq_length=256)
        item.absorb(device)
        telemetry[model] = item.to_dict()
    events = [
        {"event_type": kind, "model": m, "device": "cpu", "timestamp": "2026-12-04T12:00:00",
         "wait_seconds": rng.random() * 3 if kind == "acquire" else 0.0}
        for m in models for kind in ("acquire", "release")
    ]  # fmt: skip
    summary.extra = replace(
        summary.extra, executor="local", store=str(folder / "qdrant"), total_seconds=900.0,
        models=telemetry,
        lease_events=events,
        token_lengths={name: t.to_dict() for name, t in lengths.items()},
        phases={"discover": 0.4, "preflight": 12.0, "load chunks": 20.0,
                **{f"embed {m}": 400.0 for m in models}, "store": 60.0},
    )  # fmt: skip
    write_json_atomic(folder / SUMMARY_FILE, summary.to_json())


def open_time(chromium: str, page: Path) -> tuple[int, str]:
    """Milliseconds to open and draw, and the page's console line."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}",
             f"--screenshot={Path(profile) / 'shot.png'}", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if "INFO:CONSOLE" in line]
    match = CONSOLE.search(" ".join(lines))
    if not match or len(lines) != 1:
        raise SystemExit(f"unexpected console output: {lines}")
    return int(match.group(1)), lines[0]


def floor_page() -> str:
    """A page with plotly.js inline and one small chart, logging like the report."""
    from plotly.offline import get_plotlyjs

    from embed_collections.report.html import DRAWN_CHECK

    figure = '{"data": [{"type": "bar", "x": [1, 2], "y": [3, 4]}], "layout": {}}'
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><script>{get_plotlyjs()}</script>"
        f"</head><body><div class='chart'><div id='c'></div></div><script>"
        f"var f = {figure}; Plotly.newPlot('c', f.data, f.layout);</script>"
        f"<script>{DRAWN_CHECK}</script></body></html>"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, help="a finished run's output directory")
    parser.add_argument("--collections", type=int, default=222)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from embed_collections.report.html import write_report

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.output_dir
        if folder is None:
            folder = Path(scratch)
            synthetic_run(folder, args.collections)
        target = Path(scratch) / "report.html"
        started = time.perf_counter()
        write_report(folder, target)
        write_seconds = time.perf_counter() - started
        floor = Path(scratch) / "floor.html"  # plotly.js and one small chart: the fixed cost
        floor.write_text(floor_page(), encoding="utf-8")
        times, floors = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            times.append(open_time(chromium, target)[0])
            floors.append(open_time(chromium, floor)[0])
        summary = json.loads((folder / "embedding_summary_v6.json").read_text(encoding="utf-8"))
        print(
            json.dumps(
                {
                    "source": str(args.output_dir or f"synthetic, {args.collections} collections"),
                    "collections": len(
                        set(summary["results"]) | set(summary["failed_collections"])
                    ),
                    "bytes": target.stat().st_size,
                    "write_seconds": round(write_seconds, 2),
                    "open_ms_median": statistics.median(times),
                    "open_ms": times,
                    "floor_ms_median": statistics.median(floors),
                    "floor_ms": floors,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
