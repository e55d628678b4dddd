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
    from embed_collections.engine import Reranker
    from embed_collections.evaluation.beir import EvalReport
    from embed_collections.evaluation.tune_beir import TuningReport
    from embed_collections.query.collections import Collections
    from embed_collections.query.hits import SearchHit
    from embed_collections.record.config import RunOptions
    from embed_collections.record.summary import CollectionResult, RunSummary
    from embed_collections.report.status import RunStatus

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
    "evaluate",
    "open",
    "run",
    "serve",
    "status",
    "tune_weights",
    "upload",
    "write_report",
    "watch",
]

# The types load with their modules on first use, so `import embed_collections` stays instant
# (and a spawned worker process imports only what it needs).
_LAZY_TYPES = {
    "Collections": "embed_collections.query.collections",
    "SearchHit": "embed_collections.query.hits",
    "RunSummary": "embed_collections.record.summary",
    "CollectionResult": "embed_collections.record.summary",
    "RunOptions": "embed_collections.record.config",
    "EvalReport": "embed_collections.evaluation.beir",
    "TuningReport": "embed_collections.evaluation.tune_beir",
    "RunStatus": "embed_collections.report.status",
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
    *,
    qdrant_url: str | None = None,
    qdrant_path: str | Path | None = None,
    qdrant_api_key: str | None = None,
    device: str = "",
    trust_remote_code: bool = False,
    rerank: str | Path | Reranker | None = None,
) -> Collections:
    """The collections of a finished run in `output_dir`, ready to search (`search`).

    Only collections in the state the last finished run left (its `run_finished.json`) are
    opened: one a later run changed and did not finish is left out, with a warning.
    `qdrant_url`/`qdrant_path` search a store loaded elsewhere with this run's models; a model's
    own code runs only with `trust_remote_code=True` (never because the run's record says so);
    `rerank`: a cross-encoder (folder, cache entry, hub id or `Reranker`), loaded now, that
    reorders every search's first `rerank_top_n` candidates.
    """
    from embed_collections.query.collections import Collections

    return Collections.open(
        _output_dir(output_dir),
        qdrant_api_key=qdrant_api_key,
        device=device,
        qdrant_url=qdrant_url,
        qdrant_path=qdrant_path,
        trust_remote_code=trust_remote_code,
        rerank=rerank,
    )


def evaluate(
    beir_dir: str | Path,
    output_dir: str | Path | None = None,
    *,
    split: str = "test",
    modes: list[str] | None = None,
    fusion: str = "rrf",
    rrf_k: int = 60,
    rerank: str | Path | None = None,
    rerank_top_n: list[int] | None = None,
    **options: Unpack[RunOptions],
) -> EvalReport:
    """Score an ensemble on a BEIR folder (`embed-collections eval`): nDCG@10, Recall@100 and
    MRR@10 per search mode, also written to `output_dir/eval_results.json`.

    `options` are `run`'s (models, weights, sparse, device, storage, ...); `output_dir` holds
    the corpus's chunk file, store and cache [./output/eval]. With `rerank` (a cross-encoder),
    every mode is scored again reranked, `MODE+rerank@N` for each N of `rerank_top_n` [50].
    """
    from embed_collections.evaluation.beir import evaluate_beir

    root, config = _eval_config(output_dir, options)
    report_ = evaluate_beir(
        Path(beir_dir), config, modes, split, fusion, rrf_k, rerank, rerank_top_n
    )
    _refresh_report(root)
    return report_


def tune_weights(
    beir_dir: str | Path,
    output_dir: str | Path | None = None,
    *,
    tune_split: str = "train",
    split: str = "test",
    weights_out: str | Path | None = None,
    **options: Unpack[RunOptions],
) -> TuningReport:
    """Learn ensemble weights on `tune_split` of a BEIR folder and score them on `split`
    (`eval --tune-weights`); the recommended weights go to a file `run(weights_file=...)`
    reads (`weights_out`, else `output_dir/weights.json`)."""
    from embed_collections.evaluation.tune_beir import tune_beir

    root, config = _eval_config(output_dir, options)
    out = Path(weights_out) if weights_out else None
    report_ = tune_beir(Path(beir_dir), config, tune_split=tune_split, split=split, weights_out=out)
    _refresh_report(root)
    return report_


def upload(
    path: str | Path,
    *,
    qdrant_url: str | None = None,
    qdrant_path: str | Path | None = None,
    qdrant_api_key: str | None = None,
    collections: list[str] | None = None,
    recreate: bool = False,
    quantization: str | None = None,
    vector_dtype: str | None = None,
    on_disk: bool | None = None,
    oversampling: float | None = None,
) -> dict[str, int]:
    """Load an export directory or zip (`run(export=True)`) into Qdrant: a server
    (`qdrant_url`) or an embedded store (`qdrant_path`); collection -> points loaded.

    Every file is checked against the manifest first; collections keep the run's storage
    options unless given here.
    """
    from embed_collections.archive.upload import upload_export
    from embed_collections.record.config import build_storage
    from embed_collections.stores.open import open_store

    if bool(qdrant_url) == bool(qdrant_path):
        raise UsageError(
            "Give one target store: --qdrant-path DIR (embedded) or --qdrant-url URL (a server)"
        )
    given: dict[str, Any] = {"quantization": quantization, "vector_dtype": vector_dtype}
    given |= {"on_disk": on_disk, "oversampling": oversampling}
    storage = build_storage(given) if any(v for v in given.values()) else None
    # the embedded store in a child process, as in `run`: a full disk under its memory maps
    # (SIGBUS) is then a message, not a dead process
    store = open_store(qdrant_url, Path(qdrant_path) if qdrant_path else None, qdrant_api_key,
                       isolated=True)  # fmt: skip
    try:
        return upload_export(Path(path), store, collections or None, recreate, storage)
    finally:
        store.close()


def serve(
    output_dir: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    mcp: bool = False,
    qdrant_url: str | None = None,
    qdrant_path: str | Path | None = None,
    qdrant_api_key: str | None = None,
    device: str = "",
    trust_remote_code: bool = False,
    max_batch: int = 32,
    threads: int | None = None,
    poll_seconds: float = 2.0,
    api_key: str | None = None,
    no_auth: bool = False,
    allowed_hosts: tuple[str, ...] = (),
    cors_origin: str | None = None,
    request_timeout: float = 10.0,
    max_body: int = 1 << 20,
    max_connections: int = 2048,
    describe: tuple[str, ...] = (),
    tool_description: tuple[str, ...] = (),
    rerank: str | None = None,
    rerank_top_n: int = 50,
    rerank_max_length: int | None = None,
    log_level: str = "warning",
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve a finished run until interrupted (`embed-collections serve`): an HTTP JSON API on
    `host:port` (0: any free port, said to `announce`) with MCP at /mcp/, or MCP over stdio
    with `mcp=True`. Models load once; a newer finished run is picked up (`poll_seconds`). Only
    loopback host names are served unless `allowed_hosts`; a non-loopback `host` needs `api_key`
    (or `no_auth`); `describe` (`NAME=TEXT`) tells agents what a collection holds and
    `tool_description` (`TOOL=TEXT`) replaces an MCP tool's description; `rerank` (a
    cross-encoder) reranks every search's first `rerank_top_n` candidates unless a request says
    otherwise. Needs the `serve` extra."""
    try:
        from embed_collections.query.serving import serve_run
    except ImportError as error:
        raise UsageError(
            f"serve needs its extra ({error.name} is missing): "
            "pip install 'embed-collections[serve]'"
        ) from error
    serve_run(
        _output_dir(output_dir), host=host, port=port, mcp_stdio=mcp, qdrant_url=qdrant_url,
        qdrant_path=Path(qdrant_path) if qdrant_path else None, qdrant_api_key=qdrant_api_key,
        device=device, trust_remote_code=trust_remote_code, max_batch=max_batch,
        threads=threads, poll_seconds=poll_seconds, api_key=api_key, no_auth=no_auth,
        allowed_hosts=allowed_hosts, cors_origin=cors_origin, request_timeout=request_timeout,
        max_body=max_body, max_connections=max_connections, describe=describe,
        tool_description=tool_description, rerank=rerank, rerank_top_n=rerank_top_n,
        rerank_max_length=rerank_max_length, log_level=log_level,
        announce=announce,
    )  # fmt: skip


def status(output_dir: str | Path | None = None) -> RunStatus:
    """A finished run at a glance (`embed-collections status`): collections (failed first),
    truncation, models, store; `str()` is the text, `to_json()` the facts, `exit_code` 0 or 3."""
    from embed_collections.report.data import load_run
    from embed_collections.report.status import RunStatus

    return RunStatus(load_run(_output_dir(output_dir)))


def write_report(output_dir: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write the run's page (`report.html`, or `out`) again; returns its path. (Not `report`:
    that is the name of the package's `report/` wing.)"""
    from embed_collections.report import html

    return html.write_report(_output_dir(output_dir), Path(out) if out else None)


def _output_dir(output_dir: str | Path | None) -> Path:
    """The given output directory, else the environment's default (./output, Kaggle's)."""
    from embed_collections.record.config import default_paths, detect_environment

    return Path(output_dir) if output_dir else default_paths(detect_environment())[1]


def _eval_config(output_dir: str | Path | None, options: Any) -> tuple[Path, Any]:
    """An eval's output directory [./output/eval] and the run configuration it embeds with."""
    from embed_collections.record.config import build_run_config

    root = Path(output_dir) if output_dir else _output_dir(None) / "eval"
    return root, build_run_config(root / "beir", root, options)


def _refresh_report(output_dir: Path) -> None:
    """Re-write an eval's report.html with the results just written (never fatal)."""
    import logging

    from embed_collections.report.html import write_report

    try:
        write_report(output_dir)
    except (EmbedCollectionsError, OSError) as error:
        logging.getLogger(__name__).warning("The report could not be written: %s", error)
