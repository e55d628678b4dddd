"""The store follows the input: collections whose folder left the chunked tree are deleted by
the next complete run over the whole tree, and what a finished run leaves is recorded last."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from embed_collections.record.config import RunConfig
from embed_collections.record.finished import read_finished, write_finished
from embed_collections.record.summary import RunSummary
from embed_collections.stores import Store

log = logging.getLogger("embed_collections.runner.missing")


def removal_candidates(store: Store, config: RunConfig) -> list[str]:
    """Collections this output directory's runs stored: every one of an embedded store; on a
    server, only those the last finished run recorded (a server holds other users' too)."""
    present = store.collections()
    if config.qdrant_url is None:
        return present
    finished = read_finished(config.output_dir)
    known = set(finished.collections) if finished is not None else set()
    return [name for name in present if name in known]


def remove_missing(
    store: Store | None,
    found: dict[str, Path],
    config: RunConfig,
    summary: RunSummary,
    unreadable: list[tuple[Path, str]],
) -> list[str]:
    """Delete the collections whose folder is gone from the tree; only for a run over the whole
    tree (not `--collections`, nor when a folder could not be read), never with
    `--keep-missing`. Returns the names deleted (also the summary's `removed`)."""
    if store is None or config.keep_missing or config.collections or unreadable:
        return []
    if not found:  # an empty tree is more likely a missing mount than a deleted corpus
        log.warning("No collections in %s: nothing is removed from the store", config.chunked_dir)
        return []
    removed = []
    for name in removal_candidates(store, config):
        if name in found:
            continue
        store.drop(name)
        removed.append(name)
        log.info('Removed collection "%s": its folder is gone from %s', name, config.chunked_dir)
    summary.extra.removed = removed
    return removed


def store_markers(store: Store | None, config: RunConfig, names: list[str]) -> dict[str, Any]:
    """Each stored collection's loaded marker, for the finished marker (a server keeps none:
    the run's own collections are listed without one)."""
    if store is None:  # --no-upload: the store is as the last finished run left it
        previous = read_finished(config.output_dir)
        return dict(previous.collections) if previous is not None else {}
    if config.qdrant_url is not None:
        return {name: None for name in names}
    return {name: store.loaded_marker(name) for name in store.collections()}


def record_finished(config: RunConfig, summary: RunSummary, markers: dict[str, Any]) -> None:
    """Write the finished marker, the run's last file; failing to write it is logged (the run
    is done, but readers keep serving the previous finished state)."""
    try:
        write_finished(config.output_dir, summary.timestamp, markers, config.qdrant_url is None)
    except OSError as error:
        log.error(
            "❌ The finished marker could not be written (readers keep the last one): %s", error
        )
