"""The spine of a run: discover, preflight, load chunks, embed model-major, combine, store.

Collections are processed in waves of at most `wave_size` chunks so memory stays flat on huge
corpora; within a wave every model is loaded once (a typical corpus is a single wave).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from embed_collections import sparse as sparse_vectors
from embed_collections.cache import EmbeddingCache, text_digest
from embed_collections.chunks import Chunk, LoadedCollection, load_collection
from embed_collections.config import (
    LOG_FILE,
    RUN_CONFIG_FILE,
    SUMMARY_FILE,
    RunConfig,
    saved_config,
    write_json_atomic,
)
from embed_collections.discovery import discover_collections, filter_collections, find_chunk_files
from embed_collections.embedding import embed_pending, model_fingerprint
from embed_collections.ensemble import check_combine, combine_vectors, combined_dims, vector_names
from embed_collections.errors import EmbedCollectionsError, StoreError
from embed_collections.lease import LeaseEvent
from embed_collections.models import ModelSpec, fingerprint_folder, resolve_ensemble
from embed_collections.stores import PointBatch, Store, VectorLayout
from embed_collections.stores.open import open_store, point_id
from embed_collections.summary import (
    CollectionResult,
    RunSummary,
    log_collection_completion,
    log_collection_header,
    log_processing_summary,
)
from embed_collections.telemetry import ModelTelemetry

log = logging.getLogger("embed_collections.pipeline")

MIN_FREE_BYTES = 200 * 1024 * 1024


@dataclass
class Ensemble:
    """The resolved models with their cache fingerprints, and what the store keeps per point."""

    specs: list[ModelSpec]
    fingerprints: list[str]
    combine: str
    sparse: sparse_vectors.SparseEncoder | None = None
    telemetry: dict[str, ModelTelemetry] = field(default_factory=dict)

    @property
    def weights(self) -> list[float]:
        return [spec.weight for spec in self.specs]

    def dims(self, cache: EmbeddingCache) -> list[int | None]:
        return [cache.model_dim(fp) or spec.dim for spec, fp in zip(self.specs, self.fingerprints)]

    def layout(self, cache: EmbeddingCache) -> VectorLayout | None:
        """The store layout, or None while a model's dimension is still unknown."""
        dims = self.dims(cache)
        if any(d is None for d in dims):
            return None
        sparse = (sparse_vectors.VECTOR_NAME,) if self.sparse else ()
        return VectorLayout(combined_dims(self.combine, self.specs, dims), sparse)  # type: ignore[arg-type]

    def describe(self) -> list[dict]:
        return [
            {
                "name": spec.name,
                "path": str(spec.path),
                "source": spec.source,
                "weight": spec.weight,
                "dim": spec.dim,
                "document_prefix": spec.settings.document_prefix,
                "query_prefix": spec.settings.query_prefix,
                "max_seq_length": spec.settings.max_seq_length,
                "truncate_dim": spec.settings.truncate_dim,
                "fingerprint": fp,
                "vector_name": name if self.combine == "named" else "",
            }
            for spec, fp, name in zip(self.specs, self.fingerprints, vector_names(self.specs))
        ]


def prepare_ensemble(config: RunConfig) -> Ensemble:
    """Resolve and fingerprint every model, and check the combine mode (before any work)."""
    specs = resolve_ensemble(
        list(config.models),
        list(config.weights) if config.weights else None,
        config.model_cache_dir,
        config.trust_remote_code,
        config.max_seq_length,
        config.truncate_dim,
    )
    check_combine(config.combine, [s.dim for s in specs], [s.name for s in specs])
    hashes = {spec.path: fingerprint_folder(spec.path) for spec in specs}
    fingerprints = [model_fingerprint(s, config.engine, hashes[s.path]) for s in specs]
    encoder = None
    if config.sparse:
        encoder = sparse_vectors.create_encoder(config.sparse, config.sparse_language)
    return Ensemble(specs, fingerprints, config.combine, encoder)


@contextmanager
def file_log(path: Path) -> Iterator[None]:
    """Copy the package's log records into `embedding_v6.log` in the seed's format for the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("embed_collections")
    logger.addHandler(handler)
    previous = logger.level
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


def check_disk(output_dir: Path) -> None:
    """Refuse to start when the output disk is nearly full (the cache and store grow there)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(output_dir).free
    if free < MIN_FREE_BYTES:
        raise EmbedCollectionsError(
            f"Only {free // 2**20} MB free under {output_dir}; embedding needs at least "
            f"{MIN_FREE_BYTES // 2**20} MB (free space or choose another --output-dir)"
        )


def check_store_layouts(
    store: Store, names: list[str], layout: VectorLayout | None, recreate: bool
) -> None:
    """Fail before embedding if an existing collection was built with another configuration."""
    if layout is None or recreate:
        return
    clashes = []
    for name in names:
        existing = store.layout(name)
        if existing is not None and existing != layout:
            clashes.append(f'"{name}" has {existing.describe()}')
    if clashes:
        raise StoreError(
            f"Existing collections differ from this run's {layout.describe()}: "
            + "; ".join(clashes)
            + " (use --recreate to replace them, or another --qdrant-path)"
        )


def run(config: RunConfig) -> RunSummary:
    """Run the whole job and return its summary (also written to the output directory)."""
    try:
        config.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EmbedCollectionsError(
            f"Cannot create output directory {config.output_dir}: {error.strerror or error} "
            "(choose another --output-dir)"
        ) from error
    with file_log(config.output_dir / LOG_FILE), ExitStack() as stack:
        if config.executor == "ray":  # preflight: join Ray and check its devices before any model
            from embed_collections.ray_executor import cluster_session

            config = stack.enter_context(cluster_session(config))
        return run_logged(config)


def choose_executor(config: RunConfig) -> Callable[..., ModelTelemetry]:
    """The `embed_pending` of `config.executor`: in this process (local) or on Ray actors."""
    if config.executor == "ray":
        from embed_collections import ray_executor

        return ray_executor.embed_pending
    return embed_pending


def run_logged(config: RunConfig) -> RunSummary:
    started = time.perf_counter()
    log.info("Environment: %s", config.environment)
    found = discover_collections(config.chunked_dir, config.pattern, config.max_depth)
    selected = filter_collections(found, list(config.collections) or None)
    with EmbeddingCache(config.embedding_cache_path) as cache:
        ensemble = prepare_ensemble(config)
        for spec in ensemble.specs:
            log.info("Model %s from %s (weight %g)", spec.name, spec.source, spec.weight)
        check_disk(config.output_dir)
        summary = RunSummary(
            timestamp=datetime.now().isoformat(),
            environment=config.environment,
            ensemble_models=[spec.name for spec in ensemble.specs],
        )
        store = open_run_store(config)
        try:
            if store is not None:
                check_store_layouts(store, list(selected), ensemble.layout(cache), config.recreate)
            for wave in load_waves(selected, config, summary):
                process_wave(wave, ensemble, cache, store, config, summary)
        finally:
            if store is not None:
                store.close()
        layout = ensemble.layout(cache)
        saved = saved_config(config, ensemble.describe(), layout.to_json() if layout else {})
        saved["sparse_settings"] = ensemble.sparse.describe() if ensemble.sparse else None
        write_json_atomic(config.output_dir / RUN_CONFIG_FILE, saved)
    summary.extra.update(run_extras(config, ensemble, layout, time.perf_counter() - started))
    summary.extra["skipped_records"] = sum(r.skipped_records for r in summary.results.values())
    summary.extra["file_errors"] = sum(len(r.file_errors) for r in summary.results.values())
    write_json_atomic(config.output_dir / SUMMARY_FILE, summary.to_json())
    if config.export:
        from embed_collections.export import finish_export

        finish_export(config, summary)
    log_processing_summary(summary)
    return summary


def open_run_store(config: RunConfig) -> Store | None:
    """Open and probe the store (preflight), or None with --no-upload."""
    if not config.upload:
        return None
    store = open_store(config.qdrant_url, config.store_path, config.qdrant_api_key)
    try:
        store.check_writable()
    except BaseException:
        store.close()
        raise
    return store


def run_extras(
    config: RunConfig, ensemble: Ensemble, layout: VectorLayout | None, seconds: float
) -> dict:
    """The keys the summary adds after the seed's schema."""
    ray_cluster = None
    if config.executor == "ray":
        from embed_collections.ray_executor import describe_cluster

        ray_cluster = describe_cluster()
    return {
        "executor": config.executor,
        "ray": ray_cluster,
        "combine": config.combine,
        "weights": ensemble.weights,
        "dimension": layout.dense if layout else None,
        "sparse": config.sparse,
        "store": config.qdrant_url or (None if not config.upload else str(config.store_path)),
        "chunked_dir": str(config.chunked_dir),
        "total_seconds": round(seconds, 3),
        "models": {name: t.to_dict() for name, t in ensemble.telemetry.items()},
        "cache_hits": sum(t.cache_hits for t in ensemble.telemetry.values()),
        "cache_misses": sum(t.cache_misses for t in ensemble.telemetry.values()),
    }


def load_waves(
    selected: dict[str, Path], config: RunConfig, summary: RunSummary
) -> Iterator[list[LoadedCollection]]:
    """Load collections in order, yielding groups of about `wave_size` chunks."""
    wave: list[LoadedCollection] = []
    size = 0
    for name, directory in selected.items():
        log_collection_header(name, len(find_chunk_files(directory, config.pattern)))
        try:
            loaded = load_collection(name, directory, config.pattern, config.chunked_dir)
        except Exception as error:  # per-collection boundary: record and go on
            log.debug("Loading %s failed", name, exc_info=True)
            summary.failed_collections[name] = f"{type(error).__name__}: {error}"
            continue
        if loaded.stats.file_errors:
            summary.failed_collections[name] = "; ".join(loaded.stats.file_errors)
        if not loaded.chunks:
            summary.failed_collections.setdefault(name, f"No readable chunks in {directory}")
            continue
        wave.append(loaded)
        size += len(loaded.chunks)
        if size >= config.wave_size:
            yield wave
            wave, size = [], 0
    if wave:
        yield wave


def process_wave(
    wave: list[LoadedCollection],
    ensemble: Ensemble,
    cache: EmbeddingCache,
    store: Store | None,
    config: RunConfig,
    summary: RunSummary,
) -> None:
    """Embed a wave's unique texts model by model, then combine and store each collection."""
    texts = {text_digest(c.text): c.text for loaded in wave for c in loaded.chunks}
    missing_before = {fp: set(cache.missing(fp, texts)) for fp in ensemble.fingerprints}
    events_by_model: dict[str, list[LeaseEvent]] = {}
    wave_telemetry: dict[str, ModelTelemetry] = {}
    embed = choose_executor(config)
    for spec, fingerprint in zip(ensemble.specs, ensemble.fingerprints):
        events: list[LeaseEvent] = []
        telemetry = embed(spec, fingerprint, texts, cache, config.engine, events)
        events_by_model[spec.name] = events
        wave_telemetry[spec.name] = telemetry
        if spec.name in ensemble.telemetry:
            ensemble.telemetry[spec.name].add(telemetry)
        else:
            ensemble.telemetry[spec.name] = telemetry
    if ensemble.sparse:
        sparse_vectors.embed_pending(ensemble.sparse, texts, cache)
    layout = ensemble.layout(cache)
    for loaded in wave:
        started = time.perf_counter()
        result = CollectionResult(name=loaded.name)
        try:
            store_collection(loaded, ensemble, cache, store, layout, config, result)
        except Exception as error:  # per-collection boundary: record and go on
            log.debug("Collection %s failed", loaded.name, exc_info=True)
            summary.failed_collections[loaded.name] = f"{error}"
            log.error("❌ Failed collection %s: %s", loaded.name, error)
            continue
        digests = {text_digest(c.text) for c in loaded.chunks}
        for spec, fp in zip(ensemble.specs, ensemble.fingerprints):
            fresh = len(digests & missing_before[fp])
            result.embedded_now[spec.name] = fresh
            if fresh:
                result.lease_events.extend(e.to_dict() for e in events_by_model[spec.name])
        share = embed_share(ensemble, wave_telemetry, missing_before, digests)
        result.processing_time = round(time.perf_counter() - started + share, 3)
        summary.results[loaded.name] = result
        log_collection_completion(result)


def embed_share(
    ensemble: Ensemble,
    telemetry: dict[str, ModelTelemetry],
    missing_before: dict[str, set[bytes]],
    digests: set[bytes],
) -> float:
    """This collection's share of the wave's embedding time, by the texts it newly needed."""
    share = 0.0
    for spec, fp in zip(ensemble.specs, ensemble.fingerprints):
        pending = missing_before[fp]
        if pending:
            spent = telemetry[spec.name].embed_seconds + telemetry[spec.name].load_seconds
            share += spent * len(digests & pending) / len(pending)
    return share


def store_collection(
    loaded: LoadedCollection,
    ensemble: Ensemble,
    cache: EmbeddingCache,
    store: Store | None,
    layout: VectorLayout | None,
    config: RunConfig,
    result: CollectionResult,
) -> None:
    """Combine cached vectors and upsert them in batches; prune points no longer in the input."""
    chunks = loaded.chunks
    result.models_executed = [spec.name for spec in ensemble.specs]
    result.total_embeddings_generated = len(chunks)
    result.files = loaded.stats.files
    result.records = loaded.stats.records
    result.skipped_records = loaded.stats.skipped_records
    result.duplicate_ids = loaded.stats.duplicate_ids
    result.file_errors = list(loaded.stats.file_errors)
    result.unique_texts = len({c.text for c in chunks})
    if layout is None:
        raise StoreError("the ensemble's vector dimensions are unknown (no model was loaded)")
    result.truncated_chunks = count_truncated(chunks, ensemble, cache)
    dims = ensemble.dims(cache)
    names = vector_names(ensemble.specs)
    signature = load_signature(loaded, ensemble, layout)
    state_key = f"loaded:{store.location if store else ''}:{loaded.name}"
    if config.recreate:
        cache.remember(state_key, "")
    if store is not None and is_unchanged(store, loaded.name, layout, signature, state_key, cache):
        log.info("%s is unchanged since it was last loaded; store left as it is", loaded.name)
        result.points_in_store = len(chunks)
        result.qdrant_collection = loaded.name
        store = None  # nothing to write; an export below still gets its vectors
        if not config.export:
            return
    if store is not None:
        store.ensure_collection(loaded.name, layout, recreate=config.recreate)
    previous = store.point_ids(loaded.name) if store is not None else set()
    written: set[str] = set()
    with ExitStack() as stack:
        exporter = None
        if config.export:
            from embed_collections.export import CollectionExporter

            exporter = stack.enter_context(
                CollectionExporter(config.output_dir, loaded.name, ensemble, layout)
            )
        for start in range(0, len(chunks), config.upload_batch_size):
            part = chunks[start : start + config.upload_batch_size]
            batch = build_batch(loaded.name, part, ensemble, cache, dims, names)
            written.update(batch.ids)
            if store is not None:
                store.upsert(loaded.name, batch)
            if exporter is not None:
                exporter.add(part, batch)
        if store is not None:
            stale = previous - written
            prune_and_finish(store, loaded.name, stale, config, result)
            # only a store holding exactly these points may be skipped next time
            cache.remember(state_key, "" if stale and config.keep_stale else signature)
        if exporter is not None:
            result.export_dir = str(exporter.finish(result))


def load_signature(loaded: LoadedCollection, ensemble: Ensemble, layout: VectorLayout) -> str:
    """What a collection's points are made of: the models and every chunk's id, text and payload.

    Equal signatures mean a re-load would write exactly the points the store already holds.
    """
    digest = hashlib.sha256()
    sparse = ensemble.sparse.fingerprint if ensemble.sparse else ""
    head = [ensemble.fingerprints, ensemble.weights, ensemble.combine, sparse, layout.to_json()]
    digest.update(json.dumps(head, sort_keys=True).encode())
    for chunk in loaded.chunks:
        fields = [chunk.chunk_id, chunk.doc_id, chunk.source_file, chunk.text, chunk.metadata]
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def is_unchanged(
    store: Store,
    collection: str,
    layout: VectorLayout,
    signature: str,
    state_key: str,
    cache: EmbeddingCache,
) -> bool:
    """True when the last successful load of this collection wrote these very points.

    Checked without opening the collection (the store's layout record must still be there), so
    an unchanged re-run over hundreds of collections costs milliseconds each.
    """
    return cache.recall(state_key) == signature and store.layout(collection) == layout


def prune_and_finish(
    store: Store, collection: str, stale_ids: set[str], config: RunConfig, result: CollectionResult
) -> None:
    """Delete points whose chunks left the input, count, then flush and index the collection."""
    if stale_ids and not config.keep_stale:
        store.delete(collection, sorted(stale_ids))
        result.points_deleted = len(stale_ids)
        log.info("Deleted %d stale points from %s", len(stale_ids), collection)
    result.points_in_store = store.count(collection)
    store.finish(collection, build_index=config.build_index)
    result.qdrant_collection = collection


def count_truncated(
    chunks: tuple[Chunk, ...], ensemble: Ensemble, cache: EmbeddingCache
) -> dict[str, int]:
    """Chunks per model whose text was longer than the model reads (the rest is not embedded)."""
    digests = [text_digest(c.text) for c in chunks]
    truncated = {}
    for spec, fingerprint in zip(ensemble.specs, ensemble.fingerprints):
        limit = ensemble.telemetry[spec.name].max_seq_length or spec.settings.max_seq_length
        counts = cache.token_counts(fingerprint, digests)
        if limit:
            truncated[spec.name] = sum(1 for d in digests if counts.get(d, 0) > limit)
    return truncated


def build_batch(
    collection: str,
    chunks: tuple[Chunk, ...] | list[Chunk],
    ensemble: Ensemble,
    cache: EmbeddingCache,
    dims: list[int | None],
    names: list[str],
) -> PointBatch:
    """Points for a slice of chunks: stable ids, combined vectors, payload, optional sparse."""
    digests = [text_digest(c.text) for c in chunks]
    per_model = [
        cache.get_vectors(fp, digests, int(dim or 0))
        for fp, dim in zip(ensemble.fingerprints, dims)
    ]
    dense = combine_vectors(per_model, ensemble.weights, ensemble.combine, names)
    payloads = [chunk.payload() for chunk in chunks]
    sparse = {}
    if ensemble.sparse:
        sparse = {
            sparse_vectors.VECTOR_NAME: sparse_vectors.cached_vectors(
                ensemble.sparse, digests, cache
            )
        }
    ids = [point_id(collection, c.chunk_id) for c in chunks]
    return PointBatch(ids=ids, dense=dense, payloads=payloads, sparse=sparse)
