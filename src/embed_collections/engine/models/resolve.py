"""Resolution of a model name to a local folder (folder, caches, packages, the hub), before
any embedding starts, so a model that cannot be had fails a run in seconds."""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from embed_collections.engine.models.folders import (
    hub_cache_dirs,
    hub_offline,
    read_embedding_dim,
    read_json_key,
    static_format,
)
from embed_collections.engine.models.prompts import choose_prefixes, read_model_prompts
from embed_collections.engine.models.remote_code import preflight_code
from embed_collections.engine.models.specs import (
    KNOWN_SETTINGS,
    PACKAGED_MODELS,
    ModelSettings,
    ModelSpec,
    canonical_name,
)
from embed_collections.errors import ModelError, UsageError

log = logging.getLogger(__name__)


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
