"""The run configuration: what a user asks for (`RunOptions`, the keywords of `run` in Python and
its long options on the command line), turned into one `RunConfig` with defaults from the
environment.

What a run then *was* (resolved models, backends, fingerprints, layout) is `run_record.RunRecord`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypedDict

from embed_collections.corpus.discovery import CHUNK_FILE_PATTERN, MAX_DISCOVERY_DEPTH
from embed_collections.engine import (
    ADDRESS_EXECUTOR,
    DEFAULT_ENSEMBLE_MODELS,
    DEFAULT_EXECUTOR,
    EngineOptions,
    executor_for,
)
from embed_collections.errors import UsageError
from embed_collections.record.files import CACHE_DIR, CACHE_FILE, STORE_DIR
from embed_collections.record.weights import apply_weights_file
from embed_collections.stores.base import StorageOptions


def detect_environment() -> str:
    """Kaggle inside a Kaggle kernel (cwd under /kaggle, or its env var set), else Local."""
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or Path.cwd().as_posix().startswith("/kaggle"):
        return "Kaggle"
    return "Local"


def default_paths(environment: str) -> tuple[Path, Path]:
    """/kaggle/input and /kaggle/working on Kaggle (as the original script), else ./Chunked and
    ./output."""
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
    document_prefix: dict[str, str] = field(default_factory=dict)  # model -> prefix (user's)
    query_prefix: dict[str, str] = field(default_factory=dict)
    engine: EngineOptions = field(default_factory=EngineOptions)
    executor: str = DEFAULT_EXECUTOR  # a name of `engine.EXECUTORS`
    ray_address: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_path: Path | None = None
    upload: bool = True
    build_index: bool = True
    keep_stale: bool = False
    keep_missing: bool = False  # keep collections whose folder left the tree (several trees)
    recreate: bool = False
    verify_full: bool = False  # read every unchanged collection back instead of trusting stats
    sparse: str | None = None
    sparse_language: str = "english"
    export: bool = False
    create_zip: bool = False
    zip_compression: str = "deflated"
    pattern: str = CHUNK_FILE_PATTERN
    max_depth: int = MAX_DISCOVERY_DEPTH
    wave_size: int | None = None  # chunks per wave; None: chosen from the memory available
    upload_batch_size: int = 1024
    wait: bool = True  # for another run holding the output directory (False: --no-wait)
    storage: StorageOptions = field(default_factory=StorageOptions)
    docs_dir: Path | None = None  # chunk these documents into `chunked_dir` first (`--docs`)
    chunk_size: int | None = None  # tokens; None: the chunker's default
    chunk_overlap: int | None = None
    keep_navigation: bool = False

    @property
    def store_path(self) -> Path:
        return self.qdrant_path or self.output_dir / STORE_DIR

    @property
    def embedding_cache_path(self) -> Path:
        return (self.cache_dir or self.output_dir / CACHE_DIR) / CACHE_FILE


class RunOptions(TypedDict, total=False):
    """Every option of a run, named as the command line's long options (`--max-seq-length` is
    `max_seq_length`). Lists are Python lists; paths may be strings."""

    collections: Sequence[str]
    models: Sequence[str]
    weights: Sequence[float]
    weights_file: str | Path
    combine: str
    max_seq_length: int
    truncate_dim: int
    document_prefix: Mapping[str, str] | Sequence[str]
    query_prefix: Mapping[str, str] | Sequence[str]
    trust_remote_code: bool
    model_cache_dir: str | Path
    cache_dir: str | Path
    device: str
    dtype: str
    backend: str
    quantize: str
    batch_size: int
    max_batch_tokens: int
    lease_dir: str | Path
    lease_timeout: float
    check_interval: float
    stall_timeout: float
    executor: str
    ray_address: str
    qdrant_url: str
    qdrant_api_key: str
    qdrant_host: str
    qdrant_port: int
    qdrant_path: str | Path
    no_upload: bool
    no_index: bool
    keep_stale: bool
    keep_missing: bool
    recreate: bool
    verify_full: bool
    sparse: str
    sparse_language: str
    export: bool
    create_zip: bool
    zip_compression: str
    pattern: str
    max_depth: int
    wave_size: int | str  # "auto" (the default): chosen from the memory available
    no_wait: bool
    quiet: bool
    quantization: str
    vector_dtype: str
    on_disk: bool
    oversampling: float
    docs: str | Path
    chunk_size: int
    chunk_overlap: int
    keep_navigation: bool


RUN_OPTIONS = tuple(RunOptions.__annotations__)
STORAGE_OPTIONS = ("quantization", "vector_dtype", "on_disk", "oversampling")
PATH_OPTIONS = (
    *("weights_file", "model_cache_dir", "cache_dir", "lease_dir", "qdrant_path", "docs"),
)


def build_run_config(
    chunked_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    options: RunOptions | None = None,
) -> RunConfig:
    """The RunConfig for these options; unset ones take the defaults of `run --help`.

    Device defaults are resolved on this machine, except with `executor="ray"`, where the
    cluster's devices decide. An unknown option is a UsageError naming it.
    """
    given: dict[str, Any] = {k: v for k, v in dict(options or {}).items() if v is not None}
    unknown = sorted(set(given) - set(RUN_OPTIONS))
    if unknown:
        raise UsageError(
            f"Unknown run option {', '.join(unknown)}; the options are {', '.join(RUN_OPTIONS)}"
        )
    if given.get("wave_size") == "auto":
        del given["wave_size"]
    if "wave_size" in given and (not isinstance(given["wave_size"], int) or given["wave_size"] < 1):
        raise UsageError(
            f"wave_size {given['wave_size']!r} is not a number of chunks; give 1 or more, or "
            '"auto" to choose it from the memory available'
        )
    for key in PATH_OPTIONS:
        if key in given:
            given[key] = Path(given[key])
    environment = detect_environment()
    default_chunked, default_output = default_paths(environment)
    models = tuple(given.get("models") or ()) or DEFAULT_ENSEMBLE_MODELS
    weights = tuple(float(w) for w in given["weights"]) if given.get("weights") else None
    if "weights_file" in given:  # without models, the file's models
        models, weights = apply_weights_file(
            given["weights_file"], tuple(given.get("models") or ()) or None, weights
        )
    url = given.get("qdrant_url")
    if not url and (given.get("qdrant_host") or given.get("qdrant_port")):
        url = f"http://{given.get('qdrant_host') or 'localhost'}:{given.get('qdrant_port') or 6333}"
    engine_fields = {f.name for f in fields(EngineOptions)}
    engine = EngineOptions(
        **{k: v for k, v in given.items() if k in engine_fields},
        show_progress=not given.get("quiet", False),
    )
    if given.get("ray_address"):  # a Ray address means the Ray executor
        if given.get("executor", ADDRESS_EXECUTOR) != ADDRESS_EXECUTOR:
            raise UsageError(
                f"--ray-address {given['ray_address']} needs --executor {ADDRESS_EXECUTOR} "
                f"(drop --executor "
                f"{given['executor']}, or drop --ray-address to run in this process)"
            )
        given["executor"] = ADDRESS_EXECUTOR
    executor = executor_for(given.get("executor") or DEFAULT_EXECUTOR)
    explicit = {"chunked_dir", "output_dir", "environment", "models", "weights", "engine"}
    explicit |= {"collections", "qdrant_url", "upload", "build_index", "export", "wait"}
    explicit |= {"document_prefix", "query_prefix", "storage"}
    config_fields = {f.name for f in fields(RunConfig)} - explicit
    output = Path(output_dir) if output_dir else default_output
    if "docs" in given and not chunked_dir:  # pages are chunked into the output directory
        default_chunked = output / "chunked"
    return RunConfig(
        chunked_dir=Path(chunked_dir) if chunked_dir else default_chunked,
        output_dir=output,
        docs_dir=given.get("docs"),
        environment=environment,
        models=models,
        weights=weights,
        engine=engine if executor.on_cluster else engine.resolved(),
        **{k: v for k, v in given.items() if k in config_fields},
        collections=tuple(given.get("collections") or ()),
        qdrant_url=url,
        upload=not given.get("no_upload", False),
        build_index=not given.get("no_index", False),
        export=bool(given.get("export") or given.get("create_zip")),
        wait=not given.get("no_wait", False),
        document_prefix=parse_prefixes(given.get("document_prefix"), "--document-prefix"),
        query_prefix=parse_prefixes(given.get("query_prefix"), "--query-prefix"),
        storage=build_storage(given),
    )


def parse_prefixes(value: Mapping[str, str] | Sequence[str] | None, option: str) -> dict[str, str]:
    """Per-model prefixes from a mapping or from `MODEL=PREFIX` strings (the command line's form;
    the prefix may be empty, to embed a model without the prefix it declares)."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        return {str(model): str(text) for model, text in value.items()}
    prefixes = {}
    for item in [value] if isinstance(value, str) else value:
        model, sep, text = str(item).partition("=")
        if not sep or not model:
            raise UsageError(
                f'{option} "{item}" has no model; write MODEL=PREFIX, e.g. '
                f"{option} 'intfloat/e5-small-v2=query: '"
            )
        prefixes[model] = text
    return prefixes


def build_storage(given: dict[str, Any]) -> StorageOptions:
    """The storage options among `given` (run options or `upload`'s), defaults for the rest."""
    return StorageOptions(**{k: given[k] for k in STORAGE_OPTIONS if given.get(k) is not None})
