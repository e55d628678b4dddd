"""The HTTP routes of `serve` for agents beside /search: POST /read (a chunk with its
neighbours, its section, or a whole document). Expected failures answer 4xx `{"error": ...}`
naming the field and the fix, as /search does."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from embed_collections.errors import EmbedCollectionsError, UsageError
from embed_collections.query.collections import UnknownCollectionError
from embed_collections.query.context import MAX_CONTEXT_TOKENS
from embed_collections.query.reading import UnknownChunkError
from embed_collections.query.service import SearchService

log = logging.getLogger(__name__)

DIVERSITY_HELP = (
    "0 (default) ranks by relevance only; up to 1 prefers hits unlike those above them "
    "(maximal marginal relevance, e.g. 0.3)."
)
MAX_TOKENS_HELP = (
    f"With a token budget (1 to {MAX_CONTEXT_TOKENS:,}, e.g. 2000), the answer is a context "
    "block: the best hits widened with their sections and neighbours until the budget is "
    'spent, as "pieces" and one "text" with a citation line per piece.'
)
NEIGHBOURS_HELP = "With max_tokens: chunks on each side of a hit that may be added (0 to 50)."


class ReadBody(BaseModel):
    """POST /read: which chunk or document to read, and how much of it."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(description="The collection (a name from /collections).")
    chunk_id: str | None = Field(
        default=None, description="A hit's chunk_id: read that chunk (with its neighbours)."
    )
    before: int = Field(default=0, description="Chunks before chunk_id to add (0 to 1000).")
    after: int = Field(default=0, description="Chunks after chunk_id to add (0 to 1000).")
    section: bool = Field(
        default=False, description="With chunk_id: every chunk of its section, in order."
    )
    document_id: str | None = Field(
        default=None, description="A hit's document_id: read the whole document."
    )
    source_file: str | None = Field(
        default=None,
        description="A hit's source_file (a path relative to the chunked folder): read it.",
    )
    max_tokens: int | None = Field(
        default=None,
        description=f"Cut a document read at this many tokens (1 to {MAX_CONTEXT_TOKENS:,}).",
    )


def error_answer(error: Exception) -> JSONResponse:
    """The 4xx/5xx JSON answer for a failed read."""
    if isinstance(error, (UnknownCollectionError, UnknownChunkError)):
        return JSONResponse({"error": str(error)}, status_code=404)
    if isinstance(error, UsageError):
        return JSONResponse({"error": str(error)}, status_code=400)
    if isinstance(error, EmbedCollectionsError):
        log.warning("Read failed: %s", error)
        return JSONResponse({"error": str(error)}, status_code=500)
    log.warning("Read failed: %s: %s", type(error).__name__, error)
    return JSONResponse(
        {"error": f"The read failed: {type(error).__name__}: {error}"}, status_code=500
    )


def add_read_route(app: FastAPI, service: SearchService) -> None:
    """POST /read on `app`, answered from `service`."""

    @app.post("/read", summary="Read a chunk with its neighbours, its section or a document")
    async def read(body: ReadBody) -> Any:
        try:
            return await asyncio.to_thread(service.read, **body.model_dump())
        except Exception as error:
            return error_answer(error)
