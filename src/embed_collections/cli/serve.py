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

log = logging.getLogger("embed_collections.cli.serve")


@click.command()
@click.option(
    "--output-dir",
    "--output_dir",
    "output_dir",
    type=click.Path(path_type=Path),
    help="Output directory of the run to serve [./output].",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; one other machines can reach needs --api-key (or --no-auth).",
)
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
@click.option(
    "--api-key",
    envvar="EMBED_COLLECTIONS_API_KEY",
    help="Key every request must send as Authorization: Bearer KEY (HTTP and MCP) "
    "[env EMBED_COLLECTIONS_API_KEY].",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Serve a non-loopback --host without an API key (logs a warning).",
)
@click.option(
    "--allowed-hosts",
    multiple=True,
    help="Host names clients may use besides the loopback ones and --host (comma-separated or "
    "repeated; * for any), e.g. search.internal.",
)
@click.option(
    "--cors-origin",
    help="One browser origin allowed to call the API cross-site, e.g. https://app.example.com "
    "[CORS off].",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds a client has to send a request's head, and again its body (then 408).",
)
@click.option(
    "--max-body",
    type=click.IntRange(min=1024),
    default=1 << 20,
    show_default=True,
    help="Largest request body in bytes (then 413).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Open connections at most; more are answered 429 and closed.",
)
@click.option(
    "--describe",
    multiple=True,
    metavar="NAME=TEXT",
    help="What collection NAME holds, shown to agents (repeatable; over descriptions.json in "
    "the output directory).",
)
@click.option(
    "--tool-description",
    multiple=True,
    metavar="TOOL=TEXT",
    help="Replace the description of MCP tool list_collections, search or read (repeatable).",
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
    api_key,
    no_auth,
    allowed_hosts,
    cors_origin,
    request_timeout,
    max_body,
    max_connections,
    describe,
    tool_description,
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
      POST /search        {"query", "collections", "top_k", "mode", "where", "diversity",
                           "max_tokens", "rerank", "rerank_top_n"}
      POST /read          {"collection", "chunk_id", "before", "after", "section",
                           "document_id", "source_file", "max_tokens"}
      GET  /healthz       liveness
    Only loopback host names are served by default (a DNS-rebinding page reads nothing); a
    --host other machines can reach needs --api-key, sent as `Authorization: Bearer KEY`.

    \b
    Example:
      embed-collections serve --output-dir ./output --port 8000
      embed-collections serve --host 0.0.0.0 --api-key "$KEY" --allowed-hosts search.internal
      curl -s localhost:8000/search -d '{"query": "install with pip", "top_k": 3}'
      embed-collections serve --output-dir ./output --mcp   # in an MCP client's config
    """
    import embed_collections as ec

    setup_logging(verbose, quiet)
    ec.serve(
        output_dir,
        host=host,
        port=port,
        mcp=mcp_stdio,
        qdrant_url=qdrant_url,
        qdrant_path=qdrant_path,
        qdrant_api_key=qdrant_api_key,
        device=device,
        trust_remote_code=trust_remote_code,
        max_batch=max_batch,
        threads=threads,
        poll_seconds=poll_seconds,
        api_key=api_key,
        no_auth=no_auth,
        allowed_hosts=tuple(name.strip() for value in allowed_hosts for name in value.split(",")),
        cors_origin=cors_origin,
        request_timeout=request_timeout,
        max_body=max_body,
        max_connections=max_connections,
        log_level="info" if verbose else "warning",
        describe=describe,
        tool_description=tool_description,
        rerank=rerank,
        rerank_top_n=rerank_top_n,
        rerank_max_length=rerank_max_length,
        announce=click.echo,
    )
