"""Rerankers by kind (`--rerank MODEL`, `--reranker-kind`): a second stage that scores
(query, text) pairs; a new kind is a `Reranker` subclass registered here."""

from __future__ import annotations

from pathlib import Path

from embed_collections.engine.models.resolve import locate_model
from embed_collections.engine.rerankers.base import Reranker
from embed_collections.engine.rerankers.cross_encoder import CrossEncoderReranker
from embed_collections.errors import UsageError

RERANKERS: dict[str, type[Reranker]] = {"cross-encoder": CrossEncoderReranker}
DEFAULT_RERANKER = "cross-encoder"


def create_reranker(
    name: str,
    kind: str = DEFAULT_RERANKER,
    model_cache_dir: Path | None = None,
    trust_remote_code: bool = False,
    device: str = "",
    max_tokens: int = 0,
    max_length: int | None = None,
) -> Reranker:
    """The reranker for `--rerank NAME`: a folder, a model cache entry, a package or the hub,
    found as embedding models are (not yet loaded: `load()`); `max_length`: tokens read of each
    (query, text) pair [the model's limit, 512 for MiniLM cross-encoders]."""
    if kind not in RERANKERS:
        raise UsageError(f'Unknown reranker kind "{kind}". Choose one of {", ".join(RERANKERS)}')
    if not isinstance(name, str) or not name.strip():
        raise UsageError("--rerank needs a model: a folder, a cache entry or a hub id")
    path, source, _ = locate_model(name.strip(), model_cache_dir)
    return RERANKERS[kind](
        name=name.strip(),
        path=path,
        source=source,
        trust_remote_code=trust_remote_code,
        device=device,
        max_tokens=max_tokens,
        max_length=max_length,
    )
