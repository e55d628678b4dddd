"""BM25 sparse vectors, from the embedded Qdrant engine's own tokenizer and scorer.

Documents get term-frequency weights saturated by (k, b, avg_len); queries get weight 1 per unique
term; the store multiplies by IDF (the `bm25` sparse vector has Qdrant's IDF modifier), so the
score is BM25 computed over the collection itself. Tokenisation: Qdrant's word tokenizer,
lowercased, with the Snowball stemmer and stop-words of `--sparse-language` (english by default;
german, french, spanish, russian and the other Snowball languages work too).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from embed_collections.engine.cache import EmbeddingCache
from embed_collections.errors import UsageError

VECTOR_NAME = "bm25"


@dataclass
class SparseEncoder:
    """A configured BM25 model; its fingerprint keys the cache like a dense model's."""

    kind: str
    language: str
    k: float
    b: float
    avg_len: float

    idf = True  # the store multiplies term weights by IDF (see the module's docstring)

    def __post_init__(self) -> None:
        from qdrant_edge import Bm25, Bm25Config

        try:
            self.model = Bm25(
                Bm25Config(k=self.k, b=self.b, avg_len=self.avg_len, language=self.language)
            )
        except ValueError as error:
            raise UsageError(f"Invalid BM25 settings: {error}") from error

    @property
    def fingerprint(self) -> str:
        settings = {
            "kind": self.kind,
            "language": self.language,
            "k": self.k,
            "b": self.b,
            "avg_len": self.avg_len,
            "engine": "qdrant-edge-py 0.9",
        }
        return "sparse-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "language": self.language,
            "k": self.k,
            "b": self.b,
            "avg_len": self.avg_len,
        }

    def embed_document(self, text: str) -> tuple[list[int], list[float]]:
        vector = self.model.embed_document(text)
        return list(vector.indices), list(vector.values)

    def embed_query(self, text: str) -> tuple[list[int], list[float]]:
        vector = self.model.embed_query(text)
        return list(vector.indices), list(vector.values)

    def embed_documents(self, texts: list[str]) -> list[tuple[list[int], list[float]]]:
        """Many documents at once (a learned model batches them)."""
        return [self.embed_document(text) for text in texts]


def pack(indices: list[int], values: list[float]) -> bytes:
    """Cache value of a sparse vector: uint32 indices then float32 values."""
    return np.asarray(indices, dtype=np.uint32).tobytes() + np.asarray(values, np.float32).tobytes()


def unpack(blob: bytes) -> tuple[list[int], list[float]]:
    half = len(blob) // 2
    return (
        np.frombuffer(blob[:half], dtype=np.uint32).tolist(),
        np.frombuffer(blob[half:], dtype=np.float32).tolist(),
    )


def embed_pending(encoder: SparseEncoder, texts: dict[bytes, str], cache: EmbeddingCache) -> int:
    """Encode and cache the texts that have no sparse vector yet; returns how many were new."""
    missing = cache.missing(encoder.fingerprint, texts)
    for start in range(0, len(missing), 4096):
        part = missing[start : start + 4096]
        blobs = [pack(*vector) for vector in encoder.embed_documents([texts[d] for d in part])]
        cache.put_many(encoder.fingerprint, part, blobs)
    return len(missing)


def cached_vectors(
    encoder: SparseEncoder, digests: list[bytes], cache: EmbeddingCache
) -> list[tuple[list[int], list[float]]]:
    """Sparse vectors for the digests, in order, from the cache."""
    return [unpack(blob) for blob in cache.get_many(encoder.fingerprint, digests)]
