"""CPU token budget: chunks/s of MiniLM with fixed 32-text batches vs budgets, per backend.

Usage: python bench/cpu_budget.py [--texts 600] [--repeats 2] [--budgets 2048,8192]
           [--backends torch,onnx,openvino] [--collections Docling] [--twice]
Each configuration embeds the same unique texts of the corpus slice into a fresh cache through
the engine (`embed_pending`), interleaved, median of the repeats. `--twice` adds torch at each
budget with its tokenise-once path switched off (the model's own preprocessing of every batch
after the counting pass, as before), to measure what tokenising once saves.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_CORPUS, MINILM, load_texts, slice_collections  # noqa: E402


def main() -> None:
    """Print seconds and chunks/s per configuration."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budgets", default="2048,8192")
    parser.add_argument("--backends", default="torch")
    parser.add_argument("--collections", nargs="+", help="these collections [the slice]")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--twice", action="store_true", help="torch tokenising twice too")
    args = parser.parse_args()

    from embed_collections.engine.backends.transformer import SentenceTransformerBackend
    from embed_collections.engine.cache import EmbeddingCache, text_digest
    from embed_collections.engine.executors.local import embed_pending
    from embed_collections.engine.models.folders import model_fingerprint
    from embed_collections.engine.models.resolve import resolve_model
    from embed_collections.engine.options import EngineOptions

    texts = list(
        dict.fromkeys(
            t
            for ts in load_texts(
                args.corpus, args.collections or slice_collections(args.corpus, False)
            ).values()
            for t in ts
        )
    )[: args.texts]
    spec = resolve_model(MINILM)
    configs: dict[str, dict] = {}
    twice: set[str] = set()  # torch without its verified counter: tokenised again per batch
    for backend in args.backends.split(","):
        configs[f"{backend}, 32 texts"] = dict(
            backend=backend, batch_size=32, max_batch_tokens=10**9
        )
        for b in args.budgets.split(","):
            configs[f"{backend}, {b} tokens"] = dict(backend=backend, max_batch_tokens=int(b))
            if args.twice and backend == "torch":
                twice.add(f"torch twice, {b} tokens")
                configs[f"torch twice, {b} tokens"] = dict(backend="torch", max_batch_tokens=int(b))
    times: dict[str, list[float]] = {name: [] for name in configs}
    by_digest = {text_digest(t): t for t in texts}
    for _ in range(args.repeats):
        for name, settings in configs.items():
            verify = SentenceTransformerBackend.verified_counter
            if name in twice:
                SentenceTransformerBackend.verified_counter = lambda self: None  # type: ignore
            with tempfile.TemporaryDirectory() as tmp:
                opts = EngineOptions(
                    device="cpu", show_progress=False,
                    lease_dir=Path(tmp) / "leases", **settings,
                ).resolved()  # fmt: skip
                with EmbeddingCache(Path(tmp) / "c.sqlite") as cache:
                    started = time.perf_counter()
                    telemetry = embed_pending(
                        spec,
                        model_fingerprint(spec, opts.backend, opts.dtype),
                        by_digest,
                        cache,
                        opts,
                        [],
                    )
                    times[name].append(time.perf_counter() - started)
                    assert telemetry.chunks_embedded == len(texts)
            SentenceTransformerBackend.verified_counter = verify
    print(f"{len(texts)} unique texts, MiniLM, CPU; median of {args.repeats}")
    for name, values in times.items():
        median = statistics.median(values)
        rounded = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:>24}: {median:6.1f} s  {len(texts) / median:6.1f} chunks/s  ({rounded})")


if __name__ == "__main__":
    main()
