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
    from typing_extensions import Unpack

    from embed_collections.engine import Reranker
    from embed_collections.evaluation.beir import EvalReport
    from embed_collections.evaluation.tune_beir import TuningReport
    from embed_collections.query.collections import Collections, SearchHit
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
    "discover",
    "evaluate",
    "open",
    "report",
    "run",
    "status",
    "tune_weights",
    "upload",
]

# The types load with their modules on first use, so `import embed_collections` stays instant
# (and a spawned worker process imports only what it needs).
_LAZY_TYPES = {
    "Collections": "embed_collections.query.collections",
    "SearchHit": "embed_collections.query.collections",
    "RunSummary": "embed_collections.record.summary",
    "CollectionResult": "embed_collections.record.summary",
    "RunOptions": "embed_collections.record.config",
    "EvalReport": "embed_collections.evaluation.beir",
    "TuningReport": "embed_collections.evaluation.tune_beir",
    "RunStatus": "embed_collections.report.status",
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


def status(output_dir: str | Path | None = None) -> RunStatus:
    """A finished run at a glance (`embed-collections status`): collections (failed first),
    truncation, models, store; `str()` is the text, `to_json()` the facts, `exit_code` 0 or 3."""
    from embed_collections.report.data import load_run
    from embed_collections.report.status import RunStatus

    return RunStatus(load_run(_output_dir(output_dir)))


def report(output_dir: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write the run's page (`report.html`, or `out`) again; returns its path."""
    from embed_collections.report.html import write_report

    return write_report(_output_dir(output_dir), Path(out) if out else None)


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
