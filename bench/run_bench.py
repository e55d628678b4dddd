"""Benchmarks of `embed-collections run`: overhead over plain encode, the original script's
schedule, unchanged re-runs and Qdrant loading. Prints a markdown table; raw numbers go to
bench/results/.

    python bench/run_bench.py            # the documented slice, 3 interleaved repeats (~15 min)
    python bench/run_bench.py --quick    # tiny models, five small collections (< 2 min)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from common import (
    DEFAULT_CORPUS,
    MINILM,
    WORK,
    load_texts,
    machine,
    median,
    now,
    run_timed,
    slice_collections,
    tiny_model,
)


def plain_encode_seconds(models: list[str], texts: list[str]) -> float:
    """Sum over models of `SentenceTransformer.encode` wall time on the unique texts (batch 32)."""
    import transformers
    from sentence_transformers import SentenceTransformer

    from embed_collections.engine.models.resolve import resolve_model

    transformers.utils.logging.disable_progress_bar()
    total = 0.0
    for name in models:
        spec = resolve_model(name)
        model = SentenceTransformer(str(spec.path), device="cpu")
        if spec.settings.max_seq_length:
            model.max_seq_length = spec.settings.max_seq_length
        started = time.perf_counter()
        model.encode(texts, batch_size=32)
        total += time.perf_counter() - started
    return total


def run_command(
    corpus: Path, names: list[str], models: list[str], out: Path, backend: str = "auto"
) -> list[str]:
    return [
        sys.executable, "-m", "embed_collections", "run", "-q",
        "--chunked-dir", str(corpus), "--output-dir", str(out), "--lease-dir", str(out / "leases"),
        "--device", "cpu", "--backend", backend, "--collections", *names, "--models", *models,
    ]  # fmt: skip


def original_command(corpus: Path, names: list[str], models: list[str], store: Path) -> list[str]:
    script = Path(__file__).with_name("original_schedule.py")
    return [
        sys.executable, str(script), "--corpus", str(corpus), "--store", str(store),
        "--collections", *names, "--models", *models,
    ]  # fmt: skip


def bench_pipeline(
    corpus: Path, names: list[str], models: list[str], repeats: int, backend: str, original: bool
) -> dict:
    """Overhead, original schedule and re-run, interleaved so machine noise hits all alike."""
    by_collection = load_texts(corpus, names)
    unique = list(dict.fromkeys(t for texts in by_collection.values() for t in texts))
    rows: dict[str, list[float]] = {"plain": [], "ours": [], "rerun": [], "original": []}
    details = []
    for repeat in range(repeats):
        out = WORK / f"run-{repeat}"
        shutil.rmtree(out, ignore_errors=True)
        rows["plain"].append(plain_encode_seconds(models, unique))
        command = run_command(corpus, names, models, out, backend)
        rows["ours"].append(run_timed(command)[0])
        summary = json.loads((out / "embedding_summary_v6.json").read_text())
        rows["rerun"].append(run_timed(command)[0])
        if original:
            original_store = WORK / f"original-{repeat}"
            shutil.rmtree(original_store, ignore_errors=True)
            rows["original"].append(
                run_timed(original_command(corpus, names, models, original_store))[0]
            )
        details.append(
            {"summary_models": summary["models"], "ours_total": summary["total_seconds"]}
        )
        done = {k: v for k, v in rows.items() if v}
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in done.items()))
    chunks = sum(len(t) for t in by_collection.values())
    return {
        "collections": len(names),
        "chunks": chunks,
        "unique_texts": len(unique),
        "models": models,
        "seconds": rows,
        "backend": backend,
        "medians": {k: median(v) for k, v in rows.items() if v},
        "details": details,
    }


def bench_store_loading(points: int, local_points: int) -> dict:
    """Points/s into the embedded Qdrant Edge store and into qdrant-client local mode."""
    from embed_collections.stores import PointBatch, VectorLayout
    from embed_collections.stores.edge import EdgeStore
    from embed_collections.stores.server import ServerStore

    rng = np.random.default_rng(0)
    layout = VectorLayout({"": 384})
    results = {}
    for label, count, factory in (
        ("edge", points, lambda p: EdgeStore(p)),
        ("qdrant-client local", local_points, lambda p: ServerStore(path=p)),
    ):
        vectors = rng.normal(size=(count, 384)).astype(np.float32)
        payloads = [{"text": "x" * 600, "chunk_id": str(i)} for i in range(count)]
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(count)]
        root = WORK / f"store-{label.replace(' ', '-')}"
        shutil.rmtree(root, ignore_errors=True)
        with factory(root) as store:
            store.ensure_collection("bench", layout)
            started = time.perf_counter()
            for start in range(0, count, 1024):
                batch = PointBatch(
                    ids=ids[start : start + 1024],
                    dense={"": vectors[start : start + 1024]},
                    payloads=payloads[start : start + 1024],
                )
                store.upsert("bench", batch)
            store.finish("bench", build_index=False)
            results[label] = {
                "points": count,
                "points_per_second": count / (time.perf_counter() - started),
            }
    return results


def report(pipeline: dict, stores: dict) -> str:
    m = pipeline["medians"]
    lines = [
        f"Machine: {machine()}; date {now()}; {pipeline['collections']} collections, "
        f"{pipeline['chunks']} chunks ({pipeline['unique_texts']} unique); models "
        f"{', '.join(Path(x).name for x in pipeline['models'])}; medians of "
        f"{len(pipeline['seconds']['ours'])} interleaved repeats.",
        "",
        "| measurement | seconds | ratio |",
        "|---|---|---|",
        "| plain `SentenceTransformer.encode`, unique texts, sum over models | "
        f"{m['plain']:.1f} | 1.00 |",
        f"| `embed-collections run --backend {pipeline['backend']}` (whole process, into Qdrant "
        f"Edge) | {m['ours']:.1f} | {m['ours'] / m['plain']:.2f}x plain |",
        "| original script's schedule (reload per collection, no dedup, no cache) | "
        f"{m.get('original', 0):.1f} | "
        f"{m.get('original', 0) / m['ours']:.2f}x ours |",
        f"| unchanged re-run | {m['rerun']:.1f} | "
        f"{100 * m['rerun'] / m['ours']:.1f}% of first run |",
        "",
        "| store | points | points/s |",
        "|---|---|---|",
    ]
    for label, row in stores.items():
        lines.append(f"| {label} | {row['points']} | {row['points_per_second']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--quick", action="store_true", help="tiny models, few collections")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--backend", default="auto", help="passed to `run --backend`")
    parser.add_argument(
        "--no-original", action="store_true", help="skip the original script's schedule"
    )
    parser.add_argument("--no-stores", action="store_true", help="skip the store loading test")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    names = slice_collections(args.corpus, args.quick)
    if args.quick:
        models = [str(tiny_model(32)), str(tiny_model(48))]
    else:
        models = [MINILM, str(tiny_model(48))]
    repeats = args.repeats or (1 if args.quick else 3)
    pipeline = bench_pipeline(
        args.corpus, names, models, repeats, args.backend, not args.no_original
    )
    stores = {}
    if not args.no_stores:
        stores = bench_store_loading(*((5_000, 1_000) if args.quick else (50_000, 5_000)))
    text = report(pipeline, stores)
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (WORK / f"run_bench-{stamp}.json").write_text(
        json.dumps({"pipeline": pipeline, "stores": stores, "quick": args.quick}, indent=2)
    )


if __name__ == "__main__":
    main()
