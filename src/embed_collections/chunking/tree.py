"""Chunk a folder of documents into a mirrored tree of `*_chunks.json` files that `discover` names
as it names any chunk tree: `docs/guide/intro.md` becomes `chunked/guide/intro_chunks.json`.

A file whose bytes would not change is not rewritten (its collection stays unchanged for the
next run); a chunk file this tool wrote for a page that is gone is removed; a page that cannot be
read is reported and keeps the chunk file of its last good version.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embed_collections.atomic import write_bytes_atomic, write_json_atomic
from embed_collections.chunking.documents import DocumentError, read_document
from embed_collections.chunking.records import chunk_document, encode_records
from embed_collections.chunking.sizing import Sizing
from embed_collections.chunking.splitter import SectionSplitter
from embed_collections.errors import UsageError

log = logging.getLogger("embed_collections.chunking.tree")

MANIFEST = ".chunked_from.json"  # which chunk files this tool wrote, for which pages
SUFFIX = "_chunks.json"


@dataclass(frozen=True)
class SkippedFile:
    """A source file left out, and why (one line, as the report shows it)."""

    path: str
    reason: str


@dataclass(frozen=True)
class ChunkReport:
    """What one chunking pass read, wrote, removed and skipped."""

    source_dir: str
    chunked_dir: str
    files: int  # documents chunked in this pass
    chunks: int
    written: int  # chunk files whose bytes changed
    unchanged: int
    removed: int
    bytes_read: int
    seconds: float
    tokens: dict[str, float] = field(default_factory=dict)  # min, median, mean, max per chunk
    skipped: tuple[SkippedFile, ...] = ()
    sizing: dict[str, Any] = field(default_factory=dict)
    navigation_dropped: int = 0  # chunks left out as navigation (mostly links)

    @property
    def ok(self) -> bool:
        return not self.skipped

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(s) for s in self.skipped]
        return data


def chunk_tree(
    source_dir: Path,
    chunked_dir: Path,
    sizing: Sizing,
    only: Iterable[Path] | None = None,
    keep_navigation: bool = False,
) -> ChunkReport:
    """Chunk every document under `source_dir` into `chunked_dir` (or only the `only` paths,
    after a change: the others are taken as up to date); navigation chunks (mostly links) are
    left out and counted unless `keep_navigation`."""
    source_dir, chunked_dir = Path(source_dir), Path(chunked_dir)
    if not source_dir.is_dir():
        raise UsageError(f"Source directory not found: {source_dir} (give a folder of documents)")
    if source_dir.resolve() == chunked_dir.resolve():
        raise UsageError(f"The chunked directory {chunked_dir} must not be the source directory")
    started = time.perf_counter()
    targets = map_targets(source_dir, chunked_dir)
    wanted = None if only is None else {Path(p).resolve() for p in only}
    splitter = SectionSplitter(sizing)
    skipped: list[SkippedFile] = []
    tokens: list[int] = []
    files = chunks = written = unchanged = bytes_read = navigation = 0
    for relative, target in targets.items():
        path = source_dir / relative
        if wanted is not None and path.resolve() not in wanted:
            continue
        try:
            document = read_document(path)
            bytes_read += len(document.text.encode("utf-8"))
            records, dropped = chunk_document(document, relative, splitter, keep_navigation)
            navigation += dropped
        except DocumentError as exc:
            skipped.append(SkippedFile(str(path), str(exc)))
            log.warning("%s: %s (file skipped)", path, exc)
            continue
        if not records:
            skipped.append(SkippedFile(str(path), "no text to chunk"))
            continue
        files += 1
        chunks += len(records)
        tokens.extend(r["metadata"]["token_count"] for r in records)
        data = encode_records(records)
        out = chunked_dir / target
        if out.exists() and out.read_bytes() == data:
            unchanged += 1
            continue
        write_bytes_atomic(out, data)
        written += 1
    removed = remove_stale(chunked_dir, targets)
    report = ChunkReport(
        source_dir=str(source_dir),
        chunked_dir=str(chunked_dir),
        files=files,
        chunks=chunks,
        written=written,
        unchanged=unchanged,
        removed=removed,
        bytes_read=bytes_read,
        seconds=round(time.perf_counter() - started, 3),
        tokens=describe_tokens(tokens),
        navigation_dropped=navigation,
        skipped=tuple(skipped),
        sizing=sizing.describe(),
    )
    log.info(
        "Chunked %d documents into %d chunks (%d files written, %d unchanged, %d removed, "
        "%d skipped) in %.2fs",
        files,
        chunks,
        written,
        unchanged,
        removed,
        len(skipped),
        report.seconds,
    )
    return report


def map_targets(source_dir: Path, chunked_dir: Path) -> dict[str, str]:
    """Every document under the source (posix path) -> its chunk file under the chunked root.

    Hidden files and folders are left out, and so is the chunked root if it lies inside the
    source. Two pages with one stem in one folder (`a.md`, `a.rst`): the first by name keeps
    `a_chunks.json`, the next is `a.rst_chunks.json`.
    """
    skip = chunked_dir.resolve()
    targets: dict[str, str] = {}
    for root, dirs, names in os.walk(source_dir):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != skip)
        taken: set[str] = set()
        for name in sorted(n for n in names if not n.startswith(".")):
            relative = (here / name).relative_to(source_dir)
            stem = Path(name).stem
            chunk_name = f"{stem}{SUFFIX}" if stem not in taken else f"{name}{SUFFIX}"
            taken.add(stem)
            targets[relative.as_posix()] = (relative.parent / chunk_name).as_posix()
    return targets


def remove_stale(chunked_dir: Path, targets: dict[str, str]) -> int:
    """Delete the chunk files this tool wrote for pages that are gone; record the rest."""
    manifest_path = chunked_dir / MANIFEST
    try:
        previous = json.loads(manifest_path.read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        previous = {}
    current = {target: source for source, target in targets.items()}
    removed = 0
    for target in sorted(set(previous) - set(current)):
        path = chunked_dir / target
        if path.exists():
            path.unlink()
            removed += 1
            log.info("Removed %s: its page is gone", path)
            prune_empty(path.parent, chunked_dir)
    written = {t: s for t, s in current.items() if (chunked_dir / t).exists()}
    if written != previous:
        write_json_atomic(manifest_path, {"files": dict(sorted(written.items()))})
    return removed


def prune_empty(directory: Path, root: Path) -> None:
    """Remove folders left empty up to `root`, so a deleted section's collection goes too."""
    while directory != root and directory.is_relative_to(root):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def describe_tokens(tokens: list[int]) -> dict[str, float]:
    if not tokens:
        return {}
    return {
        "min": min(tokens),
        "median": statistics.median(tokens),
        "mean": round(statistics.fmean(tokens), 1),
        "max": max(tokens),
    }
