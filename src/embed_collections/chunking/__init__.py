"""Chunking: a folder of documents into `*_chunks.json` files sized to the ensemble's windows.

Above the engine (it counts with the models' own tokenizers), below the stores and the run
spine, which chunk before they run (`run --docs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from embed_collections.chunking.sizing import Sizing, build_sizing
from embed_collections.chunking.tree import ChunkReport, SkippedFile, chunk_tree
from embed_collections.engine import DEFAULT_ENSEMBLE_MODELS, resolve_ensemble

__all__ = ["ChunkReport", "SkippedFile", "Sizing", "chunk_tree", "sizing_for"]


def sizing_for(
    models: Sequence[str] | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    model_cache_dir: Path | None = None,
    trust_remote_code: bool = False,
    max_seq_length: int | None = None,
    document_prefix: Mapping[str, str] | None = None,
) -> Sizing:
    """The sizing of chunks for these models, resolved as `run` resolves them."""
    specs = resolve_ensemble(
        list(models or DEFAULT_ENSEMBLE_MODELS),
        None,
        model_cache_dir,
        trust_remote_code,
        max_seq_length,
        None,
        document_prefix,
    )
    return build_sizing(specs, chunk_size, chunk_overlap)
