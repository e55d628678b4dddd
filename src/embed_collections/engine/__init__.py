"""The engine's front door: what the other wings use of models, backends, executors, encoders,
rerankers and the cache.

The rooms: `models/` (names, resolution, prompts, fingerprints), `backends/` (how a model runs:
torch, static, the ONNX Runtime and OpenVINO exports, the `auto` choice), `executors/` (where it
runs: in this process, device worker processes, Ray actors, sharing one batch loop), `encoders/`
(sparse encoders: BM25, SPLADE), `rerankers/` (second-stage cross-encoders); beside them the
cache, the device lease, devices, options and telemetry. No module outside the engine imports a
room directly (`tests/test_architecture.py`).
"""

from __future__ import annotations

from embed_collections.engine.backends import BACKENDS, REFERENCE_BACKEND, create_backend
from embed_collections.engine.backends.base import (
    Backend,
    CountingTokenizer,
    default_device,
    default_dtype,
)
from embed_collections.engine.backends.choice import backend_for_queries, decide_backends
from embed_collections.engine.backends.export import runtime_installed
from embed_collections.engine.backends.kinds import AUTO as AUTO_BACKEND
from embed_collections.engine.backends.kinds import CHOICES as BACKEND_CHOICES
from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.combine import (
    check_combine,
    combine_vectors,
    combined_dims,
    normalize_rows,
    scaled_weights,
    vector_names,
)
from embed_collections.engine.encoders import SPARSE_ENCODERS, create_sparse_encoder
from embed_collections.engine.encoders.bm25 import VECTOR_NAME as SPARSE_VECTOR_NAME
from embed_collections.engine.encoders.bm25 import SparseEncoder
from embed_collections.engine.encoders.bm25 import cached_vectors as cached_sparse_vectors
from embed_collections.engine.encoders.bm25 import embed_pending as embed_sparse_pending
from embed_collections.engine.executors import (
    ADDRESS_EXECUTOR,
    DEFAULT_EXECUTOR,
    EXECUTORS,
    Executor,
    executor_for,
)
from embed_collections.engine.executors.local import ModelSession
from embed_collections.engine.lease import default_lease_dir
from embed_collections.engine.models.folders import (
    fingerprint_folder,
    model_fingerprint,
    static_format,
)
from embed_collections.engine.models.remote_code import code_references, transformer_folder
from embed_collections.engine.models.resolve import locate_model, resolve_ensemble
from embed_collections.engine.models.specs import (
    DEFAULT_ENSEMBLE_MODELS,
    ModelSettings,
    ModelSpec,
    canonical_name,
)
from embed_collections.engine.options import EngineOptions
from embed_collections.engine.rerankers import DEFAULT_RERANKER, RERANKERS, create_reranker
from embed_collections.engine.rerankers.base import Reranker
from embed_collections.engine.telemetry import ModelTelemetry

__all__ = [
    "ADDRESS_EXECUTOR",
    "AUTO_BACKEND",
    "BACKEND_CHOICES",
    "DEFAULT_EXECUTOR",
    "BACKENDS",
    "CountingTokenizer",
    "DEFAULT_ENSEMBLE_MODELS",
    "EXECUTORS",
    "REFERENCE_BACKEND",
    "DEFAULT_RERANKER",
    "RERANKERS",
    "Reranker",
    "create_reranker",
    "SPARSE_ENCODERS",
    "SPARSE_VECTOR_NAME",
    "Backend",
    "backend_for_queries",
    "EmbeddingCache",
    "EngineOptions",
    "Executor",
    "ModelSession",
    "ModelSettings",
    "ModelSpec",
    "ModelTelemetry",
    "SparseEncoder",
    "cached_sparse_vectors",
    "canonical_name",
    "check_combine",
    "code_references",
    "combine_vectors",
    "combined_dims",
    "create_backend",
    "create_sparse_encoder",
    "decide_backends",
    "default_device",
    "default_dtype",
    "default_lease_dir",
    "embed_sparse_pending",
    "executor_for",
    "fingerprint_folder",
    "locate_model",
    "model_fingerprint",
    "normalize_rows",
    "resolve_ensemble",
    "runtime_installed",
    "scaled_weights",
    "static_format",
    "text_digest",
    "transformer_folder",
    "vector_names",
]
