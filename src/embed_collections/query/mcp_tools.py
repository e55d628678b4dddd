"""The MCP face of `serve` (the official `mcp` SDK): tools `list_collections`, `search` and
`read`, over stdio for desktop agents or mounted in the HTTP server as streamable HTTP."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from embed_collections.query.agent_tools import add_agent_tools
from embed_collections.query.service import SearchService

INSTRUCTIONS = (
    "Semantic search over document collections embedded by embed-collections. Call "
    "list_collections first to see which collections exist and how many chunks each holds, "
    "then search with a natural-language query, optionally restricted to some collections "
    "and to payload fields (where). Each hit carries its collection, source file, text and a "
    "score (cosine similarity, higher is closer; about 0.3 and above is usually relevant). "
    "Call read with a hit's chunk_id for its neighbours, its section or its whole document, "
    "or search with max_tokens for a context block ready to paste."
)


def build_mcp(service: SearchService) -> MCPServer:
    """An MCP server whose tools (`query/agent_tools.py`) answer from `service`."""
    app: MCPServer = MCPServer("embed-collections", instructions=INSTRUCTIONS, log_level="WARNING")
    add_agent_tools(app, service)
    return app
