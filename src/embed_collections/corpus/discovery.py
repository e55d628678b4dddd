"""Find collections: directories under the chunked root that directly hold chunk files."""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
from collections.abc import Container
from pathlib import Path

from embed_collections.errors import DiscoveryError, UsageError

logger = logging.getLogger(__name__)

CHUNK_FILE_PATTERN = "*_chunks.json"
MAX_DISCOVERY_DEPTH = 5
# Qdrant's limit on collection names.
MAX_NAME_LENGTH = 255
# Below the depth limit we only look in order to warn; this bounds that extra walk.
MAX_DIRS_BEYOND_LIMIT = 10_000

_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


def find_chunk_files(directory: Path, pattern: str = CHUNK_FILE_PATTERN) -> list[Path]:
    """List the chunk files directly in `directory` (not in subdirectories), sorted by name."""
    try:
        files, _ = _list_directory(directory, pattern)
    except OSError as exc:
        raise DiscoveryError(f"Cannot read directory {directory}: {_reason(exc)}") from exc
    return files


def discover_collections(
    chunked_dir: Path,
    pattern: str = CHUNK_FILE_PATTERN,
    max_depth: int = MAX_DISCOVERY_DEPTH,
    unreadable: list[tuple[Path, str]] | None = None,
) -> dict[str, Path]:
    """Map a stable, Qdrant-valid name to every collection directory within `max_depth`.

    The root is depth 0 (it is a collection too if it holds chunk files), its children depth 1.
    Collections nested inside collections count. Traversal is depth-first in sorted name order,
    so names never depend on file-system order; the first directory seen keeps the short name.
    Directories that cannot be read are appended to `unreadable` as (path, reason) when given.
    """
    chunked_dir = Path(chunked_dir)
    if max_depth < 0:
        raise UsageError(f"Max depth must be 0 or more, got {max_depth}")
    if not chunked_dir.exists():
        raise UsageError(f"Chunked directory not found: {chunked_dir}")
    if not chunked_dir.is_dir():
        raise UsageError(f"Chunked directory is not a directory: {chunked_dir}")
    try:
        os.scandir(chunked_dir).close()
    except OSError as exc:
        raise DiscoveryError(
            f"Cannot read chunked directory {chunked_dir}: {_reason(exc)}"
        ) from exc

    logger.info("Scanning for collections in: %s", chunked_dir)
    logger.info("Max recursion depth: %d", max_depth)
    collections, too_deep = _walk(chunked_dir, pattern, max_depth, unreadable)
    logger.info("Total collections discovered: %d", len(collections))
    if not collections:
        hint = f"; {too_deep} deeper directories do (raise the max depth)" if too_deep else ""
        raise DiscoveryError(
            f"No collections found in {chunked_dir}: no directory within depth {max_depth} "
            f'holds files matching "{pattern}"{hint}'
        )
    return collections


def filter_collections(
    collections: dict[str, Path], requested: list[str] | None
) -> dict[str, Path]:
    """Keep only the requested collections, in discovery order; None or empty keeps all."""
    if not requested:
        return dict(collections)
    unknown = list(dict.fromkeys(name for name in requested if name not in collections))
    if unknown:
        noun = "collection" if len(unknown) == 1 else "collections"
        quoted = ", ".join(f'"{name}"' for name in unknown)
        available = ", ".join(sorted(collections)) or "(none)"
        raise UsageError(f"Unknown {noun} {quoted}. Available: {available}")
    wanted = set(requested)
    return {name: path for name, path in collections.items() if name in wanted}


def _walk(
    root: Path, pattern: str, max_depth: int, unreadable: list[tuple[Path, str]] | None = None
) -> tuple[dict[str, Path], int]:
    """Depth-first sorted walk; returns the collections and how many were too deep to take."""
    collections: dict[str, Path] = {}
    first_seen: dict[Path, Path] = {}  # real path -> the path it was first reached by
    too_deep = 0
    beyond_budget = MAX_DIRS_BEYOND_LIMIT
    budget_warned = False
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        directory, depth = stack.pop()
        real = directory.resolve()
        if real in first_seen:
            # Only a symlink can lead back to a visited directory: a loop or a second link.
            logger.warning(
                "Skipping %s: it leads to %s, already scanned as %s (symlink loop or duplicate)",
                directory,
                real,
                first_seen[real],
            )
            continue
        first_seen[real] = directory
        try:
            files, subdirs = _list_directory(directory, pattern)
        except OSError as exc:
            logger.warning("Cannot read directory %s: %s (skipped)", directory, _reason(exc))
            if unreadable is not None:
                unreadable.append((directory, _reason(exc)))
            continue
        if files and depth <= max_depth:
            name = _name_collection(root, directory, collections)
            collections[name] = directory
            logger.info("Discovered collection '%s' with %d chunk files", name, len(files))
        elif files:
            too_deep += 1
            logger.warning(
                "Skipping %s: it holds %d chunk files but is at depth %d, deeper than the "
                "max depth %d (raise the max depth to include it)",
                directory,
                len(files),
                depth,
                max_depth,
            )
        if depth + 1 > max_depth and len(subdirs) > beyond_budget:
            if not budget_warned:
                logger.warning(
                    "Stopped looking below depth %d after %d directories (first one left: %s);"
                    " chunk files further down are not reported",
                    max_depth,
                    MAX_DIRS_BEYOND_LIMIT,
                    subdirs[beyond_budget],
                )
                budget_warned = True
            subdirs = subdirs[:beyond_budget]
        if depth + 1 > max_depth:
            beyond_budget -= len(subdirs)
        # Reversed so that popping visits children in sorted order.
        stack.extend((subdir, depth + 1) for subdir in reversed(subdirs))
    return collections, too_deep


def _list_directory(directory: Path, pattern: str) -> tuple[list[Path], list[Path]]:
    """Return (chunk files, subdirectories) directly in `directory`, each sorted by name."""
    files: list[Path] = []
    subdirs: list[Path] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                # Both calls follow symlinks: linked files and directories are used.
                if entry.is_dir():
                    subdirs.append(directory / entry.name)
                elif entry.is_file() and fnmatch.fnmatchcase(entry.name, pattern):
                    files.append(directory / entry.name)
            except OSError as exc:
                logger.warning("Cannot inspect %s: %s (skipped)", entry.path, _reason(exc))
    files.sort(key=lambda path: path.name)
    subdirs.sort(key=lambda path: path.name)
    return files, subdirs


def _name_collection(root: Path, directory: Path, used: Container[str]) -> str:
    """Pick the directory name, else its relative path, else that plus a sha256 suffix."""
    relative = directory.relative_to(root).as_posix()
    base = directory.name if relative != "." else root.resolve().name
    digest = hashlib.sha256(relative.encode("utf-8")).hexdigest()[:8]
    short = _sanitize(base)
    long = _sanitize(relative.replace("/", "_")) if relative != "." else short
    candidates = [
        _fit(short, f"_{digest}"),
        _fit(long, f"_{digest}"),
        _fit(f"{long}_{digest}", f"_{digest}"),
    ]
    for candidate in candidates:
        if candidate not in used:
            return candidate
    # Reached only if a directory is literally named like another one's hashed name.
    counter = 2
    while True:
        suffix = f"_{digest}_{counter}"
        candidate = _fit(f"{long}{suffix}", suffix)
        if candidate not in used:
            return candidate
        counter += 1


def _sanitize(name: str) -> str:
    """Replace what Qdrant rejects in a collection name; never return an empty or dot name."""
    cleaned = _INVALID_NAME_CHARS.sub("_", name)
    return cleaned if cleaned.strip(".") else f"collection{cleaned}"


def _fit(name: str, suffix: str) -> str:
    """Cut a name to Qdrant's length limit, ending it with `suffix` so it stays distinct."""
    if len(name) <= MAX_NAME_LENGTH:
        return name
    return name[: MAX_NAME_LENGTH - len(suffix)] + suffix


def _reason(exc: OSError) -> str:
    """The short OS reason ("Permission denied") without the repeated path."""
    return exc.strerror or str(exc)
