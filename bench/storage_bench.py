"""12. Storage options: retrieval quality beside vector RAM and disk per point (`eval`).

Builds the heading retrieval set (`heading_retrieval.py`) from a chunk tree, embeds its corpus
once with all-MiniLM-L6-v2 (one shared embedding cache), then runs `eval` on the embedded store
(Qdrant Edge, HNSW after `optimize()`) with each storage option and prints one row per option:
nDCG@10 and Recall@100 on the test split (with their share of float32's), vector RAM per point
(computed from the options: quantized copy, plus originals unless on disk), disk per point
(measured: the collection's shard folder) and search time. Rescoring uses `--oversampling` (3).

    python bench/storage_bench.py [--chunked-dir $BENCH_CORPUS] [--max-chunks 5000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_CORPUS, MINILM, WORK  # noqa: E402
from heading_retrieval import build  # noqa: E402

from embed_collections.engine.options import EngineOptions  # noqa: E402
from embed_collections.evaluation.beir import evaluate_beir  # noqa: E402
from embed_collections.record.config import RunConfig  # noqa: E402
from embed_collections.stores.base import StorageOptions  # noqa: E402

CHOICES = {
    "float32": StorageOptions(),
    "float16": StorageOptions(vector_dtype="float16"),
    "float32 on disk": StorageOptions(on_disk=True),
    "int8": StorageOptions("int8"),
    "binary-2bit": StorageOptions("binary-2bit"),
    "binary-1.5bit": StorageOptions("binary-1.5bit"),
    "binary": StorageOptions("binary"),
    "binary-2bit x6": StorageOptions("binary-2bit", oversampling=6),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunked-dir", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--max-chunks", type=int, default=5000)
    parser.add_argument("--work", type=Path, default=WORK / "storage")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    beir = args.work / "headings"
    counts = build(args.chunked_dir, beir, args.max_chunks, 0.5, 14)
    rows = {}
    for name, storage in CHOICES.items():
        config = RunConfig(
            chunked_dir=beir,
            output_dir=args.work / name.replace(" ", "-"),
            models=(MINILM,),
            cache_dir=args.work / "cache",
            recreate=True,
            engine=EngineOptions(device=args.device, show_progress=False).resolved(),
            storage=storage,
        )
        report = evaluate_beir(beir, config).to_json()
        dense = report["modes"]["dense"]
        rows[name] = {
            "ndcg@10": dense["ndcg@10"],
            "recall@100": dense["recall@100"],
            "vector_ram_bytes_per_point": report["vector_ram_bytes_per_point"],
            "disk_bytes_per_point": report["disk_bytes_per_point"],
            "search_seconds": dense["search_seconds"],
        }
    base = rows["float32"]
    for row in rows.values():
        row["ndcg_share"] = round(row["ndcg@10"] / base["ndcg@10"], 4)
        row["recall_share"] = round(row["recall@100"] / base["recall@100"], 4)
        ram = row["vector_ram_bytes_per_point"]
        row["ram_reduction"] = round(base["vector_ram_bytes_per_point"] / ram, 1) if ram else None
    print(json.dumps({"set": counts, "rows": rows}, indent=1))
    print(
        "| storage | nDCG@10 | of float32 | Recall@100 | vector RAM B/pt | less RAM | disk B/pt |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['ndcg@10']:.4f} | {r['ndcg_share']:.1%} | {r['recall@100']:.4f} | "
            f"{r['vector_ram_bytes_per_point']:.0f} | {r['ram_reduction'] or '-'}x | "
            f"{r['disk_bytes_per_point']:.0f} |"
        )


if __name__ == "__main__":
    main()
