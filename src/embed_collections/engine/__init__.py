"""The engine's front door: what the other wings use of models, backends, executors and the cache.

No module outside the engine imports an engine module directly (`tests/test_architecture.py`);
inside, the rooms import each other by their full names.
"""

from __future__ import annotations

from embed_collections.engine.backends import CountingTokenizer, default_device, default_dtype
from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.combine import (
    check_combine,
    combine_vectors,
    combined_dims,
    normalize_rows,
    scaled_weights,
    vector_names,
)
from embed_collections.engine.lease import default_lease_dir
from embed_collections.engine.local_executor import LocalSession, ModelSession
from embed_collections.engine.models import (
    DEFAULT_ENSEMBLE_MODELS,
    ModelSettings,
    ModelSpec,
    canonical_name,
    code_references,
    fingerprint_folder,
    locate_model,
    model_fingerprint,
    resolve_ensemble,
    static_format,
    transformer_folder,
)
from embed_collections.engine.options import EngineOptions
from embed_collections.engine.preflight import decide_backends
from embed_collections.engine.ray_cluster import cluster_session, describe_cluster
from embed_collections.engine.ray_executor import RaySession
from embed_collections.engine.runtimes import create_backend, runtime_installed
from embed_collections.engine.telemetry import ModelTelemetry

__all__ = [
    "CountingTokenizer",
    "DEFAULT_ENSEMBLE_MODELS",
    "EmbeddingCache",
    "EngineOptions",
    "LocalSession",
    "ModelSession",
    "ModelSettings",
    "ModelSpec",
    "ModelTelemetry",
    "RaySession",
    "canonical_name",
    "check_combine",
    "cluster_session",
    "code_references",
    "combine_vectors",
    "combined_dims",
    "create_backend",
    "decide_backends",
    "default_device",
    "default_dtype",
    "default_lease_dir",
    "describe_cluster",
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
