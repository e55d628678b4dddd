"""What a run writes, per target filesystem, checked before the run and before each collection.

The embedded store memory-maps its files: a write into a mapped page on a full disk (or tmpfs)
kills the process with SIGBUS, no message and no summary. So space is checked before the store
is written to, and running out of it is a clean stop (DiskFullError), never a crash.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from embed_collections.corpus.chunks import Chunk, LoadedCollection
from embed_collections.corpus.discovery import find_chunk_files
from embed_collections.engine import EmbeddingCache
from embed_collections.errors import DiskFullError, EmbedCollectionsError, LeaseTimeoutError
from embed_collections.record.config import RunConfig

MB = 1024 * 1024
MARGIN = 4 * MB  # logs, summaries, SQLite journals, the store's small files
BYTES_PER_CHUNK_FILE_BYTE = 1 / 1024  # preflight guess: about one chunk per KiB of chunk file
STOP_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
STOP_TEXTS = ("No space left on device", "Disk quota exceeded", "Read-only file system")


@dataclass(frozen=True)
class WritePaths:
    """Where a run writes: the embedded store (None for a server or --no-upload), the cache,
    the export (None without --export) and the output directory."""

    output_dir: Path
    cache_dir: Path
    store_dir: Path | None
    export_dir: Path | None


def estimate(
    targets: WritePaths, points: int, payload_bytes: int, dims: list[int], build_index: bool
) -> dict[Path, int]:
    """Bytes the run will add under each target directory for `points` points."""
    vector = 4 * sum(dims)
    needs: dict[Path, int] = {targets.output_dir: MARGIN}
    # The cache keeps one row per model: the vector, a 32-byte key and SQLite's overhead.
    cache = points * (vector + len(dims) * 96)
    needs[targets.cache_dir] = needs.get(targets.cache_dir, 0) + cache
    if targets.store_dir is not None:
        # WAL and segment each hold vectors and payloads; the HNSW graph adds about a quarter.
        store = 2 * points * (vector + 64) + 2 * payload_bytes
        if build_index:
            store += points * vector // 4 + points * 16 * 8
        needs[targets.store_dir] = needs.get(targets.store_dir, 0) + store
    if targets.export_dir is not None:
        needs[targets.export_dir] = (
            needs.get(targets.export_dir, 0) + points * vector + payload_bytes
        )
    return needs


def existing_ancestor(path: Path) -> Path:
    """The nearest directory of `path` that exists (where a new folder would be created)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_space(needs: dict[Path, int], when: str) -> None:
    """DiskFullError naming the filesystem, the space needed and the space free, if short."""
    by_device: dict[int, tuple[Path, list[Path], int]] = {}
    for target, need in needs.items():
        anchor = existing_ancestor(target)
        device = os.stat(anchor).st_dev
        first, paths, total = by_device.get(device, (anchor, [], 0))
        by_device[device] = (first, [*paths, target], total + need)
    for anchor, paths, need in by_device.values():
        free = shutil.disk_usage(anchor).free
        if free < need + MARGIN:
            raise DiskFullError(
                f"{when}: the filesystem of {', '.join(map(str, paths))} has {free // MB} MB free "
                f"but about {(need + MARGIN) // MB} MB are needed (free space there, or move "
                "--output-dir, --qdrant-path or --cache-dir to a larger disk); finished work is "
                "kept and a re-run resumes without re-embedding"
            )


def stops_the_run(error: BaseException) -> bool:
    """True for failures that every later collection would meet too: a full or read-only disk,
    a device lease that did not come in time."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (DiskFullError, LeaseTimeoutError)):
            return True
        if isinstance(seen, OSError) and seen.errno in STOP_ERRNOS:
            return True
        if any(text in str(seen) for text in STOP_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_paths(config: RunConfig, cache: EmbeddingCache | None = None) -> WritePaths:
    """The directories a run writes to (each may sit on another filesystem)."""
    embedded = config.upload and not config.qdrant_url
    return WritePaths(
        output_dir=config.output_dir,
        cache_dir=(cache.path if cache else config.embedding_cache_path).parent,
        store_dir=config.store_path if embedded else None,
        export_dir=config.output_dir if config.export else None,
    )


def payload_size(chunks: tuple[Chunk, ...] | list[Chunk]) -> int:
    """About the bytes the chunks' payloads take (text plus metadata)."""
    return sum(len(c.text.encode("utf-8")) + 2 * len(c.metadata) * 16 + 200 for c in chunks)


def preflight_space(config: RunConfig, selected: dict[str, Path], dims: list[int | None]) -> None:
    """Refuse to start when the run will not fit (estimated from the chunk files' sizes)."""
    file_bytes = 0
    for directory in selected.values():
        try:
            file_bytes += sum(f.stat().st_size for f in find_chunk_files(directory, config.pattern))
        except (OSError, EmbedCollectionsError):
            continue  # the collection fails with its own message later
    points = int(file_bytes * BYTES_PER_CHUNK_FILE_BYTE)
    needs = estimate(
        write_paths(config), points, file_bytes, [d or 0 for d in dims], config.build_index
    )
    check_space(needs, "Preflight")


def check_wave_space(
    wave: list[LoadedCollection],
    dims: list[int | None],
    missing: dict[str, set[bytes]],
    config: RunConfig,
) -> None:
    """Before embedding a wave: room for its new cache rows and its points on every target."""
    points = sum(len(loaded.chunks) for loaded in wave)
    payload = sum(payload_size(loaded.chunks) for loaded in wave)
    sizes = [d or 0 for d in dims]
    paths = write_paths(config)
    needs = estimate(paths, points, payload, sizes, config.build_index)
    new_rows = max((len(m) for m in missing.values()), default=0)
    needs[paths.cache_dir] = estimate(paths, new_rows, 0, sizes, False)[paths.cache_dir]
    names = ", ".join(loaded.name for loaded in wave[:3]) + (", ..." if len(wave) > 3 else "")
    check_space(needs, f"Before embedding {names}")
