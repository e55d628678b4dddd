"""What the user says about a served run: a sentence per collection (what it holds), shown to
agents in `list_collections` and the tool descriptions, and tool descriptions of their own.

They come from `descriptions.json` in the output directory, written by the user:

    {"collections": {"Docling": "Docling's docs: converting PDFs and Office files"},
     "tools": {"search": "Search our product manuals ..."}}

and from `serve --describe NAME=TEXT` / `--tool-description TOOL=TEXT`, which win.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from embed_collections.errors import UsageError

DESCRIPTIONS_FILE = "descriptions.json"
TOOLS = ("list_collections", "search", "read")
MAX_DESCRIPTION_CHARS = 4000


@dataclass(frozen=True)
class Descriptions:
    """Collection descriptions and tool description overrides, by name."""

    collections: dict[str, str] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)


def parse_pairs(pairs: Iterable[str], option: str) -> dict[str, str]:
    """NAME=TEXT pairs (UsageError naming the option and the fix for one without "=")."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        if not equals or not name.strip() or not text.strip():
            raise UsageError(
                f'{option} "{pair}" is not NAME=TEXT (e.g. {option} "Docs=User guides")'
            )
        parsed[name.strip()] = text.strip()[:MAX_DESCRIPTION_CHARS]
    return parsed


def load_descriptions(
    output_dir: Path,
    describe: Iterable[str] = (),
    tool_descriptions: Iterable[str] = (),
) -> Descriptions:
    """The run's `descriptions.json` (if any) overlaid with the command line's pairs."""
    path = Path(output_dir) / DESCRIPTIONS_FILE
    collections: dict[str, str] = {}
    tools: dict[str, str] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UsageError(
                f"{path}: not a readable JSON file ({error}); fix or remove it"
            ) from error
        if not isinstance(data, dict):
            raise UsageError(f'{path}: expected an object with "collections" and "tools"')
        collections = _texts(data.get("collections"), path, "collections")
        tools = _texts(data.get("tools"), path, "tools")
    collections.update(parse_pairs(describe, "--describe"))
    tools.update(parse_pairs(tool_descriptions, "--tool-description"))
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        raise UsageError(
            f'Tool "{unknown[0]}" has a description but no such tool exists; the tools are '
            + ", ".join(TOOLS)
        )
    return Descriptions(collections, tools)


def _texts(value: object, path: Path, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UsageError(f'{path}: "{key}" must map names to texts')
    return {str(name): text.strip()[:MAX_DESCRIPTION_CHARS] for name, text in value.items()}
