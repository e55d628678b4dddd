"""Sparse encoders by kind (`--sparse KIND`): BM25 today; a new kind is a class registered here."""

from __future__ import annotations

from embed_collections.engine.encoders.bm25 import SparseEncoder
from embed_collections.errors import UsageError

SPARSE_ENCODERS: dict[str, type[SparseEncoder]] = {"bm25": SparseEncoder}


def create_sparse_encoder(
    kind: str, language: str = "english", k: float = 1.2, b: float = 0.75, avg_len: float = 256.0
) -> SparseEncoder:
    """The sparse encoder for `--sparse KIND`, or a usage error listing the kinds."""
    if kind not in SPARSE_ENCODERS:
        kinds = ", ".join(SPARSE_ENCODERS)
        raise UsageError(f'Unknown sparse model "{kind}". Choose one of {kinds}')
    return SPARSE_ENCODERS[kind](kind, language, k, b, avg_len)
