"""Sparse encoders by kind (`--sparse KIND`): BM25, and learned sparse models (`--sparse MODEL`, a
sentence-transformers SparseEncoder, kind `splade`); a new kind is a class registered here."""

from __future__ import annotations

from embed_collections.engine.encoders.bm25 import SparseEncoder
from embed_collections.engine.encoders.splade import KIND as SPLADE
from embed_collections.engine.encoders.splade import SpladeEncoder, create_splade
from embed_collections.errors import UsageError

SPARSE_ENCODERS: dict[str, type[SparseEncoder]] = {"bm25": SparseEncoder, SPLADE: SpladeEncoder}


def create_sparse_encoder(
    kind: str,
    language: str = "english",
    k: float = 1.2,
    b: float = 0.75,
    avg_len: float = 256.0,
    model: str = "",
    path: str = "",
) -> SparseEncoder:
    """The sparse encoder for `--sparse KIND` (bm25) or `--sparse MODEL` (a SparseEncoder folder,
    cache entry or hub id), or a usage error naming the choices; `model`/`path`: a recorded
    learned model."""
    if kind == SPLADE:
        return create_splade(model, language, k, b, avg_len, path)
    if kind in SPARSE_ENCODERS:
        return SPARSE_ENCODERS[kind](kind, language, k, b, avg_len)
    if not kind.strip():
        raise UsageError("--sparse needs bm25 or a sentence-transformers SparseEncoder model")
    return create_splade(kind, language, k, b, avg_len)
