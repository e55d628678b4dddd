"""The run configuration: what the CLI asks for, with defaults from the environment.

What a run then *was* (resolved models, backends, fingerprints, layout) is `record.RunRecord`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from embed_collections.discovery import CHUNK_FILE_PATTERN, MAX_DISCOVERY_DEPTH
from embed_collections.engine_options import EngineOptions
from embed_collections.models import DEFAULT_ENSEMBLE_MODELS

SUMMARY_FILE = "embedding_summary_v6.json"
LOG_FILE = "embedding_v6.log"


def detect_environment() -> str:
    """Kaggle inside a Kaggle kernel (cwd under /kaggle, or its env var set), else Local."""
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or Path.cwd().as_posix().startswith("/kaggle"):
        return "Kaggle"
    return "Local"


def default_paths(environment: str) -> tuple[Path, Path]:
    """The seed's defaults: /kaggle/input and /kaggle/working on Kaggle, ./Chunked and ./output."""
    if environment == "Kaggle":
        return Path("/kaggle/input"), Path("/kaggle/working")
    return Path("Chunked"), Path("output")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; the CLI builds one, `pipeline.run` consumes it."""

    chunked_dir: Path
    output_dir: Path
    environment: str = "Local"
    collections: tuple[str, ...] = ()
    models: tuple[str, ...] = DEFAULT_ENSEMBLE_MODELS
    weights: tuple[float, ...] | None = None
    combine: str = "concat"
    model_cache_dir: Path | None = None
    cache_dir: Path | None = None
    trust_remote_code: bool = False
    max_seq_length: int | None = None
    truncate_dim: int | None = None
    engine: EngineOptions = field(default_factory=EngineOptions)
    executor: str = "local"  # or "ray": ray_executor embeds on a Ray cluster's actors
    ray_address: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_path: Path | None = None
    upload: bool = True
    build_index: bool = True
    keep_stale: bool = False
    recreate: bool = False
    sparse: str | None = None
    sparse_language: str = "english"
    export: bool = False
    create_zip: bool = False
    zip_compression: str = "deflated"
    pattern: str = CHUNK_FILE_PATTERN
    max_depth: int = MAX_DISCOVERY_DEPTH
    wave_size: int = 50_000
    upload_batch_size: int = 1024
    wait: bool = True  # for another run holding the output directory (False: --no-wait)

    @property
    def store_path(self) -> Path:
        return self.qdrant_path or self.output_dir / "qdrant"

    @property
    def embedding_cache_path(self) -> Path:
        return (self.cache_dir or self.output_dir / "cache") / "embeddings.sqlite"
