"""The HTTP face of `serve`: a JSON API (FastAPI on uvicorn) and MCP over streamable HTTP.

Every expected failure answers `{"error": "..."}` naming the field and the fix: 400 for bad
input, 404 for an unknown collection, 422 for a body that does not fit the schema; anything
else is a 500 with a one-line message, never a traceback.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from embed_collections.errors import EmbedCollectionsError, UsageError
from embed_collections.query.access import AccessGuard, AccessPolicy
from embed_collections.query.agent_routes import (
    DIVERSITY_HELP,
    MAX_TOKENS_HELP,
    NEIGHBOURS_HELP,
    add_read_route,
)
from embed_collections.query.collections import UnknownCollectionError
from embed_collections.query.connections import uvicorn_settings
from embed_collections.query.context import DEFAULT_NEIGHBOURS
from embed_collections.query.hits import MAX_QUERY_CHARS, MAX_TOP_K
from embed_collections.query.http_errors import install_error_handlers
from embed_collections.query.service import SearchService

log = logging.getLogger(__name__)


class SearchBody(BaseModel):
    """POST /search: what to search for, where, and how."""

    model_config = ConfigDict(extra="forbid", strict=True)  # top_k true, "3" or 3.0: a 422

    query: str = Field(
        description=f"Text to search for (1 to {MAX_QUERY_CHARS:,} characters).",
        examples=["How do I convert a PDF?"],
    )
    collections: list[str] | str | None = Field(
        default=None,
        description='Collection names, a comma-separated string, or "all"/null for every one.',
    )
    top_k: int = Field(default=10, description=f"Number of hits, 1 to {MAX_TOP_K}.")
    mode: str | None = Field(
        default=None,
        description="dense, sparse or hybrid [hybrid when the run stored sparse vectors].",
    )
    where: dict[str, Any] | None = Field(
        default=None,
        description='Payload fields to match exactly, e.g. {"source_file": "guide.md"} or '
        '{"metadata.lang": "en"}; values are strings, integers or booleans.',
    )
    diversity: float = Field(default=0.0, description=DIVERSITY_HELP)
    max_tokens: int | None = Field(default=None, description=MAX_TOKENS_HELP)
    neighbours: int = Field(default=DEFAULT_NEIGHBOURS, description=NEIGHBOURS_HELP)
    rerank: bool | None = Field(
        default=None,
        description="Rerank with the server's cross-encoder (serve --rerank MODEL) [true when "
        "it has one]; false: the first stage alone.",
    )
    rerank_top_n: int | None = Field(
        default=None,
        description="First-stage candidates the reranker scores, top_k to 1000 [50].",
    )


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def describe_validation(error: RequestValidationError) -> str:
    """The first schema error as one line naming the field."""
    problems = error.errors()
    if not problems:
        return "The request body does not fit the schema (see /docs)"
    first = problems[0]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON (send a JSON object, see /docs)"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if not where:
        return (
            'The request body must be a JSON object with at least "query" '
            "(sent as Content-Type: application/json; see /docs)"
        )
    if first.get("type") == "extra_forbidden":
        return f'Unknown field "{where}"; the fields are {", ".join(SearchBody.model_fields)}'
    return f'Field "{where}": {first.get("msg", "invalid")} (see /docs for the schema)'


def create_app(
    service: SearchService,
    mcp_server: Any = None,
    host: str = "127.0.0.1",
    policy: AccessPolicy | None = None,
) -> FastAPI:
    """The API over `service`; with `mcp_server`, MCP over streamable HTTP at /mcp/; `policy`
    (default: loopback hosts, no key) guards every endpoint, MCP's included."""
    policy = policy or AccessPolicy.for_bind(host)
    mcp_app = None
    if mcp_server is not None:
        mcp_app = mcp_server.streamable_http_app(
            streamable_http_path="/", host=host, transport_security=policy.mcp_security()
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if mcp_server is None:
            yield
            return
        async with mcp_server.session_manager.run():
            yield

    app = FastAPI(
        title="embed-collections",
        summary="Search a run's collections with the run's own ensemble.",
        lifespan=lifespan,
    )

    install_error_handlers(app)
    if policy.cors_origin:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[policy.cors_origin],
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "authorization",
                "content-type",
                "mcp-session-id",
                "mcp-protocol-version",
            ],
        )
    app.add_middleware(AccessGuard, policy=policy)  # added last: the outermost layer

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, describe_validation(error))

    @app.get("/healthz", summary="Liveness, and what is being served")
    def healthz() -> dict[str, Any]:
        return service.health()

    @app.get("/collections", summary="The collections, their point counts and the models")
    def collections() -> dict[str, Any]:
        return service.collections()

    @app.post("/search", summary="Search one, several or all collections")
    async def search(body: SearchBody) -> Any:
        try:
            return await service.search(**body.model_dump())
        except UnknownCollectionError as error:
            return error_response(404, str(error))
        except UsageError as error:
            return error_response(400, str(error))
        except EmbedCollectionsError as error:
            log.warning("Search failed: %s", error)
            return error_response(500, str(error))
        except Exception as error:
            debug = log.isEnabledFor(logging.DEBUG)
            log.warning("Search failed: %s: %s", type(error).__name__, error, exc_info=debug)
            return error_response(500, f"The search failed: {type(error).__name__}: {error}")

    add_read_route(app, service)
    if mcp_app is not None:
        app.mount("/mcp", mcp_app)
    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free port the system picks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for sockets that
    # say so, and without it every kept-alive response waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UsageError(
            f"Cannot listen on {host}:{port}: {error.strerror or error} (choose another --port, "
            "or --port 0 for a free one)"
        ) from error
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(
    app: FastAPI, log_level: str = "warning", policy: AccessPolicy | None = None
) -> uvicorn.Server:
    """uvicorn for `app`, with `policy`'s timeouts and connection cap."""
    config = uvicorn.Config(
        app, log_level=log_level, access_log=False, **uvicorn_settings(policy or AccessPolicy())
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """The app on a real loopback socket, served by uvicorn in a thread (tests, benchmarks,
    notebooks): `with BackgroundServer(app) as server: httpx.get(server.url + "/healthz")`."""

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        policy: AccessPolicy | None = None,
    ) -> None:
        self.socket = bind_socket(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn_server(app, policy=policy)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise EmbedCollectionsError(f"The server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()
