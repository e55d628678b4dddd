"""What a model folder holds: its format, its dimension, its fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from embed_collections.atomic import write_text_atomic
from embed_collections.engine.models.specs import STATIC_MODULE, ModelSpec

log = logging.getLogger(__name__)


def read_embedding_dim(spec: ModelSpec) -> int | None:
    """The output dimension read from the folder's config files, without loading weights."""
    if spec.settings.truncate_dim:
        return spec.settings.truncate_dim
    if spec.static:
        return static_embedding_dim(spec.path)
    dim = None
    modules_file = spec.path / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.exists() else []
    for module in modules:
        module_dir = spec.path / module.get("path", "")
        kind = module.get("type", "")
        if kind.endswith("Dense"):
            dim = read_json_key(module_dir / "config.json", "out_features") or dim
        elif kind.endswith("Pooling"):
            dim = read_json_key(module_dir / "config.json", "word_embedding_dimension") or dim
    if dim is None:
        for key in ("hidden_size", "dim", "d_model", "n_embd"):
            dim = dim or read_json_key(spec.path / "config.json", key)
    return dim


def static_format(path: Path) -> str | None:
    """`sentence-transformers` for a folder whose first module is `StaticEmbedding`, `model2vec`
    for a model2vec folder (config.json says so, no modules.json), None for other models."""
    modules_file = path / "modules.json"
    if modules_file.exists():
        modules = json.loads(modules_file.read_text())
        first = modules[0].get("type", "") if modules and isinstance(modules[0], dict) else ""
        return "sentence-transformers" if first.endswith(STATIC_MODULE) else None
    config_file = path / "config.json"
    if not config_file.exists():
        return None
    config = json.loads(config_file.read_text())
    return "model2vec" if config.get("model_type") == "model2vec" else None


def static_embedding_dim(path: Path) -> int | None:
    """A static model's dimension, from its safetensors header (the weights are not read)."""
    for file in (path / "model.safetensors", path / "0_StaticEmbedding" / "model.safetensors"):
        if file.exists():
            for key in ("embedding.weight", "embeddings"):
                shape = read_safetensors_shape(file, key)
                if shape and len(shape) == 2:
                    return int(shape[1])
    return read_json_key(path / "config.json", "hidden_dim")


def read_safetensors_shape(path: Path, key: str) -> list[int] | None:
    """The shape of one tensor of a safetensors file (its JSON header: 8-byte length, then JSON)."""
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 0 < length < 100_000_000:
            return None
        header = json.loads(handle.read(length))
    entry = header.get(key)
    return list(entry["shape"]) if isinstance(entry, dict) and "shape" in entry else None


def read_json_key(path: Path, key: str) -> int | None:
    if not path.exists():
        return None
    value = json.loads(path.read_text()).get(key)
    return int(value) if isinstance(value, int) else None


def user_cache_home() -> Path:
    """The per-user cache folder (EMBED_COLLECTIONS_CACHE_HOME overrides it)."""
    if os.environ.get("EMBED_COLLECTIONS_CACHE_HOME"):
        return Path(os.environ["EMBED_COLLECTIONS_CACHE_HOME"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("embed-collections"))


def folder_stat_key(path: Path) -> str:
    """A cheap key that changes when any file of the folder changes (names, sizes, mtimes)."""
    digest = hashlib.sha256(str(path.resolve()).encode())
    for file in sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts):
        stat = file.stat()
        digest.update(
            f"{file.relative_to(path).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
        )
    return digest.hexdigest()


def fingerprint_folder(path: Path) -> str:
    """sha256 over every file's relative name and content: the model's identity for the cache.

    Reading every byte costs about a second per 500 MB, so the result is remembered under the
    folder's names, sizes and mtimes and only recomputed when one of them changes.
    """
    memo = user_cache_home() / "folder-hashes" / folder_stat_key(path)
    if memo.is_file():
        return memo.read_text().strip()
    value = hash_folder_content(path)
    try:
        write_text_atomic(memo, value)
    except OSError:  # a read-only cache only costs the re-hash next time
        log.debug("cannot remember the hash of %s in %s", path, memo.parent)
    return value


def hash_folder_content(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts):
        digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_fingerprint(spec: ModelSpec, backend: str, dtype: str, content_hash: str = "") -> str:
    """Identity of a model's vectors: weights, prefix, length, truncation, dtype and backend.

    Anything that changes the numbers changes the fingerprint, so vectors never mix in the cache.
    `backend` is the one preflight decided; this only hashes.
    """
    identity = {
        "content": content_hash or fingerprint_folder(spec.path),
        "document_prefix": spec.settings.document_prefix,
        "max_seq_length": spec.settings.max_seq_length,
        "truncate_dim": spec.settings.truncate_dim,
        "dtype": dtype,
        "backend": backend,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def hub_cache_dirs(model_cache_dir: Path | None) -> list[Path]:
    """Where Hugging Face style caches may hold models: --model-cache-dir, then HF's own."""
    dirs = [model_cache_dir] if model_cache_dir else []
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    dirs.append(Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub")))
    return dirs


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
