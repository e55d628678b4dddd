"""embed-collections: embed trees of pre-chunked documents with a model ensemble into Qdrant
collections, then search them.

    import embed_collections as ec

    found = ec.discover("Chunked")                      # {name: Path}
    summary = ec.run("Chunked", "output", models=["sentence-transformers/all-MiniLM-L6-v2"],
                     sparse="bm25")                     # every `run` option as a keyword
    summary.ok, summary.exit_code, summary.collections
    with ec.open("output") as cols:                     # a finished run's collections + models
        hits = cols.search("how do I validate a field?", collections=["pydantic"], top_k=5)
        hits[0].collection, hits[0].chunk_id, hits[0].score, hits[0].text, hits[0].metadata

Expected failures raise `EmbedCollectionsError` (or a subclass) with a one-line message: the same
message the command line prints. The command line is a client of these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from embed_collections.errors import (
    ArchiveError,
    ChunkFileError,
    DiscoveryError,
    DiskFullError,
    EmbedCollectionsError,
    LeaseTimeoutError,
    ModelError,
    ShardDamagedError,
    StoreError,
    StoreInUseError,
    UsageError,
)

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from typing_extensions import Unpack

    from embed_collections.chunking import ChunkReport
    from embed_collections.query.collections import Collections, SearchHit
    from embed_collections.record.config import RunOptions
    from embed_collections.record.summary import CollectionResult, RunSummary

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "ChunkFileError",
    "CollectionResult",
    "Collections",
    "DiscoveryError",
    "DiskFullError",
    "EmbedCollectionsError",
    "LeaseTimeoutError",
    "ModelError",
    "RunSummary",
    "SearchHit",
    "ShardDamagedError",
    "StoreError",
    "StoreInUseError",
    "UsageError",
    "__version__",
    "chunk",
    "discover",
    "open",
    "run",
    "watch",
]

# The types load with their modules on first use, so `import embed_collections` stays instant
# (and a worker process started as `python -m embed_collections.engine.workers` imports only
# what it needs).
_LAZY_TYPES = {
    "Collections": "embed_collections.query.collections",
    "SearchHit": "embed_collections.query.collections",
    "RunSummary": "embed_collections.record.summary",
    "CollectionResult": "embed_collections.record.summary",
    "RunOptions": "embed_collections.record.config",
    "ChunkReport": "embed_collections.chunking",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_TYPES:
        import importlib

        return getattr(importlib.import_module(_LAZY_TYPES[name]), name)
    raise AttributeError(f"module 'embed_collections' has no attribute {name!r}")


def discover(
    chunked_dir: str | Path | None = None,
    pattern: str | None = None,
    max_depth: int | None = None,
) -> dict[str, Path]:
    """Every collection under `chunked_dir` by name, as `embed-collections discover` lists them
    (a folder directly holding chunk files, at most `max_depth` levels down)."""
    from embed_collections.corpus.discovery import (
        CHUNK_FILE_PATTERN,
        MAX_DISCOVERY_DEPTH,
        discover_collections,
    )
    from embed_collections.record.config import default_paths, detect_environment

    root = Path(chunked_dir) if chunked_dir else default_paths(detect_environment())[0]
    return discover_collections(
        root, pattern or CHUNK_FILE_PATTERN, MAX_DISCOVERY_DEPTH if max_depth is None else max_depth
    )


def chunk(
    source_dir: str | Path,
    chunked_dir: str | Path,
    models: list[str] | tuple[str, ...] | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    model_cache_dir: str | Path | None = None,
    trust_remote_code: bool = False,
    max_seq_length: int | None = None,
    document_prefix: dict[str, str] | list[str] | None = None,
    keep_navigation: bool = False,
) -> ChunkReport:
    """Chunk the documents under `source_dir` into `*_chunks.json` files under `chunked_dir`,
    the folder tree mirrored, every chunk within every model's window (with its document
    prefix) by that model's own tokenizer; `chunk_size`/`chunk_overlap` in tokens.

    The same input writes the same bytes; a chunk file of a page that is gone is removed; a
    file that cannot be read is skipped and listed in `report.skipped` with its reason.
    Chunks that are mostly links (a site's menu) are left out unless `keep_navigation`.
    """
    from embed_collections.chunking import chunk_tree, sizing_for
    from embed_collections.record.config import parse_prefixes

    sizing = sizing_for(
        models,
        chunk_size,
        chunk_overlap,
        Path(model_cache_dir) if model_cache_dir else None,
        trust_remote_code,
        max_seq_length,
        parse_prefixes(document_prefix, "--document-prefix"),
    )
    return chunk_tree(Path(source_dir), Path(chunked_dir), sizing, None, keep_navigation)


def run(
    chunked_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    **options: Unpack[RunOptions],
) -> RunSummary:
    """Embed every collection under `chunked_dir` with the ensemble and load it into Qdrant.

    Keywords are `embed-collections run`'s long options (`models=[...]`, `weights=[...]`,
    `sparse="bm25"`, `device="cuda"`, `qdrant_url=...`, `quiet=True` hides progress, ...); see
    `RunOptions`. Returns the summary also written to `output_dir`; `summary.exit_code` is what
    the command line would exit with (0 ok, 3 some collections failed).
    """
    from embed_collections.record.config import build_run_config
    from embed_collections.runner.pipeline import run as run_pipeline

    return run_pipeline(build_run_config(chunked_dir, output_dir, options))


def watch(
    chunked_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
    force_polling: bool | None = None,
    **options: Unpack[RunOptions],
) -> int:
    """`run`, then again on every change under `docs` (or `chunked_dir`) until `stop` is set:
    changed pages are chunked again, a burst of saves is one update, a bad page is reported
    and keeps its last good chunks. `on_update` gets one dict per update (`message`, `ok`, ...).
    Returns the last run's exit code."""
    from embed_collections.record.config import build_run_config
    from embed_collections.runner.watch import watch_run

    config = build_run_config(chunked_dir, output_dir, options)
    return watch_run(config, on_update or (lambda update: None), stop, force_polling=force_polling)


def open(  # noqa: A001 - the library's verb, as in `ec.open("output")`
    output_dir: str | Path | None = None,
    qdrant_api_key: str | None = None,
    device: str = "",
    qdrant_url: str | None = None,
    qdrant_path: str | Path | None = None,
    trust_remote_code: bool = False,
) -> Collections:
    """The collections of a finished run in `output_dir`, ready to search.

    `qdrant_url`/`qdrant_path` search a store loaded elsewhere with this run's models; a model's
    own code runs only with `trust_remote_code=True` (never because the run's record says so).
    """
    from embed_collections.query.collections import Collections
    from embed_collections.record.config import default_paths, detect_environment

    root = Path(output_dir) if output_dir else default_paths(detect_environment())[1]
    return Collections.open(
        root, qdrant_api_key, device, qdrant_url, qdrant_path, trust_remote_code
    )
