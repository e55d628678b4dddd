"""The record of a run (`run_config.json`): what `run` built, read back by every later command.

One frozen, typed, versioned record: the resolved models with their backends and fingerprints,
the combine mode and layout, sparse settings, store, caches and engine settings. `run` writes it;
`search`, `eval` and re-runs read it; `run --export` copies its models into each stats file.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from embed_collections.atomic import write_json_atomic
from embed_collections.errors import UsageError
from embed_collections.record.files import RUN_RECORD_FILE
from embed_collections.stores.base import VectorLayout

FORMAT_VERSION = 2  # 1: the untyped dict of embed-collections before the record had a version
RERUN = (
    "re-run `embed-collections run` with the same options to rewrite it (cached vectors are reused)"
)


@dataclass(frozen=True)
class ModelRecord:
    """One ensemble member as the run embedded with it."""

    name: str
    path: str
    source: str
    weight: float
    dim: int | None
    document_prefix: str
    query_prefix: str
    max_seq_length: int | None
    truncate_dim: int | None
    fingerprint: str
    backend: str
    dtype: str
    vector_name: str = ""
    prefix_source: str = ""  # model config, known model, option (none in older records)


@dataclass(frozen=True)
class SparseRecord:
    """The sparse encoder's settings (BM25's, or a learned model's name and folder); queries
    must be encoded with the same ones."""

    kind: str
    language: str
    k: float
    b: float
    avg_len: float
    model: str = ""  # a learned sparse model (kind splade): its name and folder
    path: str = ""


@dataclass(frozen=True)
class StoreRecord:
    """Where the points went: a server URL, or an embedded store folder."""

    url: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class EngineRecord:
    """How the models ran (the settings that are not already per model)."""

    device: str
    dtype: str
    backend: str
    quantize: str
    batch_size: int


@dataclass(frozen=True)
class RunRecord:
    """What a run is: models, combine mode, layout, sparse settings, store and caches."""

    chunked_dir: str
    models: tuple[ModelRecord, ...]
    combine: str
    layout: VectorLayout | None
    sparse: SparseRecord | None
    store: StoreRecord
    cache: str
    model_cache_dir: str | None
    trust_remote_code: bool
    engine: EngineRecord

    @property
    def weights(self) -> list[float]:
        return [model.weight for model in self.models]

    def to_json(self) -> dict[str, Any]:
        """The JSON form, with its format version first."""
        data = asdict(self)
        data["models"] = [asdict(model) for model in self.models]
        data["layout"] = self.layout.to_json() if self.layout else None
        return {"format": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: Any, source: str = RUN_RECORD_FILE) -> RunRecord:
        """Build and check a record; a UsageError naming `source` and the fix if it is not one."""
        if not isinstance(data, dict):
            raise UsageError(f"{source} is not a run record (a JSON object); {RERUN}")
        version = data.get("format", 1)
        if version != FORMAT_VERSION:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            fix = "upgrade embed-collections to read it" if newer else RERUN
            raise UsageError(
                f"{source} is run record format {version}; this version reads format "
                f"{FORMAT_VERSION}: {fix}"
            )
        try:
            layout = data["layout"]
            return cls(
                chunked_dir=str(data["chunked_dir"]),
                models=tuple(build(ModelRecord, m) for m in data["models"]),
                combine=str(data["combine"]),
                layout=VectorLayout.from_json(layout) if layout else None,
                sparse=build(SparseRecord, data["sparse"]) if data["sparse"] else None,
                store=build(StoreRecord, data["store"]),
                cache=str(data["cache"]),
                model_cache_dir=data["model_cache_dir"],
                trust_remote_code=bool(data["trust_remote_code"]),
                engine=build(EngineRecord, data["engine"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            problem = f"missing {error}" if isinstance(error, KeyError) else str(error)
            raise UsageError(f"{source} is incomplete or damaged ({problem}); {RERUN}") from error


def build(kind: type, data: Any) -> Any:
    """One nested record from its JSON object; a KeyError names the first missing field."""
    if not isinstance(data, dict):
        raise TypeError(f"{kind.__name__} must be a JSON object, got {type(data).__name__}")
    required = [f.name for f in fields(kind) if f.default is MISSING]
    for name in required:
        if name not in data:
            raise KeyError(f"{kind.__name__}.{name}")
    return kind(**{f.name: data[f.name] for f in fields(kind) if f.name in data})


def write_run_record(output_dir: Path, record: RunRecord) -> Path:
    """Write `run_config.json` atomically; returns its path."""
    path = output_dir / RUN_RECORD_FILE
    write_json_atomic(path, record.to_json())
    return path


def read_run_record(output_dir: Path) -> RunRecord:
    """Read the record of an earlier run, or a one-line UsageError saying what to do."""
    path = output_dir / RUN_RECORD_FILE
    if not path.exists():
        raise UsageError(
            f"No run found in {output_dir} ({RUN_RECORD_FILE} is missing); run "
            "`embed-collections run` first or pass --output-dir of an earlier run"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"{path} cannot be read ({error}); {RERUN}") from error
    return RunRecord.from_json(data, str(path))
