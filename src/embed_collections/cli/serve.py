"""`serve`: answer queries over HTTP (JSON API and MCP) or MCP over stdio, models loaded once."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from embed_collections.cli.options import (
    query_options,
    quiet_option,
    rerank_options,
    verbose_option,
)
from embed_collections.cli.render import setup_logging
from embed_collections.errors import UsageError

log = logging.getLogger("embed_collections.cli.serve")


@click.command()
@click.option(
    "--output-dir",
    "--output_dir",
    "output_dir",
    type=click.Path(path_type=Path),
    help="Output directory of the run to serve [./output].",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0: a free one, printed at start).",
)
@click.option(
    "--mcp",
    "mcp_stdio",
    is_flag=True,
    help="Speak MCP over stdin/stdout instead of HTTP (for desktop agents).",
)
@query_options
@rerank_options
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Most concurrent queries embedded in one model call.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads of an ONNX Runtime or OpenVINO model [1 on two or fewer cores, leaving "
    "one to the server; every core otherwise].",
)
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0.05),
    default=2.0,
    show_default=True,
    help="How often to look for a finished run in the output directory.",
)
@verbose_option
@quiet_option
def serve(
    output_dir,
    host,
    port,
    mcp_stdio,
    qdrant_url,
    qdrant_path,
    qdrant_api_key,
    trust_remote_code,
    device,
    rerank,
    rerank_top_n,
    rerank_max_length,
    max_batch,
    threads,
    poll_seconds,
    verbose,
    quiet,
):
    """Serve a run's collections: an HTTP JSON API with OpenAPI docs at /docs and MCP at /mcp/,
    or MCP over stdio with --mcp. Models load once; concurrent queries are embedded together.

    While a `run` writes the same output directory, answers come from the last finished state;
    the new one is picked up when the run finishes.

    \b
    Endpoints:
      GET  /collections   names, point counts, models
      POST /search        {"query", "collections", "top_k", "mode", "where", "rerank",
                           "rerank_top_n"}
      GET  /healthz       liveness
    \b
    Example:
      embed-collections serve --output-dir ./output --port 8000
      curl -s localhost:8000/search -d '{"query": "install with pip", "top_k": 3}'
      embed-collections serve --output-dir ./output --mcp   # in an MCP client's config
    """
    try:
        from embed_collections.query.live import LiveRun, default_threads
        from embed_collections.query.mcp_tools import build_mcp
        from embed_collections.query.server import bind_socket, create_app, uvicorn_server
        from embed_collections.query.service import SearchService
    except ImportError as error:
        raise UsageError(
            f"serve needs its extra ({error.name} is missing): "
            "pip install 'embed-collections[serve]'"
        ) from error
    from embed_collections.record.config import default_paths, detect_environment

    setup_logging(verbose, quiet)
    root = Path(output_dir) if output_dir else default_paths(detect_environment())[1]
    sock = None if mcp_stdio else bind_socket(host, port)  # a taken port fails before loading
    reranker = None
    if rerank:  # loaded before anything is served: a broken reranker fails the start
        from embed_collections.query.rerank import check_rerank_top_n, load_reranker

        check_rerank_top_n(rerank_top_n, 1)
        reranker = load_reranker(rerank, None, trust_remote_code, device, rerank_max_length)
    live = LiveRun(
        root,
        qdrant_url,
        qdrant_path,
        qdrant_api_key,
        device,
        trust_remote_code,
        poll_seconds,
        threads or default_threads(),
    ).start()
    service = SearchService(live, max_batch, reranker, rerank_top_n)
    try:
        mcp = build_mcp(service)
        if mcp_stdio:
            log.info("Serving %d collections of %s over MCP stdio", len(live.state.counts), root)
            mcp.run()
            return
        assert sock is not None
        bound = sock.getsockname()[1]
        click.echo(
            f"Serving {len(live.state.counts)} collections of {root} on http://{host}:{bound} "
            f"(API docs /docs, MCP /mcp/)",
        )
        uvicorn_server(create_app(service, mcp, host), "info" if verbose else "warning").run(
            sockets=[sock]
        )
    except KeyboardInterrupt:  # Ctrl-C: uvicorn stopped cleanly, then re-raised the signal
        log.info("Stopped.")
    finally:
        service.close()
        if sock is not None:
            sock.close()
