"""The run's resolved ensemble: models, cache fingerprints, decided backends, sparse encoder, and
what it makes the store keep per point and the run record say."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from embed_collections.corpus.discovery import find_chunk_files
from embed_collections.engine import (
    SPARSE_VECTOR_NAME,
    EmbeddingCache,
    ModelSpec,
    ModelTelemetry,
    SparseEncoder,
    check_combine,
    combined_dims,
    create_sparse_encoder,
    decide_backends,
    fingerprint_folder,
    model_fingerprint,
    resolve_ensemble,
    vector_names,
)
from embed_collections.record.config import RunConfig
from embed_collections.record.run_record import (
    EngineRecord,
    ModelRecord,
    RunRecord,
    SparseRecord,
    StoreRecord,
)
from embed_collections.stores.base import StorageOptions, VectorLayout


@dataclass
class Ensemble:
    """The resolved models with their cache fingerprints, and what the store keeps per point."""

    specs: list[ModelSpec]
    fingerprints: list[str]
    combine: str
    backends: list[str]
    sparse: SparseEncoder | None = None
    telemetry: dict[str, ModelTelemetry] = field(default_factory=dict)
    storage: StorageOptions = field(default_factory=StorageOptions)

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
        sparse = (SPARSE_VECTOR_NAME,) if self.sparse else ()
        dense = combined_dims(self.combine, self.specs, dims)  # type: ignore[arg-type]
        idf = self.sparse.idf if self.sparse else True
        return VectorLayout(dense, sparse, self.storage, sparse_idf=idf)

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
                prefix_source=spec.settings.prefix_source,
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
                config.qdrant_url, None if config.qdrant_url else recorded_path(config)
            ),
            cache=str(config.embedding_cache_path),
            model_cache_dir=str(config.model_cache_dir) if config.model_cache_dir else None,
            trust_remote_code=config.trust_remote_code,
            engine=EngineRecord(
                engine.device, engine.dtype, engine.backend, engine.quantize, engine.batch_size
            ),
        )


SAMPLE_TEXTS = 96  # texts `--backend auto` times the candidate backends on


def sample_texts(selected: dict[str, Path], pattern: str, limit: int = SAMPLE_TEXTS) -> list[str]:
    """Some of the run's own texts (the first readable chunk files), for `--backend auto`."""
    texts: list[str] = []
    for directory in selected.values():
        for path in find_chunk_files(directory, pattern)[:2]:
            try:
                records = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # reported when the collection loads
            for record in records if isinstance(records, list) else []:
                text = record.get("text") if isinstance(record, dict) else None
                if isinstance(text, str) and text.strip():
                    texts.append(text)
            if len(texts) >= limit:
                return texts[:limit]
    return texts


def prepare_ensemble(config: RunConfig, sample: list[str] | None = None) -> Ensemble:
    """Resolve and fingerprint every model, and check the combine mode (before any work);
    `sample`: some of the run's texts, on which `--backend auto` times the backends."""
    specs = resolve_ensemble(
        list(config.models),
        list(config.weights) if config.weights else None,
        config.model_cache_dir,
        config.trust_remote_code,
        config.max_seq_length,
        config.truncate_dim,
        config.document_prefix,
        config.query_prefix,
    )
    check_combine(config.combine, [s.dim for s in specs], [s.name for s in specs])
    backends = decide_backends(specs, config.engine, sample)
    hashes = {spec.path: fingerprint_folder(spec.path) for spec in specs}
    fingerprints = [
        model_fingerprint(spec, backend, config.engine.dtype, hashes[spec.path])
        for spec, backend in zip(specs, backends)
    ]
    encoder = None
    if config.sparse:
        encoder = create_sparse_encoder(config.sparse, config.sparse_language)
    return Ensemble(specs, fingerprints, config.combine, backends, encoder, storage=config.storage)


def recorded_path(config: RunConfig) -> str:
    """The store folder as the record keeps it: relative to the output directory when inside
    it, so a moved or copied run searches its own store."""
    store, output = config.store_path.absolute(), config.output_dir.absolute()
    return str(store.relative_to(output)) if store.is_relative_to(output) else str(store)
