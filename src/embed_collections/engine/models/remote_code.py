"""Models that run their own code: found and checked before any weights load."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from embed_collections.engine.models.folders import hub_cache_dirs, hub_offline
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.errors import ModelError, UsageError

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
