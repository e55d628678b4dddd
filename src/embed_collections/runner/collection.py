"""One collection from cached vectors to its sinks: combine each slice of chunks into points and
feed the store and the export, unless the store proves it already holds exactly this input."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from embed_collections.corpus.chunks import Chunk, LoadedCollection
from embed_collections.engine import (
    SPARSE_VECTOR_NAME,
    EmbeddingCache,
    cached_sparse_vectors,
    combine_vectors,
    text_digest,
    vector_names,
)
from embed_collections.errors import StoreError
from embed_collections.record.config import RunConfig
from embed_collections.record.summary import CollectionResult
from embed_collections.record.token_lengths import TokenLengths
from embed_collections.runner.diskspace import check_space, estimate, payload_size, write_paths
from embed_collections.runner.ensemble import Ensemble
from embed_collections.runner.sinks import (
    ExportSink,
    Sink,
    StoreSink,
    check_held,
    held_as_marked,
)
from embed_collections.stores.base import (
    POSITION_FIELD,
    SECTION_FIELD,
    PointBatch,
    Store,
    VectorLayout,
)
from embed_collections.stores.open import point_id

log = logging.getLogger(__name__)

PAYLOAD_VERSION = 2  # 2: points carry `position` and `section`, indexed for `read`


@dataclass(frozen=True)
class Targets:
    """What every collection of a run is combined from and written to."""

    ensemble: Ensemble
    cache: EmbeddingCache
    store: Store | None
    config: RunConfig
    lengths: dict[str, TokenLengths] = field(default_factory=dict)  # filled run-wide, per model
    phases: dict[str, float] = field(default_factory=dict)  # the export's seconds, run-wide


def store_collection(
    loaded: LoadedCollection,
    targets: Targets,
    layout: VectorLayout | None,
    result: CollectionResult,
) -> None:
    """Combine cached vectors and feed them in batches to the sinks (store, export).

    The store is skipped only when it proves it already holds exactly this load (its marker,
    and either its files unchanged since that verified load or its content read back: see
    `held_or_repaired`); otherwise it is reloaded, pruned to the
    input and read back again. A collection whose content contradicts its marker is rebuilt
    from the cache (nothing is re-embedded) and the damage is reported in its result.
    """
    ensemble, cache, store, config = targets.ensemble, targets.cache, targets.store, targets.config
    record_loaded(loaded, ensemble, result)
    loaded = drop_unembedded(loaded, ensemble, cache, result)
    chunks = loaded.chunks
    if layout is None:
        raise StoreError("the ensemble's vector dimensions are unknown (no model was loaded)")
    result.truncated_chunks = count_truncated(chunks, ensemble, cache, targets.lengths)
    signature = load_signature(loaded, ensemble, layout)
    sinks: list[Sink] = []
    if store is not None:
        held, how = None, ""
        if not config.recreate:
            held, how = held_or_repaired(loaded, targets, store, layout, signature, result)
        if held is not None:
            log.info(
                "%s holds exactly this input (%d points, %s); store left as it is",
                loaded.name,
                held,
                how,
            )
            result.points_in_store = held
            result.qdrant_collection = loaded.name
            result.status = "unchanged"  # the pipeline says "ok" if a model embedded anything
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
    positions = document_positions(chunks)
    try:
        for start in range(0, len(chunks), config.upload_batch_size):
            part = chunks[start : start + config.upload_batch_size]
            batch = build_batch(loaded.name, part, ensemble, cache, dims, names, positions)
            for sink in sinks:
                with timed(sink, targets.phases):
                    sink.add(part, batch)
        for sink in sinks:
            with timed(sink, targets.phases):
                sink.finish(result)
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise


def held_or_repaired(
    loaded: LoadedCollection,
    targets: Targets,
    store: Store,
    layout: VectorLayout,
    signature: str,
    result: CollectionResult,
) -> tuple[int | None, str]:
    """The point count when the store holds exactly this load, else None (a collection whose
    content contradicts its marker is dropped, to be rebuilt, and the damage put in `result`),
    and how that was known ("files unchanged since its last load" or "read back").

    Files unchanged since the verified load are trusted (no shard is opened) unless
    `--verify-full`; otherwise every point is read back and compared.
    """
    ensemble, cache, config = targets.ensemble, targets.cache, targets.config
    chunks = loaded.chunks
    if not config.verify_full:
        held = held_as_marked(store, loaded.name, layout, signature, len(chunks))
        if held is not None:
            return held, "files unchanged since its last load"
    names = vector_names(ensemble.specs)
    dims = ensemble.dims(cache)
    by_id = {point_id(loaded.name, c.chunk_id): c for c in chunks}

    def sample(ids: frozenset[str]) -> dict[str, dict]:
        part = [by_id[i] for i in sorted(ids) if i in by_id]
        batch = build_batch(loaded.name, part, ensemble, cache, dims, names)
        return {
            point: {name: rows[i] for name, rows in batch.dense.items()}
            for i, point in enumerate(batch.ids)
        }

    check = check_held(store, loaded.name, layout, signature, set(by_id), sample)
    if check.damage:
        result.store_repaired = check.damage
        log.warning(
            "%s: the store's copy is damaged (%s); rebuilding it from the embedding "
            "cache (nothing is re-embedded)",
            loaded.name,
            check.damage,
        )
        store.drop(loaded.name)
    return check.count, "read back"


@contextmanager
def timed(sink: Sink, phases: dict[str, float]) -> Iterator[None]:
    """Add an export sink's seconds to `phases["export"]` (the store's are the rest)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        if isinstance(sink, ExportSink):
            phases["export"] = phases.get("export", 0.0) + time.perf_counter() - started


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


def load_signature(loaded: LoadedCollection, ensemble: Ensemble, layout: VectorLayout) -> str:
    """What a collection's points are made of: the models and every chunk's id, text and payload.

    Equal signatures mean a re-load would write exactly the points the store already holds.
    """
    digest = hashlib.sha256()
    sparse = ensemble.sparse.fingerprint if ensemble.sparse else ""
    head = [ensemble.fingerprints, ensemble.weights, ensemble.combine, sparse, layout.to_json()]
    head.append(PAYLOAD_VERSION)  # a store loaded before the payload's new fields is reloaded
    digest.update(json.dumps(head, sort_keys=True).encode())
    for chunk in loaded.chunks:
        fields = [chunk.chunk_id, chunk.doc_id, chunk.source_file, chunk.text, chunk.metadata]
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def count_truncated(
    chunks: tuple[Chunk, ...],
    ensemble: Ensemble,
    cache: EmbeddingCache,
    lengths: dict[str, TokenLengths] | None = None,
) -> dict[str, int]:
    """Chunks per model whose text was longer than the model reads (the rest is not embedded);
    every chunk's token count is also added to `lengths` (the run's histograms)."""
    digests = [text_digest(c.text) for c in chunks]
    truncated = {}
    for spec, fingerprint in zip(ensemble.specs, ensemble.fingerprints):
        limit = ensemble.telemetry[spec.name].max_seq_length or spec.settings.max_seq_length
        counts = cache.token_counts(fingerprint, digests)
        if lengths is not None:
            known = [counts[d] for d in digests if counts.get(d) is not None]
            lengths.setdefault(spec.name, TokenLengths(spec.name)).add(known, limit or 0)
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
    positions: dict[str, int] | None = None,
) -> PointBatch:
    """Points for a slice of chunks: stable ids, combined vectors, payload, optional sparse
    (`positions`: each chunk's place in its document, from `document_positions`)."""
    digests = [text_digest(c.text) for c in chunks]
    per_model = [
        cache.get_vectors(fp, digests, int(dim or 0))
        for fp, dim in zip(ensemble.fingerprints, dims)
    ]
    dense = combine_vectors(per_model, ensemble.weights, ensemble.combine, names)
    payloads = [chunk.payload() for chunk in chunks]
    for chunk, payload in zip(chunks, payloads):
        payload[SECTION_FIELD] = section_of(chunk.metadata)
        if positions is not None and chunk.chunk_id in positions:
            payload[POSITION_FIELD] = positions[chunk.chunk_id]
    sparse = {}
    if ensemble.sparse:
        sparse = {SPARSE_VECTOR_NAME: cached_sparse_vectors(ensemble.sparse, digests, cache)}
    ids = [point_id(collection, c.chunk_id) for c in chunks]
    return PointBatch(ids=ids, dense=dense, payloads=payloads, sparse=sparse)


def section_of(metadata: dict) -> str:
    """The chunk's section path as one string ("Guide > Install"), "" when it has none."""
    path = metadata.get("section_path")
    if isinstance(path, list):
        return " > ".join(str(part) for part in path)
    return str(path or metadata.get("heading_text") or "")


def document_positions(chunks: tuple[Chunk, ...] | list[Chunk]) -> dict[str, int]:
    """Each chunk's place in its document, by chunk id: its `chunk_index` where every chunk of
    the document has a distinct integer one, else its order among the document's records."""
    by_doc: dict[str, list[Chunk]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    positions: dict[str, int] = {}
    for members in by_doc.values():
        indexes = [chunk.metadata.get("chunk_index") for chunk in members]
        usable = all(type(index) is int for index in indexes) and len(set(indexes)) == len(indexes)
        for order, (chunk, index) in enumerate(zip(members, indexes)):
            positions[chunk.chunk_id] = int(index) if usable else order  # type: ignore[arg-type]
    return positions
