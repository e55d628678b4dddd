"""The MCP tools of `serve`, written for an agent: `list_collections`, `search` and `read`, with
argument schemas typed, bounded and enumerated from the run (its collections, modes and payload
fields), descriptions that say what each returns and when to use it (with examples taken from
the run's own payload), and results compact enough for a prompt: the text once, where it is
from, the score. Nothing here writes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, StrictInt, StrictStr

from embed_collections.errors import EmbedCollectionsError
from embed_collections.query.context import DEFAULT_NEIGHBOURS, MAX_CONTEXT_TOKENS
from embed_collections.query.hits import MAX_QUERY_CHARS, MAX_TOP_K
from embed_collections.query.search import SEARCH_MODES
from embed_collections.query.service import POINTS_ARE, SearchService
from embed_collections.stores.base import PointLookup

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
SHOWN_COLLECTIONS = 40  # named in a description; the schema's enum lists them all


def run_facts(service: SearchService) -> dict[str, Any]:
    """What the descriptions and schemas are built from: collections (with descriptions),
    modes, payload fields and one real point's payload for the examples."""
    listing = service.collections()
    names = [c["name"] for c in listing["collections"]]
    example: dict[str, Any] = {}
    with service.live.using() as opened, service.store_lock:
        for name in names[:1]:
            found = opened.store.lookup(name, PointLookup(limit=1))
            example = dict(found[0].payload) if found else {}
        modes = [m for m in SEARCH_MODES if m == "dense" or opened.encoder.sparse is not None]
    return {
        "listing": listing,
        "names": names,
        "modes": modes,
        "default_mode": listing["default_mode"],
        "fields": listing["fields"],
        "example": example,
        "first": names[0] if names else "Docs",
    }


def describe_collections(facts: dict[str, Any]) -> str:
    """`Name (N chunks): description` lines for the tool descriptions."""
    lines = []
    for item in facts["listing"]["collections"][:SHOWN_COLLECTIONS]:
        about = f": {item['description']}" if item.get("description") else ""
        lines.append(f"- {item['name']} ({item['points']} chunks){about}")
    more = len(facts["names"]) - SHOWN_COLLECTIONS
    if more > 0:
        lines.append(f"- ... and {more} more (list_collections names them all)")
    return "\n".join(lines)


def search_description(facts: dict[str, Any]) -> str:
    example = facts["example"]
    source = example.get("source_file", "docs/guide_chunks.json")
    filters = ", ".join(list(facts["fields"])[:10]) or "source_file"
    return f"""Search the documentation collections for the chunks that answer a question.

Use it first for any question about these documents; then call read with a hit's chunk_id to
see the text around it, or pass max_tokens to get a ready-to-paste context block at once.

Arguments:
- query: the question or a few words (required).
- collections: names to search (omit to search all). The collections:
{describe_collections(facts)}
- top_k: hits to return, 1 to {MAX_TOP_K} (default 10).
- mode: {", ".join(facts["modes"])} (default {facts["default_mode"]}); dense matches meaning,
  sparse exact words (error codes, identifiers), hybrid both.
- where: exact payload matches; fields: {filters}. Example:
  {{"source_file": "{source}"}} (source_file is the chunk file's path relative to the chunked
  folder, as hits show it).
- source_file / document_name: shortcuts for where on source_file and
  metadata.document_name (e.g. "{example.get("source_file", "docs/guide_chunks.json")}",
  "{(example.get("metadata") or {}).get("document_name", "guide")}").
- diversity: 0 (default) to 1; higher prefers hits unlike the ones above them.
- rerank / rerank_top_n: where the server has a reranker (list_collections says so), it
  rescores the first rerank_top_n candidates (default 50); false returns the first stage.
- max_tokens: a budget (e.g. 2000): returns the best hits widened with their sections and
  neighbours, grouped by document, each piece under a citation line.

Returns one block per hit: "[rank] score · collection · source_file § section · chunk_id ID",
then the chunk's text. Scores are cosine similarities (higher is closer; about 0.3 and above
is usually relevant)."""


def read_description(facts: dict[str, Any]) -> str:
    example = facts["example"]
    chunk = example.get("chunk_id", "guide-0003")
    document = example.get("doc_id", "guide")
    return f"""Read documentation text around a search hit, in document order.

Use it after search when a hit is cut short: the code example is often in the next chunk, the
caveat at the end of the section.

Arguments (collection is required, then one of chunk_id or document_id/source_file):
- collection: the hit's collection, one of: {", ".join(facts["names"][:SHOWN_COLLECTIONS])}.
- chunk_id: a hit's chunk_id, e.g. "{chunk}"; with before/after (0 to 1000) neighbours, or
  section=true for every chunk of its section.
- document_id (a hit's document_id, e.g. "{document}") or source_file: the whole document,
  up to max_tokens (1 to {MAX_CONTEXT_TOKENS:,}).

Returns the text joined without repeating what chunks share, under a citation line that says
where it is (collection, source file, section, chunk numbers, character offsets)."""


def list_description(facts: dict[str, Any]) -> str:
    return (
        "List the collections this server searches, with what each holds (where described), "
        f"its size ({POINTS_ARE}), the payload fields search's where can filter on, the "
        "embedding models and the default search mode. Call it to choose collections before "
        f"search. The collections now:\n{describe_collections(facts)}"
    )


def render_hits(mode: str, hits: list[dict[str, Any]]) -> str:
    """Search hits as an agent reads them: a citation line, then the text."""
    head = f"{len(hits)} hits ({mode}); read a hit's chunk_id for the text around it."
    blocks = [head]
    for hit in hits:
        section = f" § {hit['section']}" if hit.get("section") else ""
        blocks.append(
            f"[{hit['rank']}] {hit['score']:.3f} · {hit['collection']} · "
            f"{hit['source_file']}{section} · chunk_id {hit['chunk_id']}\n{hit['text']}"
        )
    return "\n\n".join(blocks)


def compact_hit(rank: int, hit: dict[str, Any]) -> dict[str, Any]:
    """Where a hit is from and its score (the text goes in the tool's text, once)."""
    metadata = hit.get("metadata") or {}
    section = metadata.get("section_path")
    return {
        "rank": rank,
        "collection": hit["collection"],
        "chunk_id": hit["chunk_id"],
        "score": hit["score"],
        "source_file": hit["source_file"],
        "document_id": hit["doc_id"],
        "section": " > ".join(map(str, section)) if isinstance(section, list) else "",
        **({"rerank_score": hit["rerank_score"]} if hit.get("rerank_score") is not None else {}),
        "text": hit["text"],
    }


def answer(text: str, structured: dict[str, Any]) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=structured
    )


def without_text(pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in piece.items() if key != "text"} for piece in pieces]


def tool_error(error: Exception, what: str) -> ToolError:
    if isinstance(error, EmbedCollectionsError):
        return ToolError(str(error))
    return ToolError(f"The {what} failed: {type(error).__name__}: {error}")


def enumerate_schema(app: MCPServer, name: str, facts: dict[str, Any]) -> None:
    """Put the run's choices into a tool's argument schema: collection names, modes and the
    payload fields of `where` (values are checked again when the tool runs, with messages
    that name the argument and the fix)."""
    tool = app._tool_manager.get_tool(name)  # the SDK has no public way to amend a schema
    if tool is None:
        return
    properties = tool.parameters.get("properties", {})
    names = {"type": "string", "enum": facts["names"]} if facts["names"] else {"type": "string"}
    if "collections" in properties:
        properties["collections"] = {
            "anyOf": [{"type": "array", "items": names, "minItems": 1}, {"type": "null"}],
            "default": None,
            "description": "Collections to search; omit for all.",
        }
    if "collection" in properties:
        properties["collection"] = {**names, "description": "The hit's collection."}
    if "mode" in properties:
        properties["mode"] = {
            "anyOf": [{"type": "string", "enum": facts["modes"]}, {"type": "null"}],
            "default": None,
            "description": f"Search mode (default {facts['default_mode']}).",
        }
    if "where" in properties and facts["fields"]:
        fields = {key: {"type": kind} for key, kind in facts["fields"].items()}
        properties["where"] = {
            "anyOf": [
                {"type": "object", "properties": fields, "additionalProperties": False},
                {"type": "null"},
            ],
            "default": None,
            "description": "Exact payload matches, e.g. "
            + json.dumps({"source_file": facts["example"].get("source_file", "a_chunks.json")}),
        }


def named_filters(
    where: dict[str, Any] | None,
    source_file: str | None,
    document_name: str | None,
    facts: dict[str, Any],
) -> dict[str, Any] | None:
    """`where` with the search tool's shortcuts for the two filters agents use most."""
    if source_file is None and document_name is None:
        return where
    merged = dict(where or {})
    if source_file is not None:
        merged["source_file"] = source_file
    if document_name is not None:
        if "metadata.document_name" not in facts["fields"]:
            raise ToolError(
                "document_name: this run's chunks carry no metadata.document_name; filter "
                "with source_file (a hit's source_file) instead"
            )
        merged["metadata.document_name"] = document_name
    return merged


def add_agent_tools(app: MCPServer, service: SearchService) -> None:
    """Register list_collections, search and read on `app`, answered from `service`."""
    facts = run_facts(service)
    overrides = service.descriptions.tools

    async def list_collections() -> dict[str, Any]:
        try:
            return service.collections()
        except Exception as error:
            raise tool_error(error, "listing") from error

    async def search(
        query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)],
        collections: list[str] | None = None,
        top_k: Annotated[StrictInt, Field(ge=1, le=MAX_TOP_K)] = 10,  # not true, "3", 3.0
        mode: StrictStr | None = None,
        where: dict[str, str | int | bool] | None = None,
        diversity: Annotated[float, Field(ge=0, le=1)] = 0.0,
        max_tokens: Annotated[int | None, Field(ge=1, le=MAX_CONTEXT_TOKENS)] = None,
        neighbours: Annotated[int, Field(ge=0, le=50)] = DEFAULT_NEIGHBOURS,
        source_file: str | None = None,
        document_name: str | None = None,
        rerank: bool | None = None,
        rerank_top_n: Annotated[StrictInt | None, Field(ge=1, le=MAX_TOP_K)] = None,
    ) -> CallToolResult:
        request: dict[str, Any] = {"query": query, "collections": collections, "top_k": top_k}
        request["mode"] = mode
        request |= {"where": named_filters(where, source_file, document_name, facts)}
        request |= {"diversity": diversity, "rerank": rerank, "rerank_top_n": rerank_top_n}
        try:
            if max_tokens is not None:
                block = await service.search(
                    max_tokens=max_tokens, neighbours=neighbours, **request
                )
                structured = {key: v for key, v in block.items() if key != "text"}
                structured["pieces"] = without_text(block["pieces"])
                return answer(block["text"], structured)
            found = await service.search(**request)
        except Exception as error:
            raise tool_error(error, "search") from error
        hits = [compact_hit(rank, hit) for rank, hit in enumerate(found["hits"], 1)]
        text = render_hits(found["mode"], hits)
        listed = [{k: v for k, v in hit.items() if k != "text"} for hit in hits]
        return answer(text, {"mode": found["mode"], "hits": listed})

    async def read(
        collection: str,
        chunk_id: str | None = None,
        before: Annotated[int, Field(ge=0, le=1000)] = 0,
        after: Annotated[int, Field(ge=0, le=1000)] = 0,
        section: bool = False,
        document_id: str | None = None,
        source_file: str | None = None,
        max_tokens: Annotated[int | None, Field(ge=1, le=MAX_CONTEXT_TOKENS)] = None,
    ) -> CallToolResult:
        request: dict[str, Any] = {"collection": collection, "chunk_id": chunk_id}
        request["before"] = before
        request |= {"after": after, "section": section, "document_id": document_id}
        request |= {"source_file": source_file, "max_tokens": max_tokens}
        try:
            block = await asyncio.to_thread(service.read, **request)
        except Exception as error:
            raise tool_error(error, "read") from error
        structured = {key: v for key, v in block.items() if key != "text"}
        structured["pieces"] = without_text(block["pieces"])
        notes = "".join(f"\n\nNote: {note}" for note in block.get("notes", []))
        cut = (
            "\n\n(cut at max_tokens; read with a larger budget for more)"
            if block.get("truncated")
            else ""
        )
        return answer(block["text"] + cut + notes, structured)

    tools: list[tuple[Callable[..., Any], str, str]] = [
        (list_collections, "list_collections", list_description(facts)),
        (search, "search", search_description(facts)),
        (read, "read", read_description(facts)),
    ]
    for fn, name, description in tools:
        app.add_tool(
            fn, name=name, description=overrides.get(name, description), annotations=READ_ONLY
        )
        enumerate_schema(app, name, facts)
