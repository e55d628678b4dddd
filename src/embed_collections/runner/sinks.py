"""Where a collection's points go: the vector store and the export files, behind `add`/`finish`.

The store is the truth about what it holds. After a complete load the store keeps a marker (the
load's content signature and its point count); every write clears the marker first, so a killed
run or another writer (`upload`) leaves none. A collection is skipped only when the marker
matches this run's signature AND the store's own count equals the expected number of points.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from embed_collections.archive.export import CollectionExporter
from embed_collections.errors import ShardDamagedError, StoreError, StoreInUseError
from embed_collections.record.summary import CollectionResult
from embed_collections.stores.base import PointBatch, Store, VectorLayout

if TYPE_CHECKING:
    from embed_collections.corpus.chunks import Chunk
    from embed_collections.record.config import RunConfig
    from embed_collections.record.run_record import RunRecord

log = logging.getLogger("embed_collections.runner.sinks")


class Sink(Protocol):
    """Receives a collection's points batch by batch; `finish` once, or `abort` on failure."""

    def add(self, chunks: list[Chunk] | tuple[Chunk, ...], batch: PointBatch) -> None:
        """Take one batch of points, aligned with their chunks."""

    def finish(self, result: CollectionResult) -> None:
        """Complete the collection and record what was done in `result`."""

    def abort(self) -> None:
        """Give up: release what the sink holds (what was written stays unmarked)."""


def verified_count(
    store: Store, collection: str, layout: VectorLayout, signature: str, expected: int
) -> int | None:
    """The store's point count when it provably holds this load already, else None.

    Cheap: a small marker file and an exact count, no scroll over the points.
    """
    marker = store.loaded_marker(collection)
    if marker is None or marker.get("signature") != signature:
        return None
    try:
        if not layout.matches(store.layout(collection)):
            return None
        count = store.count(collection)
    except StoreInUseError:
        raise
    except StoreError as error:
        log.warning("%s: the store cannot be read (%s); reloading it", collection, error)
        return None
    if count != expected or marker.get("count") != expected:
        log.warning(
            "%s: the store holds %d points but this input has %d; reloading it",
            collection,
            count,
            expected,
        )
        return None
    return count


def check_finite(batch: PointBatch, owner: str) -> None:
    """Refuse a batch holding NaN or infinite vectors: they would poison every search."""
    for name, rows in batch.dense.items():
        bad = ~np.isfinite(rows).all(axis=1) if len(rows) else np.zeros(0, dtype=bool)
        if bad.any():
            first = batch.ids[int(np.argmax(bad))]
            raise StoreError(
                f"{owner}: {int(bad.sum())} vectors{f' {name!r}' if name else ''} hold NaN or "
                f"infinity (first point {first}); nothing of this batch was stored (check the "
                "model and --weights, or re-embed with --cache-dir pointing to a new folder)"
            )


class StoreSink:
    """Upserts into one collection, then deletes what the input lacks, counts and marks it."""

    def __init__(
        self, store: Store, collection: str, signature: str, previous: set[str], config: RunConfig
    ) -> None:
        self.store, self.collection, self.signature = store, collection, signature
        self.previous = previous
        self.keep_stale, self.build_index = config.keep_stale, config.build_index
        self.written: set[str] = set()

    @classmethod
    def open(
        cls, store: Store, collection: str, layout: VectorLayout, signature: str, config: RunConfig
    ) -> StoreSink:
        """Create or check the collection (rebuilding one that no longer opens) and list it."""
        if config.recreate:
            store.drop(collection)
        try:
            store.ensure_collection(collection, layout)
            previous = store.point_ids(collection)
        except StoreInUseError:
            raise
        except ShardDamagedError as error:
            log.warning(
                "%s: %s; rebuilding it from the embedding cache (nothing is re-embedded)",
                collection,
                error,
            )
            store.drop(collection)
            store.ensure_collection(collection, layout)
            previous = set()
        store.clear_loaded(collection)
        return cls(store, collection, signature, previous, config)

    def add(self, chunks: list[Chunk] | tuple[Chunk, ...], batch: PointBatch) -> None:
        """Upsert the batch (refused whole when a vector is not finite)."""
        check_finite(batch, f'Collection "{self.collection}"')
        self.store.upsert(self.collection, batch)
        self.written.update(batch.ids)

    def finish(self, result: CollectionResult) -> None:
        """Prune stale points, check the count read back, flush and index, then mark."""
        stale = self.previous - self.written
        if stale and not self.keep_stale:
            self.store.delete(self.collection, sorted(stale))
            result.points_deleted = len(stale)
            noun = "point" if len(stale) == 1 else "points"
            log.info("Deleted %d stale %s from %s", len(stale), noun, self.collection)
        expected = len(self.written) + (len(stale) if self.keep_stale else 0)
        count = self.store.count(self.collection)
        result.points_in_store = count
        if count != expected:
            raise StoreError(
                f'Collection "{self.collection}" holds {count} points after loading {expected} '
                "(re-run to reload it, or use --recreate to rebuild it)"
            )
        self.store.finish(self.collection, build_index=self.build_index)
        if not (stale and self.keep_stale):
            # only a store holding exactly these points may be skipped next time
            self.store.mark_loaded(self.collection, self.signature, count)
        result.qdrant_collection = self.collection

    def abort(self) -> None:
        """Nothing to undo: acknowledged points stay, and the marker is already cleared."""


class ExportSink:
    """Streams the collection into the export files (`run --export`)."""

    def __init__(
        self, output_dir: Path, collection: str, record: RunRecord, layout: VectorLayout
    ) -> None:
        self.exporter = CollectionExporter(output_dir, collection, record, layout)

    def add(self, chunks: list[Chunk] | tuple[Chunk, ...], batch: PointBatch) -> None:
        """Append the batch to every export file."""
        self.exporter.add(chunks, batch)

    def finish(self, result: CollectionResult) -> None:
        """Complete and rename the files; the folder goes into `result.export_dir`."""
        result.export_dir = str(self.exporter.finish(result))

    def abort(self) -> None:
        """Delete the temporary files."""
        self.exporter.abort()
