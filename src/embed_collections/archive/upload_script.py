#!/usr/bin/env python3
"""Recreate a Qdrant collection from the export files beside this script.

Needs only numpy and qdrant-client. Point ids are fixed, so a second run leaves the same points;
an existing collection with the same configuration is reused (--recreate drops it first).
    QDRANT_API_KEY=... python THIS_SCRIPT --url https://my-qdrant:6333
    python THIS_SCRIPT --path ./qdrant_local     # qdrant-client local mode
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

HERE = Path(__file__).resolve().parent
# The export writes its collection's settings here, in the copy it puts beside its files:
# collection, dense (vector name -> size; "" is the single unnamed vector, cosine, on disk),
# sparse (names: BM25 term weights, Qdrant applies the IDF modifier unless sparse_idf is false,
# as for a learned sparse model's weights), embeddings (vector name ->
# .npy file), metadata, texts and sparse_file (the other files).
CONFIG: dict[str, Any] = {}
CONFIG_LINE = "CONFIG: dict[str, Any] = {}\n"


def fill_config(source: str, config: dict[str, Any]) -> str:
    """This script's source with a collection's settings in place of the empty CONFIG."""
    if source.count(CONFIG_LINE) != 1:
        raise ValueError("the upload script's CONFIG line is missing")
    head, _, tail = source.partition(CONFIG_LINE)
    return f"{head}CONFIG: dict[str, Any] = {config!r}\n{tail}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="Qdrant server URL (API key from env QDRANT_API_KEY)")
    where.add_argument("--path", help="folder for qdrant-client local mode")
    parser.add_argument("--collection", default=CONFIG["collection"], help="target collection")
    parser.add_argument("--batch-size", type=int, default=256, help="points per request")
    parser.add_argument("--retries", type=int, default=3, help="retries of a failed request")
    parser.add_argument("--recreate", action="store_true", help="drop the collection first")
    return parser.parse_args()


def load() -> tuple[list[dict], list[str], dict[str, np.ndarray], list[dict]]:
    """The export's rows: metadata, texts, vectors (memory-mapped) and sparse vectors."""
    metadata = json.loads((HERE / CONFIG["metadata"]).read_text(encoding="utf-8"))
    texts = json.loads((HERE / CONFIG["texts"]).read_text(encoding="utf-8"))
    files = CONFIG["embeddings"].items()
    vectors = {name: np.load(HERE / file, mmap_mode="r") for name, file in files}
    sparse: list[dict] = []
    if CONFIG["sparse_file"]:
        with open(HERE / CONFIG["sparse_file"], encoding="utf-8") as handle:
            sparse = [json.loads(line) for line in handle]
    if len({len(metadata), len(texts), len(sparse or texts), *map(len, vectors.values())}) != 1:
        sys.exit(f"{HERE}: the export files are not aligned (export or download them again)")
    return metadata, texts, vectors, sparse


def ensure_collection(client: QdrantClient, name: str, recreate: bool) -> None:
    """Create the collection, or check an existing one has this export's configuration."""
    dense, sparse_names = CONFIG["dense"], CONFIG["sparse"]
    if client.collection_exists(name) and not recreate:
        params = client.get_collection(name).config.params
        vectors = params.vectors if isinstance(params.vectors, dict) else {"": params.vectors}
        held = {key: value.size for key, value in vectors.items() if value is not None}
        if held != dense or sorted(params.sparse_vectors or {}) != sorted(sparse_names):
            sys.exit(f"Collection {name!r} exists with another configuration (use --recreate)")
        return
    if client.collection_exists(name):
        client.delete_collection(name)
    vector_params = {
        n: models.VectorParams(size=size, distance=models.Distance.COSINE, on_disk=True)
        for n, size in dense.items()
    }
    idf = models.Modifier.IDF if CONFIG.get("sparse_idf", True) else None
    sparse = {n: models.SparseVectorParams(modifier=idf) for n in sparse_names}
    client.create_collection(
        name,
        vectors_config=vector_params[""] if set(dense) == {""} else vector_params,
        sparse_vectors_config=sparse or None,
    )


def point(
    i: int,
    metadata: list[dict],
    texts: list[str],
    vectors: dict[str, np.ndarray],
    sparse: list[dict],
) -> models.PointStruct:
    """Row `i` as a point with the run's id, vectors and payload."""
    meta, text = metadata[i], texts[i]
    vector: dict[str, Any] = {
        name: np.asarray(rows[i], np.float32).tolist() for name, rows in vectors.items()
    }
    for name in CONFIG["sparse"]:
        vector[name] = models.SparseVector(indices=sparse[i]["indices"], values=sparse[i]["values"])
    fields = {key: meta[key] for key in ("chunk_id", "doc_id", "source_file", "metadata")}
    payload = {"text": text, **fields, "content_sha256": hashlib.sha256(text.encode()).hexdigest()}
    unnamed = set(vector) == {""}
    return models.PointStruct(
        id=meta["point_id"], vector=vector[""] if unnamed else vector, payload=payload
    )


def main() -> None:
    if not CONFIG:
        sys.exit("This is the upload script's template: run the copy in an export folder")
    args = parse_args()
    metadata, texts, vectors, sparse = load()
    key = os.environ.get("QDRANT_API_KEY")
    client = QdrantClient(url=args.url, api_key=key) if args.url else QdrantClient(path=args.path)
    try:
        ensure_collection(client, args.collection, args.recreate)
        for start in range(0, len(texts), max(1, args.batch_size)):
            rows = range(start, min(start + max(1, args.batch_size), len(texts)))
            points = [point(i, metadata, texts, vectors, sparse) for i in rows]
            for attempt in range(args.retries + 1):
                try:
                    client.upsert(args.collection, points=points, wait=True)
                    break
                except Exception as error:  # any failed request is retried, then reported
                    if attempt == args.retries:
                        sys.exit(f"Upsert to {args.collection!r} failed: {error}")
                    time.sleep(0.5 * 2**attempt)
        count = client.count(args.collection, exact=True).count
        print(f"{args.collection}: {len(texts)} points uploaded, {count} in the collection")
    finally:
        client.close()


if __name__ == "__main__":
    main()
