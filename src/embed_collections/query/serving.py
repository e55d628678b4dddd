"""A run served until stopped: the models loaded once, an HTTP JSON API with MCP at /mcp/, or
MCP over stdio (`ec.serve`, `embed-collections serve`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from embed_collections.query.access import AccessPolicy
from embed_collections.query.descriptions import load_descriptions
from embed_collections.query.live import LiveRun, default_threads
from embed_collections.query.mcp_tools import build_mcp
from embed_collections.query.rerank import DEFAULT_RERANK_TOP_N, check_rerank_top_n, load_reranker
from embed_collections.query.server import bind_socket, create_app, uvicorn_server
from embed_collections.query.service import SearchService

log = logging.getLogger(__name__)


def serve_run(
    output_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    mcp_stdio: bool = False,
    qdrant_url: str | None = None,
    qdrant_path: Path | None = None,
    qdrant_api_key: str | None = None,
    device: str = "",
    trust_remote_code: bool = False,
    max_batch: int = 32,
    threads: int | None = None,
    poll_seconds: float = 2.0,
    api_key: str | None = None,
    no_auth: bool = False,
    allowed_hosts: tuple[str, ...] = (),
    cors_origin: str | None = None,
    request_timeout: float = 10.0,
    max_body: int = 1 << 20,
    max_connections: int = 2048,
    describe: tuple[str, ...] = (),
    rerank: str | None = None,
    rerank_top_n: int = DEFAULT_RERANK_TOP_N,
    rerank_max_length: int | None = None,
    tool_description: tuple[str, ...] = (),
    log_level: str = "warning",
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the run in `output_dir` until interrupted; `announce` gets the line that says
    where (the bound port when `port` is 0)."""
    policy = (
        None
        if mcp_stdio
        else AccessPolicy.for_bind(
            host,
            allowed_hosts,
            api_key,
            no_auth,
            cors_origin,
            max_body_bytes=max_body,
            header_timeout=request_timeout,
            body_timeout=request_timeout,
            max_connections=max_connections,
        )  # fmt: skip
    )
    descriptions = load_descriptions(output_dir, describe, tool_description)
    sock = None if mcp_stdio else bind_socket(host, port)  # a taken port fails before loading
    reranker = None
    if rerank:  # loaded before anything is served: a broken reranker fails the start
        check_rerank_top_n(rerank_top_n, 1)
        reranker = load_reranker(rerank, None, trust_remote_code, device, rerank_max_length)
    live = LiveRun(
        output_dir, qdrant_url, qdrant_path, qdrant_api_key, device, trust_remote_code,
        poll_seconds, threads or default_threads(),
    ).start()  # fmt: skip
    service = SearchService(live, max_batch, descriptions, reranker, rerank_top_n)
    try:
        mcp = build_mcp(service)
        if mcp_stdio:
            count = len(live.state.counts)
            log.info("Serving %d collections of %s over MCP stdio", count, output_dir)
            mcp.run()
            return
        assert sock is not None
        bound = sock.getsockname()[1]
        (announce or log.info)(
            f"Serving {len(live.state.counts)} collections of {output_dir} on "
            f"http://{host}:{bound} (API docs /docs, MCP /mcp/)"
        )
        app = create_app(service, mcp, host, policy)
        uvicorn_server(app, log_level, policy).run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn stopped cleanly, then re-raised the signal
        log.info("Stopped.")
    finally:
        service.close()
        if sock is not None:
            sock.close()
