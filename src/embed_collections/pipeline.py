"""The spine of a run: discover, preflight, load chunks, embed model-major, combine, store.

Collections are processed in waves of at most `wave_size` chunks so memory stays flat on huge
corpora; within a wave every model is loaded once (a typical corpus is a single wave).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from embed_collections import sparse as sparse_vectors
from embed_collections.atomic import write_json_atomic
from embed_collections.cache import EmbeddingCache, text_digest
from embed_collections.chunks import Chunk, LoadedCollection, load_collection
from embed_collections.config import LOG_FILE, SUMMARY_FILE, RunConfig
from embed_collections.dirlock import output_lock
from embed_collections.discovery import discover_collections, filter_collections, find_chunk_files
from embed_collections.diskspace import (
    BYTES_PER_CHUNK_FILE_BYTE,
    WritePaths,
    check_space,
    estimate,
    stops_the_run,
)
from embed_collections.embedding import embed_pending
from embed_collections.ensemble import check_combine, combine_vectors, combined_dims, vector_names
from embed_collections.errors import DiskFullError, EmbedCollectionsError, StoreError
from embed_collections.export import finish_export
from embed_collections.lease import LeaseEvent
from embed_collections.models import (
    ModelSpec,
    fingerprint_folder,
    model_fingerprint,
    resolve_ensemble,
)
from embed_collections.preflight import decide_backends
from embed_collections.progress import Progress
from embed_collections.record import (
    EngineRecord,
    ModelRecord,
    RunRecord,
    SparseRecord,
    StoreRecord,
    write_run_record,
)
from embed_collections.sinks import ExportSink, Sink, StoreSink, verified_count
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


@dataclass
class Ensemble:
    """The resolved models with their cache fingerprints, and what the store keeps per point."""

    specs: list[ModelSpec]
    fingerprints: list[str]
    combine: str
    backends: list[str]
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

    def models(self, dtype: str) -> tuple[ModelRecord, ...]:
        """The models as the run record keeps them."""
        names = vector_names(self.specs)
        return tuple(
            ModelRecord(
                name=spec.name,
                path=str(spec.path),
                source=spec.source,
                weight=spec.weight,
                dim=spec.dim,
                document_prefix=spec.settings.document_prefix,
                query_prefix=spec.settings.query_prefix,
                max_seq_length=spec.settings.max_seq_length,
                truncate_dim=spec.settings.truncate_dim,
                fingerprint=fingerprint,
                backend=backend,
                dtype=dtype,
                vector_name=name if self.combine == "named" else "",
            )
            for spec, fingerprint, backend, name in zip(
                self.specs, self.fingerprints, self.backends, names
            )
        )

    def record(self, config: RunConfig, layout: VectorLayout | None) -> RunRecord:
        """What this run is, as `run_config.json` keeps it (no secrets)."""
        engine = config.engine
        sparse = SparseRecord(**self.sparse.describe()) if self.sparse else None
        return RunRecord(
            chunked_dir=str(config.chunked_dir),
            models=self.models(engine.dtype),
            combine=self.combine,
            layout=layout,
            sparse=sparse,
            store=StoreRecord(
                config.qdrant_url, None if config.qdrant_url else str(config.store_path)
            ),
            cache=str(config.embedding_cache_path),
            model_cache_dir=str(config.model_cache_dir) if config.model_cache_dir else None,
            trust_remote_code=config.trust_remote_code,
            engine=EngineRecord(
                engine.device, engine.dtype, engine.backend, engine.quantize, engine.batch_size
            ),
        )


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
    backends = decide_backends(specs, config.engine)
    hashes = {spec.path: fingerprint_folder(spec.path) for spec in specs}
    fingerprints = [
        model_fingerprint(spec, backend, config.engine.dtype, hashes[spec.path])
        for spec, backend in zip(specs, backends)
    ]
    encoder = None
    if config.sparse:
        encoder = sparse_vectors.create_encoder(config.sparse, config.sparse_language)
    return Ensemble(specs, fingerprints, config.combine, backends, encoder)


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


def write_paths(config: RunConfig, cache: EmbeddingCache | None = None) -> WritePaths:
    """The directories a run writes to (each may sit on another filesystem)."""
    embedded = config.upload and not config.qdrant_url
    return WritePaths(
        output_dir=config.output_dir,
        cache_dir=(cache.path if cache else config.embedding_cache_path).parent,
        store_dir=config.store_path if embedded else None,
        export_dir=config.output_dir if config.export else None,
    )


def payload_size(chunks: tuple[Chunk, ...] | list[Chunk]) -> int:
    """About the bytes the chunks' payloads take (text plus metadata)."""
    return sum(len(c.text.encode("utf-8")) + 2 * len(c.metadata) * 16 + 200 for c in chunks)


def preflight_space(config: RunConfig, selected: dict[str, Path], dims: list[int | None]) -> None:
    """Refuse to start when the run will not fit (estimated from the chunk files' sizes)."""
    file_bytes = 0
    for directory in selected.values():
        try:
            file_bytes += sum(f.stat().st_size for f in find_chunk_files(directory, config.pattern))
        except (OSError, EmbedCollectionsError):
            continue  # the collection fails with its own message later
    points = int(file_bytes * BYTES_PER_CHUNK_FILE_BYTE)
    needs = estimate(
        write_paths(config), points, file_bytes, [d or 0 for d in dims], config.build_index
    )
    check_space(needs, "Preflight")


def check_wave_space(
    wave: list[LoadedCollection],
    dims: list[int | None],
    missing: dict[str, set[bytes]],
    config: RunConfig,
) -> None:
    """Before embedding a wave: room for its new cache rows and its points on every target."""
    points = sum(len(loaded.chunks) for loaded in wave)
    payload = sum(payload_size(loaded.chunks) for loaded in wave)
    sizes = [d or 0 for d in dims]
    paths = write_paths(config)
    needs = estimate(paths, points, payload, sizes, config.build_index)
    new_rows = max((len(m) for m in missing.values()), default=0)
    needs[paths.cache_dir] = estimate(paths, new_rows, 0, sizes, False)[paths.cache_dir]
    names = ", ".join(loaded.name for loaded in wave[:3]) + (", ..." if len(wave) > 3 else "")
    check_space(needs, f"Before embedding {names}")


def check_store_layouts(
    store: Store, names: list[str], layout: VectorLayout | None, recreate: bool
) -> None:
    """Fail before embedding if an existing collection was built with another configuration."""
    if layout is None or recreate:
        return
    clashes = []
    for name in names:
        existing = store.layout(name)
        if existing is not None and not existing.matches(layout):
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
    with (
        output_lock(config.output_dir, wait=config.wait),
        file_log(config.output_dir / LOG_FILE),
        ExitStack() as stack,
    ):
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
    unreadable: list[tuple[Path, str]] = []
    found = discover_collections(config.chunked_dir, config.pattern, config.max_depth, unreadable)
    selected = filter_collections(found, list(config.collections) or None)
    with EmbeddingCache(config.embedding_cache_path) as cache:
        ensemble = prepare_ensemble(config)
        for spec in ensemble.specs:
            log.info("Model %s from %s (weight %g)", spec.name, spec.source, spec.weight)
        preflight_space(config, selected, ensemble.dims(cache))
        summary = RunSummary(
            timestamp=datetime.now().isoformat(),
            environment=config.environment,
            ensemble_models=[spec.name for spec in ensemble.specs],
        )
        for directory, reason in unreadable:
            summary.failed_collections[directory.name] = (
                f"Cannot read directory {directory}: {reason} (fix its permissions)"
            )
            summary.count("file_errors", 1)
        store = open_run_store(config)
        stopped: Exception | None = None
        try:
            if store is not None:
                check_store_layouts(store, list(selected), ensemble.layout(cache), config.recreate)
            with Progress(
                len(selected), "store", "collection", config.engine.show_progress, "point"
            ) as progress:
                for wave in load_waves(selected, config, summary):
                    process_wave(wave, ensemble, cache, store, config, summary, progress)
        except Exception as error:  # a full or read-only disk: keep what is done, then stop
            if not stops_the_run(error):
                raise
            stopped = error
            summary.extra["stopped"] = str(error)
            log.error("❌ Stopped: %s", error)
        finally:
            if store is not None:
                store.close()
        layout = ensemble.layout(cache)
        write_run_record(config.output_dir, ensemble.record(config, layout))
    summary.extra.update(run_extras(config, ensemble, layout, time.perf_counter() - started))
    summary.count("skipped_records", 0)  # present even when nothing was skipped
    summary.count("file_errors", 0)
    try:
        write_json_atomic(config.output_dir / SUMMARY_FILE, summary.to_json())
    except OSError as error:
        log.error("The summary could not be written: %s", error)
    if stopped is not None:
        if isinstance(stopped, EmbedCollectionsError):
            raise stopped
        raise DiskFullError(f"The run stopped: {stopped}") from stopped
    if config.export:
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
        try:
            log_collection_header(name, len(find_chunk_files(directory, config.pattern)))
            loaded = load_collection(name, directory, config.pattern, config.chunked_dir)
        except Exception as error:  # per-collection boundary: record and go on
            log.debug("Loading %s failed", name, exc_info=True)
            summary.failed_collections[name] = f"{type(error).__name__}: {error}"
            summary.count("file_errors", 1)
            continue
        summary.count("file_errors", len(loaded.stats.file_errors))
        summary.count("skipped_records", loaded.stats.skipped_records)
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
    progress: Progress | None = None,
) -> None:
    """Embed a wave's unique texts model by model, then combine and store each collection."""
    texts = {text_digest(c.text): c.text for loaded in wave for c in loaded.chunks}
    missing_before = {fp: set(cache.missing(fp, texts)) for fp in ensemble.fingerprints}
    check_wave_space(wave, ensemble.dims(cache), missing_before, config)
    events_by_model: dict[str, list[LeaseEvent]] = {}
    wave_telemetry: dict[str, ModelTelemetry] = {}
    embed = choose_executor(config)
    for spec, fingerprint, backend in zip(ensemble.specs, ensemble.fingerprints, ensemble.backends):
        events: list[LeaseEvent] = []
        options = replace(config.engine, backend=backend, quantize="")  # decided in preflight
        telemetry = embed(spec, fingerprint, texts, cache, options, events)
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
            store_collection(loaded, Targets(ensemble, cache, store, config), layout, result)
        except Exception as error:  # per-collection boundary: record and go on
            log.debug("Collection %s failed", loaded.name, exc_info=True)
            summary.failed_collections[loaded.name] = f"{error}"
            log.error("❌ Failed collection %s: %s", loaded.name, error)
            if stops_the_run(error):
                raise
            if progress is not None:
                progress.update(1, 0, time.perf_counter() - started)
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
        # chunks drop_unembedded skipped (loading's skipped records are counted already)
        summary.count("skipped_records", result.skipped_records - loaded.stats.skipped_records)
        log_collection_completion(result)
        if progress is not None:
            progress.update(1, len(loaded.chunks), time.perf_counter() - started)


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


@dataclass(frozen=True)
class Targets:
    """What every collection of a run is combined from and written to."""

    ensemble: Ensemble
    cache: EmbeddingCache
    store: Store | None
    config: RunConfig


def store_collection(
    loaded: LoadedCollection,
    targets: Targets,
    layout: VectorLayout | None,
    result: CollectionResult,
) -> None:
    """Combine cached vectors and feed them in batches to the sinks (store, export).

    The store is skipped only when it proves it already holds exactly this load (its marker
    and its own count); otherwise it is reloaded, pruned to the input and counted again.
    """
    ensemble, cache, store, config = targets.ensemble, targets.cache, targets.store, targets.config
    record_loaded(loaded, ensemble, result)
    loaded = drop_unembedded(loaded, ensemble, cache, result)
    chunks = loaded.chunks
    if layout is None:
        raise StoreError("the ensemble's vector dimensions are unknown (no model was loaded)")
    result.truncated_chunks = count_truncated(chunks, ensemble, cache)
    signature = load_signature(loaded, ensemble, layout)
    sinks: list[Sink] = []
    if store is not None:
        held = None
        if not config.recreate:
            held = verified_count(store, loaded.name, layout, signature, len(chunk_ids(loaded)))
        if held is not None:
            log.info(
                "%s holds exactly this input (%d points); store left as it is", loaded.name, held
            )
            result.points_in_store = held
            result.qdrant_collection = loaded.name
        else:
            sinks.append(StoreSink.open(store, loaded.name, layout, signature, config))
    if config.export:
        sinks.append(
            ExportSink(config.output_dir, loaded.name, ensemble.record(config, layout), layout)
        )
    if not sinks:
        return
    dims = ensemble.dims(cache)
    paths = write_paths(config, cache)
    needs = estimate(
        paths, len(chunks), payload_size(chunks), [d or 0 for d in dims], config.build_index
    )
    needs.pop(paths.cache_dir, None)  # the vectors are cached already
    check_space(needs, f"Before writing collection {loaded.name}")
    names = vector_names(ensemble.specs)
    try:
        for start in range(0, len(chunks), config.upload_batch_size):
            part = chunks[start : start + config.upload_batch_size]
            batch = build_batch(loaded.name, part, ensemble, cache, dims, names)
            for sink in sinks:
                sink.add(part, batch)
        for sink in sinks:
            sink.finish(result)
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise


def record_loaded(loaded: LoadedCollection, ensemble: Ensemble, result: CollectionResult) -> None:
    """Copy what loading the chunk files found into the collection's result."""
    result.models_executed = [spec.name for spec in ensemble.specs]
    result.total_embeddings_generated = len(loaded.chunks)
    result.files = loaded.stats.files
    result.records = loaded.stats.records
    result.skipped_records = loaded.stats.skipped_records
    result.duplicate_ids = loaded.stats.duplicate_ids
    result.file_errors = list(loaded.stats.file_errors)
    result.unique_texts = len({c.text for c in loaded.chunks})


def drop_unembedded(
    loaded: LoadedCollection, ensemble: Ensemble, cache: EmbeddingCache, result: CollectionResult
) -> LoadedCollection:
    """The collection without the chunks a model could not embed (NaN/Inf even in float32, never
    cached): they are skipped and counted like bad records, and the rest is stored.

    Such texts are re-tried, and counted again, whenever a wave holds them, so the cache is only
    asked when a model reported one: an ordinary collection costs nothing here.
    """
    if not any(t.non_finite_chunks for t in ensemble.telemetry.values()):
        return loaded
    digests = [text_digest(c.text) for c in loaded.chunks]
    unembedded: set[bytes] = set()
    for fingerprint in ensemble.fingerprints:
        unembedded.update(cache.missing(fingerprint, digests))
    if not unembedded:
        return loaded
    kept = tuple(c for c, d in zip(loaded.chunks, digests) if d not in unembedded)
    result.skipped_records += len(loaded.chunks) - len(kept)
    log.warning(
        "%s: %d chunks have no finite vector from every model (the summary's non_finite_texts "
        "lists them); skipped",
        loaded.name,
        len(loaded.chunks) - len(kept),
    )
    return replace(loaded, chunks=kept)


def chunk_ids(loaded: LoadedCollection) -> set[str]:
    """The point ids this collection's chunks get."""
    return {point_id(loaded.name, c.chunk_id) for c in loaded.chunks}


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
