"""The run configuration: defaults from the environment, and the copy saved beside the output.

The saved copy (`run_config.json`) lets `search`, `upload` and re-runs find the store, the models,
their prefixes and the combine mode without repeating flags.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embed_collections.discovery import CHUNK_FILE_PATTERN, MAX_DISCOVERY_DEPTH
from embed_collections.embedding import EngineOptions
from embed_collections.errors import UsageError
from embed_collections.models import DEFAULT_ENSEMBLE_MODELS

RUN_CONFIG_FILE = "run_config.json"
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

    @property
    def store_path(self) -> Path:
        return self.qdrant_path or self.output_dir / "qdrant"

    @property
    def embedding_cache_path(self) -> Path:
        return (self.cache_dir or self.output_dir / "cache") / "embeddings.sqlite"


def saved_config(config: RunConfig, models: list[dict[str, Any]], layout: dict) -> dict[str, Any]:
    """The JSON-safe record of a run that later commands read back (no secrets)."""
    return {
        "chunked_dir": str(config.chunked_dir),
        "models": models,
        "combine": config.combine,
        "layout": layout,
        "sparse": config.sparse,
        "store": {
            "url": config.qdrant_url,
            "path": None if config.qdrant_url else str(config.store_path),
        },
        "cache": str(config.embedding_cache_path),
        "model_cache_dir": str(config.model_cache_dir) if config.model_cache_dir else None,
        "trust_remote_code": config.trust_remote_code,
        "engine": {
            k: str(v) if isinstance(v, Path) else v for k, v in asdict(config.engine).items()
        },
    }


def load_saved_config(output_dir: Path) -> dict[str, Any]:
    """Read `run_config.json` of an earlier run, or say how to make one."""
    path = output_dir / RUN_CONFIG_FILE
    if not path.exists():
        raise UsageError(
            f"No run found in {output_dir} ({RUN_CONFIG_FILE} is missing); run "
            "`embed-collections run` first or pass --output-dir of an earlier run"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(temp, path)
