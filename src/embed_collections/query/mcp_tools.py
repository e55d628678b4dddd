"""The MCP face of `serve` (the official `mcp` SDK): tools `list_collections` and `search`,
over stdio for desktop agents or mounted in the HTTP server as streamable HTTP."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from embed_collections.errors import EmbedCollectionsError
from embed_collections.query.collections import MAX_TOP_K
from embed_collections.query.service import SearchService

INSTRUCTIONS = (
    "Semantic search over document collections embedded by embed-collections. Call "
    "list_collections first to see which collections exist and how many chunks each holds, "
    "then search with a natural-language query, optionally restricted to some collections "
    "and to payload fields (where). Each hit carries its collection, source file, text and a "
    "score (cosine similarity, higher is closer; about 0.3 and above is usually relevant)."
)

SEARCH_DESCRIPTION = f"""Search the collections for chunks relevant to a natural-language query.

The query is embedded with the same models the collections were built with, so results match
what the documents mean, not only their words (hybrid mode also matches exact terms, such as
error codes and identifiers).

Arguments:
- query: what to look for, as a question or a few words (required).
- collections: names from list_collections; omit (or ["all"]) to search every collection.
- top_k: how many hits to return, 1 to {MAX_TOP_K} (default 10).
- mode: "dense" (meaning), "sparse" (keywords, BM25) or "hybrid" (both); omit for the default.
- where: exact payload matches, e.g. {{"source_file": "guide_chunks.json"}} or
  {{"metadata.lang": "en"}}.
- rerank / rerank_top_n: where the server has a reranker (list_collections says so), it
  rescores the first rerank_top_n candidates (default 50) and hits carry rerank_score, a
  probability of relevance; rerank false returns the first stage alone.

Returns {{"mode", "hits": [{{"collection", "chunk_id", "score", "rank", "source_file",
"text", "metadata", ...}}]}}, best first."""


def build_mcp(service: SearchService) -> MCPServer:
    """An MCP server whose tools answer from `service`."""
    app: MCPServer = MCPServer("embed-collections", instructions=INSTRUCTIONS, log_level="WARNING")

    @app.tool(
        description="List the searchable collections with their number of chunks, and the "
        "embedding models and default search mode behind them. Call this before search."
    )
    async def list_collections() -> dict[str, Any]:
        try:
            return service.collections()
        except EmbedCollectionsError as error:
            raise ToolError(str(error)) from error

    @app.tool(description=SEARCH_DESCRIPTION)
    async def search(
        query: str,
        collections: list[str] | None = None,
        top_k: int = 10,
        mode: str | None = None,
        where: dict[str, str | int | bool] | None = None,
        rerank: bool | None = None,
        rerank_top_n: int | None = None,
    ) -> dict[str, Any]:
        try:
            return await service.search(
                query=query, collections=collections, top_k=top_k, mode=mode, where=where,
                rerank=rerank, rerank_top_n=rerank_top_n,
            )  # fmt: skip
        except EmbedCollectionsError as error:
            raise ToolError(str(error)) from error
        except Exception as error:
            raise ToolError(f"The search failed: {type(error).__name__}: {error}") from error

    return app
