"""One error shape for every HTTP answer that is not a result: `{"error": "..."}` naming the
problem and the fix, whatever raised it (a route, the body parser, the router's 404/405)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

# FastAPI's own words for a body its JSON parser refused (too deep, not UTF-8, a 5,000-digit
# integer), replaced with what the client can do about it.
PARSE_FAILURE = "There was an error parsing the body"
PARSE_MESSAGE = (
    "The request body could not be parsed: send UTF-8 JSON, nested at most a few levels, "
    "with numbers of ordinary size (see /docs)"
)


def describe_http(error: StarletteHTTPException, request: Request) -> str:
    """One line for a framework error, naming the path or the fix."""
    if error.status_code == 404:
        return f"No endpoint {request.url.path}; the endpoints are listed at /docs"
    if error.status_code == 405:
        allowed = error.headers.get("Allow", "") if error.headers else ""
        return f"{request.method} is not allowed on {request.url.path}" + (
            f" (use {allowed})" if allowed else ""
        )
    detail = str(error.detail)
    return PARSE_MESSAGE if detail == PARSE_FAILURE else detail


def install_error_handlers(app: FastAPI) -> None:
    """Answer framework errors and unexpected exceptions in the `{"error"}` shape."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers: dict[str, Any] | None = dict(error.headers) if error.headers else None
        return JSONResponse(
            {"error": describe_http(error, request)}, status_code=error.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.warning(
            "%s %s failed: %s: %s", request.method, request.url.path, type(error).__name__, error
        )
        return JSONResponse(
            {"error": f"The request failed: {type(error).__name__}: {error}"}, status_code=500
        )
