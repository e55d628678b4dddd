"""Query side: embed queries exactly as the run embedded documents (same models, weights, combine
mode, query prefixes) and search the run's store, dense, sparse or fused."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from embed_collections.engine import (
    REFERENCE_BACKEND,
    SPARSE_VECTOR_NAME,
    ModelSettings,
    ModelSpec,
    SparseEncoder,
    backend_for_queries,
    code_references,
    combine_vectors,
    create_backend,
    create_sparse_encoder,
    default_device,
    fingerprint_folder,
    locate_model,
    model_fingerprint,
    scaled_weights,
    static_format,
    transformer_folder,
)
from embed_collections.errors import ModelError, UsageError
from embed_collections.record.run_record import ModelRecord, RunRecord
from embed_collections.stores import Hit, SearchQuery, Store
from embed_collections.stores.base import PayloadMatch
from embed_collections.stores.open import open_store

log = logging.getLogger(__name__)

SEARCH_MODES = ("dense", "sparse", "hybrid")
DEFAULT_RRF_K = 60


@dataclass
class QueryEncoder:
    """Turns query texts into the vectors a run's store holds."""

    specs: list[ModelSpec]
    combine: str
    vector_names: list[str]
    sparse: SparseEncoder | None
    device: str = ""
    backends: list[str] = field(default_factory=list)  # per model, as the run embedded
    dtypes: list[str] = field(default_factory=list)
    run_device: str = ""
    loaded: dict[int, Any] = field(default_factory=dict)  # kept backends, by model index

    @classmethod
    def from_record(
        cls,
        record: RunRecord,
        device: str = "",
        base_dir: Path | None = None,
        trust_remote_code: bool = False,
        check_fingerprints: bool = True,
    ) -> QueryEncoder:
        """The encoder for a run: its models (found again if moved), weights, prefixes, sparse.

        Relative paths in the record are relative to `base_dir` (the record's folder). A
        model's own code runs only when the caller passes `trust_remote_code`: the record's
        flag is never trusted, since whoever can write that file would run code as the user.
        With `check_fingerprints`, a model folder that changed since the run is an error.
        """
        cache_dir = resolve_recorded(base_dir, record.model_cache_dir)
        specs = []
        for model in record.models:
            path = resolve_recorded(base_dir, model.path)
            if path is None or not path.is_dir():
                path = locate_model(model.name, cache_dir)[0]
            settings = ModelSettings(
                document_prefix=model.document_prefix,
                query_prefix=model.query_prefix,
                max_seq_length=model.max_seq_length,
                truncate_dim=model.truncate_dim,
            )
            specs.append(
                ModelSpec(
                    name=model.name,
                    path=path,
                    source="saved run",
                    settings=settings,
                    weight=model.weight,
                    dim=model.dim,
                    trust_remote_code=trust_remote_code,
                    static=static_format(path) is not None,
                )
            )
            check_remote_code(specs[-1])
            if check_fingerprints:
                check_fingerprint(model, specs[-1])
        sparse = None
        if record.sparse:
            sparse = create_sparse_encoder(**asdict(record.sparse))
        names = [model.vector_name for model in record.models]
        backends = [model.backend for model in record.models]
        dtypes = [model.dtype for model in record.models]
        return cls(
            specs, record.combine, names, sparse, device, backends, dtypes, record.engine.device
        )

    def query_backend(self, index: int, device: str) -> tuple[str, str]:
        """The backend and precision the run embedded this model with, where `device` can use
        them (the same kind of device, the runtime installed), else torch in the device's default
        precision (a run made on GPUs, searched from a laptop)."""
        backend = self.backends[index] if index < len(self.backends) else REFERENCE_BACKEND
        dtype = self.dtypes[index] if index < len(self.dtypes) else ""
        return backend_for_queries(backend, dtype, self.run_device, device)

    def dense(self, queries: list[str], batch_size: int = 64) -> dict[str, np.ndarray]:
        """Combined dense query vectors (vector name -> Q x D); models load one at a time."""
        weights = [spec.weight for spec in self.specs]
        per_model = self.per_model(queries, batch_size)
        return combine_vectors(per_model, weights, self.combine, self.vector_names)

    def per_model(self, queries: list[str], batch_size: int = 64) -> list[np.ndarray]:
        """Each model's raw query vectors (Q x d_i), in the run's model order."""
        # Queries run on the first device of a run's list (`cuda:0,cuda:1`, `cpu:0,cpu:1`).
        device = (self.device or default_device()).split(",")[0]
        device = "cpu" if device.startswith("cpu") else device
        per_model = []
        for index, spec in enumerate(self.specs):
            backend = self.loaded.get(index)
            if backend is None:
                backend = create_backend(spec, *self.query_backend(index, device))
                backend.load(device)
            prefixed = [spec.settings.query_prefix + q for q in queries]
            parts = [
                backend.embed(prefixed[i : i + batch_size])
                for i in range(0, len(prefixed), batch_size)
            ]
            per_model.append(np.vstack(parts))
            if index not in self.loaded:
                backend.unload()
        return per_model

    def load(self, threads: int | None = None) -> QueryEncoder:
        """Load every model now and keep it loaded (a server's encoder); `unload()` frees them.

        `threads`: the CPU threads an ONNX Runtime or OpenVINO model may use [every core].
        """
        device = (self.device or default_device()).split(",")[0]
        device = "cpu" if device.startswith("cpu") else device
        self.device = self.device or device  # looking for a GPU driver each query costs a glob
        for index, spec in enumerate(self.specs):
            if index not in self.loaded:
                backend = create_backend(spec, *self.query_backend(index, device), threads)
                backend.load(device)
                self.loaded[index] = backend
        return self

    def unload(self) -> None:
        """Release the models `load()` kept."""
        while self.loaded:
            self.loaded.popitem()[1].unload()

    def combined(
        self, per_model: list[np.ndarray], weights: list[float] | None = None
    ) -> dict[str, np.ndarray]:
        """The stored form of per-model query vectors (vector name -> Q x D)."""
        weights = weights or [spec.weight for spec in self.specs]
        return combine_vectors(per_model, weights, self.combine, self.vector_names)

    def with_weights(self, weights: list[float] | None) -> QueryEncoder:
        """The same encoder with query-time weights (one per model; finite, >= 0, not all 0)."""
        if not weights:
            return self
        names = ", ".join(spec.name for spec in self.specs)
        if len(weights) != len(self.specs):
            raise UsageError(
                f"{len(weights)} weights given for the run's {len(self.specs)} models ({names}); "
                "give one weight per model"
            )
        if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
            given = ", ".join(map(str, weights))
            raise UsageError(f"Weights must be finite and >= 0, and not all 0; got {given}")
        if self.combine != "named":
            raise UsageError(
                f"--weights at query time needs a run stored with --combine named; this run used "
                f"--combine {self.combine}, whose weights are fixed in the stored vectors "
                "(re-run with --weights, or with --combine named)"
            )
        specs = [replace(spec, weight=float(w)) for spec, w in zip(self.specs, weights)]
        return replace(self, specs=specs)

    def sparse_queries(self, queries: list[str]) -> list[tuple[list[int], list[float]]]:
        if self.sparse is None:
            return []
        return [self.sparse.embed_query(q) for q in queries]


def build_queries(
    encoder: QueryEncoder,
    texts: list[str],
    mode: str,
    limit: int,
    fusion: str = "rrf",
    rrf_k: int = DEFAULT_RRF_K,
    prefetch_limit: int = 100,
    where: PayloadMatch = (),
    with_vector: bool = False,
    dense: dict[str, np.ndarray] | None = None,
) -> list[SearchQuery]:
    """One SearchQuery per text: dense vectors, the sparse vector, or all of them fused.

    `dense`: the texts' combined dense vectors when already computed (else embedded here).
    """
    check_mode(encoder, mode)
    if mode not in ("dense", "hybrid"):
        dense = {}
    elif dense is None:
        dense = encoder.dense(texts)
    sparse = encoder.sparse_queries(texts) if mode in ("sparse", "hybrid") else []
    queries = []
    for row, _ in enumerate(texts):
        query = SearchQuery(
            limit=limit,
            fusion=fusion,  # type: ignore[arg-type]  # checked by the CLI's choices
            rrf_k=rrf_k,
            prefetch_limit=prefetch_limit,
            where=where,
            with_vector=with_vector,
        )
        if dense:
            query = replace(query, dense={name: array[row] for name, array in dense.items()})
        if sparse:
            query = replace(query, sparse={SPARSE_VECTOR_NAME: sparse[row]})
        queries.append(query)
    return queries


def check_mode(encoder: QueryEncoder, mode: str) -> None:
    """A UsageError unless `mode` is one this run's vectors can answer."""
    if mode not in SEARCH_MODES:
        raise UsageError(f'Unknown search mode "{mode}". Choose one of {", ".join(SEARCH_MODES)}')
    if mode in ("sparse", "hybrid") and encoder.sparse is None:
        raise UsageError(
            f'Search mode "{mode}" needs sparse vectors; this run had none (use mode dense, '
            "or re-run with --sparse bm25)"
        )


def uses_weighted_fusion(encoder: QueryEncoder, mode: str) -> bool:
    """Dense search of a `--combine named` run fuses the models' cosines with their weights."""
    return mode == "dense" and encoder.combine == "named" and len(encoder.specs) > 1


def weighted_named_search(
    store: Store,
    collection: str,
    encoder: QueryEncoder,
    texts: list[str],
    limit: int,
    prefetch_limit: int = 100,
    with_payload: bool = True,
    where: PayloadMatch = (),
    with_vector: bool = False,
    dense: dict[str, np.ndarray] | None = None,
) -> list[list[Hit]]:
    """Search each named vector, then rank the union of candidates by sum_i w_i * cos_i / sum w.

    Done here rather than with a server-side formula so it works the same on Qdrant Edge and a
    server through the plain search call. A candidate that one model did not return gets that
    model's lowest returned score for it (an upper bound of its true cosine), so the ranking is
    exact for candidates every model returned within `prefetch_limit` and close otherwise; `eval`
    shows the exact ranking (`dense-exact`) beside it.
    """
    dense = encoder.dense(texts) if dense is None else dense
    scaled = scaled_weights([spec.weight for spec in encoder.specs])  # 1e308 1e308 is 1 1
    weights = dict(zip(encoder.vector_names, scaled))
    total = sum(weights.values())
    depth = max(limit, prefetch_limit)
    per_name = {
        name: store.search(
            collection,
            [
                SearchQuery(
                    dense={name: dense[name][row]},
                    limit=depth,
                    with_payload=with_payload,
                    where=where,
                    with_vector=with_vector,
                )
                for row in range(len(texts))
            ],
        )
        for name, weight in weights.items()
        if weight > 0
    }
    fused_hits = []
    for row in range(len(texts)):
        scores: dict[str, float] = {}
        payloads: dict[str, dict] = {}
        vectors: dict[str, dict] = {}
        lists = {name: hits[row] for name, hits in per_name.items()}
        for hits in lists.values():
            for hit in hits:
                payloads.setdefault(hit.id, hit.payload)
                vectors.setdefault(hit.id, {}).update(hit.vectors)
        for name, hits in lists.items():
            found = {hit.id: hit.score for hit in hits}
            floor = min(found.values()) if found else 0.0
            for point in payloads:
                scores[point] = scores.get(point, 0.0) + weights[name] * found.get(point, floor)
        ranked = sorted(scores.items(), key=lambda item: -item[1])[:limit]
        fused_hits.append([Hit(p, v / total, payloads[p], vectors[p]) for p, v in ranked])
    return fused_hits


def dense_cosine(
    encoder: QueryEncoder, query: dict[str, np.ndarray], stored: dict[str, Any]
) -> float | None:
    """The score a person can read: the query's cosine with the hit, as the run combined its
    models (one cosine for concat/average; the weighted mean of the models' cosines for named).
    None when the hit came back without its vectors."""
    weights = {name: spec.weight for name, spec in zip(encoder.vector_names, encoder.specs)}
    total, score = 0.0, 0.0
    for name, vector in query.items():
        if name not in stored:
            return None
        other = np.asarray(stored[name], dtype=np.float32)
        norm = float(np.linalg.norm(vector) * np.linalg.norm(other))
        cosine = float(np.dot(vector, other)) / norm if norm else 0.0
        weight = weights.get(name, 1.0) if encoder.combine == "named" else 1.0
        score, total = score + weight * cosine, total + weight
    return score / total if total else None


def resolve_recorded(base_dir: Path | None, recorded: str | None) -> Path | None:
    """A path from a run record: relative ones are relative to the record's folder."""
    if not recorded:
        return None
    path = Path(recorded).expanduser()
    if path.is_absolute() or base_dir is None:
        return path
    return base_dir / path


def check_remote_code(spec: ModelSpec) -> None:
    """A UsageError when the model maps to its own code and the caller did not allow it."""
    if spec.trust_remote_code:
        return
    folder = transformer_folder(spec.path)
    try:
        raw = json.loads((folder / "config.json").read_text()) if folder else None
    except (OSError, ValueError):
        return  # loading reports an unreadable config with its own message
    refs = code_references(raw.get("auto_map") or {}) if isinstance(raw, dict) else []
    if refs:
        raise UsageError(
            f'Model "{spec.name}" runs its own code ({refs[0]}); a run\'s record cannot allow '
            "that: pass --trust-remote-code if you trust the model"
        )


def check_fingerprint(model: ModelRecord, spec: ModelSpec) -> None:
    """A ModelError when the model folder is not the one the run embedded with."""
    if not model.fingerprint:
        return
    found = model_fingerprint(spec, model.backend, model.dtype, fingerprint_folder(spec.path))
    if found != model.fingerprint:
        raise ModelError(
            f'Model "{model.name}" at {spec.path} changed since the run embedded with it '
            "(its files or settings differ), so its query vectors would not match the stored "
            "ones: restore the original folder, or re-run `embed-collections run` to re-embed"
        )


def open_run_store(
    record: RunRecord,
    api_key: str | None = None,
    base_dir: Path | None = None,
    qdrant_url: str | None = None,
    qdrant_path: Path | None = None,
) -> Store:
    """The store a run wrote to, or the one given (`qdrant_url`/`qdrant_path`: a store loaded
    elsewhere, e.g. by `upload`, searched with this run's record)."""
    if qdrant_url or qdrant_path:
        return open_store(qdrant_url, Path(qdrant_path) if qdrant_path else None, api_key)
    return open_store(record.store.url, resolve_recorded(base_dir, record.store.path), api_key)


def default_mode(record: RunRecord) -> str:
    """hybrid when the run stored sparse vectors, else dense."""
    return "hybrid" if record.sparse else "dense"
