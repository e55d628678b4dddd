"""Pick the store for a run, and the point ids every store shares."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from embed_collections.errors import UsageError
from embed_collections.stores.base import Store

POINT_ID_NAMESPACE = uuid.UUID("54379bf3-b963-42c0-89e6-3735565419e4")
"""Fixed forever: changing it would give every existing point a new id and duplicate the data."""


def point_id(collection: str, chunk_id: str) -> str:
    """The point id of a chunk: a UUID stable across runs and distinct across collections."""
    return str(uuid.uuid5(POINT_ID_NAMESPACE, f"{collection}/{chunk_id}"))


def check_url(url: str) -> None:
    """UsageError unless `url` is an http(s) URL with a host (what qdrant-client can reach)."""
    try:
        # qdrant-client reads a bare "localhost:6333" as http
        parts = urlsplit(f"http://{url}" if url.startswith("localhost") else url)
        port = parts.port
    except ValueError as error:
        raise UsageError(
            f'--qdrant-url "{url}" is not a URL ({error}); use http(s)://HOST[:PORT], '
            "e.g. http://localhost:6333"
        ) from error
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problem = (
            f'scheme "{parts.scheme}" is not http or https' if parts.scheme else "it has no scheme"
        )
        if parts.scheme in ("http", "https"):
            problem = "it names no host"
        raise UsageError(
            f'--qdrant-url "{url}": {problem}; use http(s)://HOST[:PORT], '
            "e.g. http://localhost:6333"
        )
    del port


def open_store(
    qdrant_url: str | None,
    qdrant_path: Path | None,
    api_key: str | None = None,
    isolated: bool = False,
    **kw: Any,
) -> Store:
    """A Qdrant server store when `qdrant_url` is given, else the embedded store at `qdrant_path`
    (in a child process with `isolated`, so a fault in its memory maps cannot kill the caller).

    `kw` tunes the server store (batch_size, parallel, max_retries, timeout); the embedded store
    has nothing to tune and ignores it.
    """
    # Imported on demand: qdrant-client alone takes ~0.8 s to import; the embedded store never
    # needs it.
    if qdrant_url:
        check_url(qdrant_url)
        from embed_collections.stores.server import ServerStore

        return ServerStore(url=qdrant_url, api_key=api_key, **kw)
    if qdrant_path is None:
        raise UsageError("No vector store given: pass --qdrant-path or --qdrant-url")
    if isolated:
        from embed_collections.stores.isolated import IsolatedStore

        return IsolatedStore(Path(qdrant_path))
    from embed_collections.stores.edge import EdgeStore

    return EdgeStore(Path(qdrant_path))
