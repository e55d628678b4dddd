"""GPU throughput: fp16 vs fp32 on the same model, and the share of time spent outside the model.

Runs as-is on a CUDA machine (skips itself elsewhere):

    python bench/gpu.py [--corpus DIR] [--model sentence-transformers/all-MiniLM-L6-v2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import DEFAULT_CORPUS, MINILM, load_texts, machine, median, now, slice_collections


def model_only_seconds(backend, texts: list[str], batch_size: int) -> float:
    """Forward passes alone: tokenised up front, timed with CUDA synchronisation."""
    import torch

    model = backend.model
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    batches = [
        model.tokenize([texts[i] for i in order[s : s + batch_size]])
        for s in range(0, len(order), batch_size)
    ]
    batches = [{k: v.to(model.device) for k, v in b.items()} for b in batches]
    torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        for features in batches:
            model.forward(features)
    torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(model_name: str, texts: list[str], dtype: str, batch_size: int) -> dict:
    from embed_collections.backends import SentenceTransformerBackend
    from embed_collections.cache import EmbeddingCache, text_digest
    from embed_collections.embedding import embed_pending
    from embed_collections.engine_options import EngineOptions
    from embed_collections.models import model_fingerprint, resolve_model

    spec = resolve_model(model_name)
    with tempfile.TemporaryDirectory() as tmp:
        options = EngineOptions(
            device="cuda", dtype=dtype, batch_size=batch_size, show_progress=False,
            lease_dir=Path(tmp) / "leases",
        ).resolved()  # fmt: skip
        with EmbeddingCache(Path(tmp) / "cache.sqlite") as cache:
            fingerprint = model_fingerprint(spec, options.backend, options.dtype)
            by_digest = {text_digest(t): t for t in texts}
            telemetry = embed_pending(spec, fingerprint, by_digest, cache, options, [])
    backend = SentenceTransformerBackend(spec, dtype)
    backend.load("cuda")
    pure = model_only_seconds(backend, list(dict.fromkeys(texts)), batch_size)
    return {
        "dtype": dtype,
        "chunks_per_second": telemetry.chunks_embedded / telemetry.embed_seconds,
        "tokens_per_second": telemetry.tokens_embedded / telemetry.embed_seconds,
        "outside_model_share": max(0.0, 1 - pure / telemetry.embed_seconds),
        "padding_efficiency": telemetry.tokens_embedded / max(1, telemetry.padded_tokens),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("No CUDA device: nothing to measure.")
        return
    names = slice_collections(args.corpus, quick=False)
    texts = [t for group in load_texts(args.corpus, names).values() for t in group]
    rows = {"float32": [], "float16": []}
    for _ in range(args.repeats):
        for dtype in rows:
            rows[dtype].append(measure(args.model, texts, dtype, args.batch_size))
    print(
        f"Machine: {machine()}, {torch.cuda.get_device_name()}; date {now()}; {len(texts)} chunks"
    )
    print("| dtype | chunks/s | tokens/s | share outside the model | padding efficiency |")
    print("|---|---|---|---|---|")
    for dtype, runs in rows.items():
        cells = [median([r[k] for r in runs]) for k in
                 ("chunks_per_second", "tokens_per_second", "outside_model_share",
                  "padding_efficiency")]  # fmt: skip
        print(f"| {dtype} | {cells[0]:.0f} | {cells[1]:.0f} | {cells[2]:.0%} | {cells[3]:.2f} |")


if __name__ == "__main__":
    main()
