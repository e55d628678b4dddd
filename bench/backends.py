"""CPU backends on one collection: chunks/s and cosine to torch fp32, as a markdown table.

Every backend embeds the same texts in the engine's order (sorted by token count, longest first,
batches of 32), except the baseline, plain `SentenceTransformer.encode(texts, batch_size=32)`.
Rounds are interleaved (each round runs every backend once) and medians reported, because other
work may share the CPU. Wall-clock rates are what users see; CPU seconds per chunk (process time,
all threads) are less sensitive to neighbours, but count onnxruntime's spin-waiting as work.

    python bench/backends.py                         # Docling, MiniLM, 3 rounds (~15 min here)
    python bench/backends.py --rounds 1 --threads 2 --limit 64  # a quick look
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_COLLECTION = REPO.parent / "shared" / "corpus" / "Chunked" / "Docling"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def engine_order(backend, texts: list[str]) -> list[int]:
    """The engine's order: token count, longest first (embedding.run_batches)."""
    counts = backend.token_counts(texts)
    return sorted(range(len(texts)), key=lambda i: -counts[i])


def timed(function) -> tuple[float, float, np.ndarray]:
    """Wall seconds, CPU seconds (all threads) and the result of a call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def batched(backend, texts: list[str], order: list[int], batch_size: int):
    """Embed in the engine's batches; vectors returned in the texts' original order."""

    def run() -> np.ndarray:
        vectors = np.zeros((len(texts), backend.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            vectors[rows] = backend.embed([texts[i] for i in rows])
        return vectors

    return run


def candidates(spec, names: list[str], threads: list[int], batch_size: int, texts: list[str]):
    """(label, backend name, threads, callable) for every measurement, loading each backend once."""
    import transformers
    from sentence_transformers import SentenceTransformer

    from embed_collections.engine.backends.runtime import (
        RuntimeBackend,
        runtime_installed,
        split_backend,
    )
    from embed_collections.engine.backends.transformer import SentenceTransformerBackend

    transformers.utils.logging.disable_progress_bar()
    torch_backend = SentenceTransformerBackend(spec, "float32")
    torch_backend.load("cpu")
    order = engine_order(torch_backend, texts)
    plain = SentenceTransformer(str(spec.path), device="cpu")
    plain.max_seq_length = torch_backend.max_seq_length
    rows = [
        ("encode (baseline)", "encode", 0, lambda: plain.encode(texts, batch_size=batch_size)),
        ("torch", "torch", 0, batched(torch_backend, texts, order, batch_size)),
    ]
    for name in names:
        if not runtime_installed(split_backend(name)[0]):
            print(f"skipping {name}: runtime not installed", file=sys.stderr)
            continue
        for count in threads:
            backend = RuntimeBackend(spec, name, threads=count)
            backend.load("cpu")
            backend.reference = None  # the int8 self-check is measured here, not in the timing
            rows.append((name, name, count, batched(backend, texts, order, batch_size)))
    return rows


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", type=Path, default=DEFAULT_COLLECTION)
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", default="2,1", help="onnx/openvino thread counts to measure")
    parser.add_argument(
        "--backends", default="onnx,openvino,onnx-int8,openvino-int8", help="runtime backends"
    )
    parser.add_argument("--limit", type=int, default=0, help="only the first N chunks (quick)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s - %(message)s")

    import torch

    from embed_collections.corpus.chunks import load_collection
    from embed_collections.engine.models.resolve import resolve_model

    spec = resolve_model(args.model)
    texts = [c.text for c in load_collection(args.collection.name, args.collection).chunks]
    texts = texts[: args.limit] if args.limit else texts
    threads = [int(t) for t in args.threads.split(",") if t]
    rows = candidates(spec, args.backends.split(","), threads, args.batch_size, texts)
    walls: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    cpus: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    vectors: dict[int, np.ndarray] = {}
    for round_number in range(args.rounds):
        for index, (label, _, count, run) in enumerate(rows):
            wall, cpu, result = timed(run)
            walls[index].append(wall)
            cpus[index].append(cpu)
            vectors[index] = np.asarray(result, dtype=np.float32)
            print(
                f"round {round_number + 1}: {label} x{count or torch.get_num_threads()} "
                f"{len(texts) / wall:.1f} chunks/s",
                file=sys.stderr,
                flush=True,
            )
    reference = vectors[1]  # torch fp32 in the engine's order
    baseline = len(texts) / statistics.median(walls[0])
    print(
        f"\n{len(texts)} chunks of {args.collection.name}, {spec.name} (max_seq_length "
        f"{spec.settings.max_seq_length}), batch {args.batch_size}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), medians of {args.rounds}\n"
    )
    print(
        "| backend | threads | chunks/s | vs encode | CPU ms/chunk | runs (chunks/s) "
        "| cosine vs torch mean | min |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for index, (label, _, count, _) in enumerate(rows):
        rate = len(texts) / statistics.median(walls[index])
        cpu_ms = 1000 * statistics.median(cpus[index]) / len(texts)
        runs = ", ".join(f"{len(texts) / w:.1f}" for w in walls[index])
        cos = cosine(vectors[index], reference)
        print(
            f"| {label} | {count or torch.get_num_threads()} | {rate:.1f} | {rate / baseline:.2f}x "
            f"| {cpu_ms:.0f} | {runs} | {cos.mean():.6f} | {cos.min():.6f} |"
        )


if __name__ == "__main__":
    main()
