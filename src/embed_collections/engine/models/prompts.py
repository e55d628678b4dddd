"""Prefixes a model needs before its texts: its own prompts, the known ones, or the user's.

A model may declare prompts in its sentence-transformers config (`prompts`, `default_prompt_name`
in `config_sentence_transformers.json`), as e5-style `query: ` / `passage: ` models do. Embedding
without them still works, only worse, so they are read before anything embeds.
"""

from __future__ import annotations

import json
from pathlib import Path

from embed_collections.errors import ModelError

SENTENCE_TRANSFORMERS_CONFIG = "config_sentence_transformers.json"
# The names sentence-transformers' encode_query / encode_document look for, then nomic's spelling.
QUERY_PROMPT_NAMES = ("query", "search_query")
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus", "search_document")


def read_model_prompts(path: Path) -> tuple[str | None, str | None]:
    """(document prompt, query prompt) a model folder declares, None for a kind it does not.

    The first non-empty prompt named `document`, `passage` or `corpus` (sentence-transformers'
    names, or nomic's `search_document`) for documents, `query` (or `search_query`) for queries,
    else the prompt `default_prompt_name` names, for both.
    """
    file = path / SENTENCE_TRANSFORMERS_CONFIG
    try:
        config = json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, ValueError) as error:
        raise ModelError(
            f"{file} cannot be read ({error}); repair or re-download the model folder"
        ) from error
    prompts = config.get("prompts") if isinstance(config, dict) else None
    if not isinstance(prompts, dict):
        return None, None
    # sentence-transformers 6 saves empty `query` and `document` prompts into every model: an
    # empty prompt declares nothing (the known-model table still applies).
    prompts = {name: text for name, text in prompts.items() if isinstance(text, str) and text}
    default = prompts.get(config.get("default_prompt_name") or "")

    def first(names: tuple[str, ...]) -> str | None:
        return next((prompts[name] for name in names if name in prompts), default)

    return first(DOCUMENT_PROMPT_NAMES), first(QUERY_PROMPT_NAMES)


def choose_prefixes(
    options: tuple[str | None, str | None],
    declared: tuple[str | None, str | None],
    known: tuple[str, str],
) -> tuple[str, str, str]:
    """(document prefix, query prefix, where they came from): per kind, the user's option, else
    the model's own prompt, else the known-model table's, else none."""
    chosen: list[str] = []
    sources: list[str] = []
    for option, own, table in zip(options, declared, known):
        if option is not None:
            chosen.append(option)
            sources.append("option")
        elif own is not None:
            chosen.append(own)
            sources.append("model config")
        else:
            chosen.append(table)
            sources.append("known model" if table else "none")
    source = (
        sources[0] if sources[0] == sources[1] else f"document: {sources[0]}, query: {sources[1]}"
    )
    return chosen[0], chosen[1], source
