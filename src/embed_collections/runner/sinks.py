"""Where a collection's points go: the vector store and the export files, behind `add`/`finish`.

The store is the truth about what it holds. After a complete load the store keeps a marker (the
load's content signature, its point count and digest, and the stats of the shard's files); every
write clears the marker first, so a killed run or another writer (`upload`) leaves none. A
collection is skipped only when the marker matches this run's signature AND either the shard's
files are exactly as the marker recorded them (`held_as_marked`: no file was written since the
verified load) or the store, read back, holds exactly the expected ids with usable vectors whose
digest matches the marker's (`check_held`, which then records the files' stats again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
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

SAMPLE_POINTS = 4  # points per collection compared with the cache on an unchanged re-run


class Sink(Protocol):
    """Receives a collection's points batch by batch; `finish` once, or `abort` on failure."""

    def add(self, chunks: list[Chunk] | tuple[Chunk, ...], batch: PointBatch) -> None:
        """Take one batch of points, aligned with their chunks."""

    def finish(self, result: CollectionResult) -> None:
        """Complete the collection and record what was done in `result`."""

    def abort(self) -> None:
        """Give up: release what the sink holds (what was written stays unmarked)."""


@dataclass(frozen=True)
class HeldCheck:
    """What checking a store's collection against this load found.

    `count` is set when the store provably holds exactly this load (skip it); `damage` names
    what was wrong when the marker vouched for the load but the content disagrees (rebuild it).
    """

    count: int | None = None
    damage: str = ""


def held_as_marked(
    store: Store, collection: str, layout: VectorLayout, signature: str, count: int
) -> int | None:
    """The point count when the marker vouches for this load and the store proves that nothing
    was written since (the embedded store: every shard file has the stats recorded with the
    marker); None when the content must be read back (`check_held`)."""
    marker = store.loaded_marker(collection)
    if marker is None or marker.get("signature") != signature or marker.get("count") != count:
        return None
    try:
        if not layout.matches(store.layout(collection)):
            return None
    except StoreError:
        return None
    return count if store.unchanged_since_marked(collection) else None


def check_held(
    store: Store,
    collection: str,
    layout: VectorLayout,
    signature: str,
    expected: set[str],
    sample: Callable[[frozenset[str]], dict[str, dict[str, np.ndarray]]] | None = None,
) -> HeldCheck:
    """Whether the store holds exactly this load: content, not a count.

    The marker of the last complete load must carry this load's signature; then every point is
    read back: the ids must be exactly `expected`, every dense vector finite and non-zero, the
    digest of ids, vectors and payloads equal to the one taken after that load, and a few
    points' vectors equal to what `sample` (the cache, combined again) gives. A store that
    passes is marked again, with its files' stats as they are now.
    """
    marker = store.loaded_marker(collection)
    if marker is None or marker.get("signature") != signature:
        return HeldCheck()
    try:
        if not layout.matches(store.layout(collection)):
            return HeldCheck()
        keep = frozenset(sorted(expected)[:SAMPLE_POINTS])
        scan = store.scan(collection, keep)
    except StoreInUseError:
        raise
    except StoreError as error:
        return HeldCheck(damage=f"the store cannot be read back ({error})")
    if scan.ids != expected:
        missing, foreign = len(expected - scan.ids), len(scan.ids - expected)
        return HeldCheck(damage=f"{missing} points are missing and {foreign} are foreign")
    if scan.unusable:
        return HeldCheck(
            damage=f"{len(scan.unusable)} vectors are not finite or zero "
            f"(first point {scan.unusable[0]})"
        )
    if marker.get("digest") != scan.digest:
        return HeldCheck(damage="its vectors or payloads differ from the last load")
    if sample is not None and keep:
        wanted = sample(keep)
        for point, vectors in wanted.items():
            for name, vector in vectors.items():
                held = scan.kept.get(point, {}).get(name)
                if held is None or not np.allclose(unit(held), unit(vector), atol=1e-4):
                    return HeldCheck(damage=f"point {point} differs from the embedding cache")
    # verified: record the files as they are now (opening the shard wrote to them), so that the
    # next run can trust their stats instead of reading the points back again
    store.mark_loaded(collection, signature, len(scan.ids), scan.digest)
    return HeldCheck(count=len(scan.ids))


def unit(vector: np.ndarray) -> np.ndarray:
    """The vector scaled to length 1 (the store keeps cosine vectors normalised)."""
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


def check_finite(batch: PointBatch, owner: str) -> None:
    """Refuse a batch holding NaN, infinite or all-zero vectors: they would poison every
    search (a zero vector has no direction for cosine similarity)."""
    for name, rows in batch.dense.items():
        if not len(rows):
            continue
        with np.errstate(all="ignore"):
            bad = ~np.isfinite(rows).all(axis=1) | ~np.any(rows != 0, axis=1)
        if bad.any():
            first = batch.ids[int(np.argmax(bad))]
            raise StoreError(
                f"{owner}: {int(bad.sum())} vectors{f' {name!r}' if name else ''} are zero or "
                f"hold NaN or infinity (first point {first}); nothing of this batch was stored "
                "(check the model and --weights, or re-embed with --cache-dir pointing to a "
                "new folder)"
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
            scan = store.scan(collection)
            if scan.unusable:
                raise ShardDamagedError(
                    f"{len(scan.unusable)} stored vectors are not finite or zero "
                    f"(first point {scan.unusable[0]})"
                )
            previous = set(scan.ids)
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
        scan = self.store.scan(self.collection)
        if scan.unusable or (not self.keep_stale and scan.ids != self.written):
            raise StoreError(
                f'Collection "{self.collection}" does not read back as loaded '
                f"({len(scan.unusable)} unusable vectors, {len(scan.ids ^ self.written)} ids "
                "differ); re-run to rebuild it from the cache"
            )
        self.store.index_payload(self.collection)  # before the marker: it is a write
        self.store.finish(self.collection, build_index=self.build_index)
        if not (stale and self.keep_stale):
            # only a store holding exactly these points may be skipped next time
            self.store.mark_loaded(self.collection, self.signature, count, scan.digest)
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
