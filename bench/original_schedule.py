"""A faithful re-implementation of the original script's schedule, as the baseline `run` must beat.

For each collection, for each model: load the model, encode all of that collection's texts (no
cache, no deduplication), unload it; combine; upload the collection; build its index. Prints one
JSON line with where the time went.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--collections", nargs="+", required=True)
    parser.add_argument("--models", nargs="+", required=True)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from embed_collections.corpus.chunks import load_collection
    from embed_collections.corpus.discovery import discover_collections
    from embed_collections.engine.combine import combine_vectors
    from embed_collections.engine.models.resolve import resolve_model
    from embed_collections.stores import PointBatch, VectorLayout
    from embed_collections.stores.edge import EdgeStore
    from embed_collections.stores.open import point_id

    specs = [resolve_model(name) for name in args.models]
    found = discover_collections(args.corpus)
    spent = {"load": 0.0, "encode": 0.0, "store": 0.0, "texts": 0, "loads": 0}
    started = time.perf_counter()
    with EdgeStore(args.store) as store:
        for name in args.collections:
            chunks = load_collection(name, found[name]).chunks
            texts = [c.text for c in chunks]
            per_model = []
            for spec in specs:
                t = time.perf_counter()
                model = SentenceTransformer(str(spec.path), device="cpu")
                if spec.settings.max_seq_length:
                    model.max_seq_length = spec.settings.max_seq_length
                spent["load"] += time.perf_counter() - t
                t = time.perf_counter()
                per_model.append(model.encode(texts, batch_size=32))
                spent["encode"] += time.perf_counter() - t
                spent["texts"] += len(texts)
                spent["loads"] += 1
                del model
                gc.collect()
            t = time.perf_counter()
            vectors = combine_vectors(per_model, [1.0] * len(specs), "concat")
            layout = VectorLayout({"": int(vectors[""].shape[1])})
            store.ensure_collection(name, layout, recreate=True)
            payloads = [{"text": c.text, "chunk_id": c.chunk_id} for c in chunks]
            ids = [point_id(name, c.chunk_id) for c in chunks]
            store.upsert(name, PointBatch(ids=ids, dense=vectors, payloads=payloads))
            store.finish(name)
            spent["store"] += time.perf_counter() - t
    spent["total"] = time.perf_counter() - started
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in spent.items()}))


if __name__ == "__main__":
    main()
