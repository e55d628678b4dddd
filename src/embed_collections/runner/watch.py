"""`run --watch`: run once, then follow the files. A burst of saves under the documents folder
(or the chunked folder) is one update: the changed pages are chunked again and the run repeats,
incrementally (unchanged collections are trusted from their stats, cached vectors reused).

A page that cannot be read is reported and keeps its last good chunks, so the store keeps
serving the last good state. watchfiles uses inotify where it can and polls where it cannot
(`force_polling`, or `WATCHFILES_FORCE_POLLING=1`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from embed_collections.chunking import chunk_tree
from embed_collections.errors import EmbedCollectionsError
from embed_collections.record.config import RunConfig
from embed_collections.runner.pipeline import run, run_sizing

log = logging.getLogger("embed_collections.runner.watch")

DEBOUNCE_MS = 400  # a burst of saves closer than this is one update


def watch_run(
    config: RunConfig,
    on_update: Callable[[dict[str, Any]], None],
    stop: threading.Event | None = None,
    debounce_ms: int = DEBOUNCE_MS,
    force_polling: bool | None = None,
) -> int:
    """Run, then re-run on every change until `stop` is set (or Ctrl-C); returns the last
    run's exit code. `on_update` gets one dict per update: message, changed, chunking, ok."""
    import watchfiles

    watched = config.docs_dir or config.chunked_dir
    before: dict[Path, tuple[int, int]] | None = snapshot(Path(watched))
    summary = run(config)
    on_update(update_of("initial run", [], summary.extra.chunking, summary.exit_code))
    sizing = run_sizing(config) if config.docs_dir is not None else None
    again = replace(config, docs_dir=None)  # the changed pages are chunked here, not all of them
    code = summary.exit_code
    chunked = Path(config.chunked_dir).resolve()
    for changes in watchfiles.watch(
        watched,
        debounce=debounce_ms,
        step=50,
        stop_event=stop,
        force_polling=force_polling,
        ignore_permission_denied=True,
        watch_filter=lambda _, path: not Path(path).name.startswith("."),
        rust_timeout=1000,
        yield_on_timeout=True,
    ):
        started = time.perf_counter()
        paths = sorted({Path(p) for _, p in changes})
        if before is not None and not changes:  # the watcher is up: what changed meanwhile?
            paths, before = changed_since(before, Path(watched)), None
        if not paths:
            continue
        if config.docs_dir is not None:
            paths = [p for p in paths if not p.resolve().is_relative_to(chunked)]
            if not paths:
                continue
        chunking = None
        if sizing is not None and config.docs_dir is not None:
            report = chunk_tree(
                config.docs_dir, config.chunked_dir, sizing, paths, config.keep_navigation
            )
            chunking = report.to_dict()
            for skipped in report.skipped:
                log.warning("%s: %s (its last good chunks are kept)", skipped.path, skipped.reason)
            if report.written == 0 and report.removed == 0:
                on_update(update_of("no chunk changed", paths, chunking, code, started))
                continue
        try:
            summary = run(again)
            code = summary.exit_code
        except EmbedCollectionsError as error:  # the last good run stays in the store
            log.error("The update failed: %s (the last good state is kept)", error)
            on_update(update_of(f"update failed: {error}", paths, chunking, error.exit_code))
            continue
        on_update(update_of("updated", paths, chunking, code, started))
    return code


def update_of(
    what: str,
    paths: list[Path],
    chunking: dict[str, Any] | None,
    code: int,
    started: float | None = None,
) -> dict[str, Any]:
    """One update as `on_update` receives it, with a line for people."""
    seconds = round(time.perf_counter() - started, 3) if started is not None else None
    skipped = len(chunking["skipped"]) if chunking else 0
    names = ", ".join(p.name for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
    message = f"{what}" + (f" after changes to {names}" if paths else "")
    if seconds is not None:
        message += f" in {seconds:.2f}s"
    if skipped:
        message += f" ({skipped} files skipped; their last good chunks kept)"
    return {
        "message": message,
        "changed": [str(p) for p in paths],
        "chunking": chunking,
        "exit_code": code,
        "seconds": seconds,
        "ok": code == 0 and not skipped,
    }


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    """(mtime, size) of every file under `root`, to see what changed before the watcher ran."""
    found = {}
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.name.startswith("."):
                stat = path.stat()
                found[path] = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            continue
    return found


def changed_since(before: dict[Path, tuple[int, int]], root: Path) -> list[Path]:
    """Files added, changed or removed under `root` since `before` was taken."""
    after = snapshot(root)
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
