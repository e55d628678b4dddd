"""A run's collections kept fresh for a long-lived server.

The embedded store locks each shard while it is open, so a server holding the run's own store
would stop the next `run` on the same output directory. A server therefore searches a private
copy (a snapshot) of the embedded store, taken while no run holds the output directory, and
takes a new one when the run's finished marker (`run_finished.json`, written last by a run that
ran to its end) changes. Only the collections that marker vouches for are served: a run killed
part-way leaves the previous state served (and `/healthz` says a newer run is incomplete); a
state that fails to open (a damaged or half-written shard) is logged and skipped, never served.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embed_collections.errors import EmbedCollectionsError, StoreError
from embed_collections.query.collections import Collections
from embed_collections.query.search import QueryEncoder, resolve_recorded
from embed_collections.record.files import (
    FINISHED_FILE,
    LOCK_FILE,
    RUN_RECORD_FILE,
    STORE_DIR,
    SUMMARY_FILE,
)
from embed_collections.record.finished import FinishedRun, read_finished, started_after
from embed_collections.record.run_record import RunRecord, read_run_record
from embed_collections.stores.edge import EdgeStore

log = logging.getLogger(__name__)

Signature = tuple[tuple[int, int], ...]


@dataclass
class LoadedState:
    """One opened, checked state of the run: what searches use until the next one."""

    collections: Collections
    counts: dict[str, int]
    signature: Signature
    snapshot_dir: Path | None
    left_out: list[str] = field(default_factory=list)  # changed by a run that did not finish
    loaded_at: float = field(default_factory=time.time)
    users: int = 0
    retired: bool = False


def default_threads() -> int | None:
    """A served model's CPU threads: on two cores or fewer, one, so the event loop and the store
    keep the other core (measured on two loaded cores: 1.5x the queries/s of 2 threads at 32
    clients, at two thirds of the CPU per query); on more cores, every one (the runtime's
    default)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 1 if (cores or 1) <= 2 else None


def copy_sparse(source: str, target: str) -> str:
    """Copy a file as `shutil.copy2` does but keep its holes: the embedded store's vector files
    are mostly holes (a 32 MB file each, a few KB written), and a plain copy writes them out in
    full (a 7 MB store became a 165 MB copy, a 41-collection one 6.6 GB)."""
    if not hasattr(os, "SEEK_DATA"):
        return shutil.copy2(source, target)
    with open(source, "rb") as src, open(target, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            src.seek(start)
            dst.seek(start)
            while start < end:
                block = src.read(min(end - start, 1 << 20))
                if not block:
                    break
                dst.write(block)
                start += len(block)
            offset = end
        dst.truncate(size)
    shutil.copystat(source, target)
    return target


def encoder_key(record: RunRecord) -> tuple[Any, ...]:
    """What decides the query encoder: a new record with the same key keeps the loaded models."""
    models = tuple((m.name, m.path, m.fingerprint, m.weight, m.query_prefix) for m in record.models)
    return (models, record.combine, record.sparse)


class LiveRun:
    """The collections of the run in `output_dir`, reopened when a run finishes there.

    `using()` lends the current state's `Collections` for one search; a state replaced while
    searches use it is closed when the last of them returns.
    """

    def __init__(
        self,
        output_dir: str | Path,
        qdrant_url: str | None = None,
        qdrant_path: str | Path | None = None,
        qdrant_api_key: str | None = None,
        device: str = "",
        trust_remote_code: bool = False,
        poll_seconds: float = 1.0,
        threads: int | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.qdrant_url, self.qdrant_api_key = qdrant_url, qdrant_api_key
        self.qdrant_path = Path(qdrant_path) if qdrant_path else None
        self.device, self.trust_remote_code = device, trust_remote_code
        self.poll_seconds, self.threads = poll_seconds, threads
        self.last_error = ""
        self.reloads = 0
        self._lock = threading.Lock()
        self._state: LoadedState | None = None
        self._encoder: QueryEncoder | None = None
        self._encoder_key: tuple[Any, ...] | None = None
        self._failed: Signature | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, wait_seconds: float = 600.0) -> LiveRun:
        """Open the run now (waiting for a run in progress to finish), then watch it."""
        deadline = time.monotonic() + wait_seconds
        while not self.reload():
            if time.monotonic() > deadline:
                raise EmbedCollectionsError(
                    f"Output directory {self.output_dir} stayed in use by a run for "
                    f"{wait_seconds:.0f} s; serve it when the run has finished"
                )
            time.sleep(self.poll_seconds)
        self._watcher = threading.Thread(target=self._watch, name="live-run", daemon=True)
        self._watcher.start()
        return self

    @property
    def state(self) -> LoadedState:
        if self._state is None:
            raise EmbedCollectionsError("The run is not open yet (call start() first)")
        return self._state

    @contextmanager
    def using(self) -> Iterator[Collections]:
        """The current collections, kept open until the block ends."""
        state = self.acquire()
        try:
            yield state.collections
        finally:
            self.release(state)

    def acquire(self) -> LoadedState:
        """The current state, kept open until `release(state)` (which another thread may call:
        a search embedded in one thread is searched in another)."""
        with self._lock:
            state = self.state
            state.users += 1
        return state

    def release(self, state: LoadedState) -> None:
        """Give back a state from `acquire`; a replaced one closes with its last user."""
        with self._lock:
            state.users -= 1
            done = state.retired and state.users == 0
        if done:
            self._close_state(state)

    def signature(self) -> Signature:
        """What changes when a run finishes: its finished marker's and record's size and mtime
        (without a marker, as before it existed: the record's and the summary's)."""
        stamps = []
        if (self.output_dir / FINISHED_FILE).exists():
            names = (FINISHED_FILE, RUN_RECORD_FILE)
        else:
            names = (RUN_RECORD_FILE, SUMMARY_FILE)
        for name in names:
            try:
                stat = (self.output_dir / name).stat()
                stamps.append((stat.st_mtime_ns, stat.st_size))
            except OSError:
                stamps.append((0, 0))
        return tuple(stamps)

    def reload(self, force: bool = False) -> bool:
        """Open the run's current state if it changed and no run holds the directory; False
        when a run holds it (try again later). Errors opening the first state raise; later
        ones are logged and the previous state stays in use."""
        signature = self.signature()
        if not force and self._state is not None and signature == self._state.signature:
            return True
        if not force and signature == self._failed:
            return True
        with self._run_lock() as free:
            if not free:
                return False
            try:
                state = self._open(signature)
            except EmbedCollectionsError as error:
                if self._state is None:
                    raise
                self._failed, self.last_error = signature, str(error)
                log.warning("Keeping the previous state of %s: %s", self.output_dir, error)
                return True
        with self._lock:
            old, self._state = self._state, state
            if old is not None:
                old.retired = True
            close_old = old is not None and old.users == 0
        if close_old and old is not None:
            self._close_state(old)
        self.reloads += 1
        self.last_error = ""
        self._failed = None
        log.info("Serving %d collections of %s", len(state.counts), self.output_dir)
        return True

    @contextmanager
    def _run_lock(self) -> Iterator[bool]:
        """Share the output directory's lock while copying, so no run starts meanwhile (a run
        waits for it); yields False when a run holds it now."""
        try:
            handle = open(self.output_dir / LOCK_FILE, encoding="utf-8")  # noqa: SIM115
        except OSError:  # no run ever locked it (or a read-only copy of a run)
            yield True
            return
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            handle.close()

    def newer_run(self) -> str | None:
        """ "running" or "incomplete" (killed, interrupted) when a run started after the one
        served and has not finished; None otherwise."""
        if not started_after(self.output_dir, read_finished(self.output_dir)):
            return None
        # The holder's pid, not the lock itself: a probe of the lock could make a starting
        # `run --no-wait` fail.
        try:
            pid = int((self.output_dir / LOCK_FILE).read_text(encoding="utf-8").strip())
            os.kill(pid, 0)
        except PermissionError:  # alive, another user's
            return "running"
        except (OSError, ValueError):
            return "incomplete"
        return "running"

    def _finished(self) -> FinishedRun | None:
        """The finished marker to check the store against (None: a store from before markers,
        or another store given with --qdrant-path/--qdrant-url, which it does not describe)."""
        finished = read_finished(self.output_dir)
        if finished is None and started_after(self.output_dir, None):
            raise StoreError(
                f"No run has finished in {self.output_dir} (the last one stopped part-way); "
                "run it again to the end, then serve it"
            )
        return None if self.qdrant_path or self.qdrant_url else finished

    def _vouched(self, collections: Collections, finished: FinishedRun | None) -> list[str]:
        """The collections to serve; those a later, unfinished run changed are left out, or
        (while an older state is served) the whole state is refused, so no answer mixes runs."""
        if finished is None:
            return []
        served, changed = finished.split(
            collections.store.collections(), collections.store.loaded_marker
        )
        if changed and self._state is not None:
            raise StoreError(
                f"Collections {', '.join(changed)} changed since the last finished run (a run "
                "that did not finish); the previous state stays served until a run finishes"
            )
        if changed:
            log.warning(
                "Leaving out %s: changed by a run that did not finish (run it again)",
                ", ".join(changed),
            )
        collections.fixed_names = served
        return changed

    def _open(self, signature: Signature) -> LoadedState:
        finished = self._finished()
        record = read_run_record(self.output_dir)
        key = encoder_key(record)
        encoder = self._encoder if key == self._encoder_key else None
        if encoder is None:
            encoder = QueryEncoder.from_record(
                record, self.device, self.output_dir, trust_remote_code=self.trust_remote_code
            ).load(self.threads)
        snapshot = None
        store_dir = self.qdrant_path or resolve_recorded(self.output_dir, record.store.path)
        try:
            if self.qdrant_url or record.store.url and not self.qdrant_path:
                collections = Collections.open(
                    self.output_dir,
                    qdrant_api_key=self.qdrant_api_key,
                    qdrant_url=self.qdrant_url,
                    encoder=encoder,
                )
            else:
                if store_dir is None or not store_dir.is_dir():
                    raise StoreError(
                        f"The run's store {store_dir} does not exist (pass --qdrant-path or "
                        "--qdrant-url where its collections are)"
                    )
                snapshot = Path(tempfile.mkdtemp(prefix="embed-collections-serve-"))
                copy = snapshot / STORE_DIR
                shutil.copytree(
                    store_dir,
                    copy,
                    ignore=shutil.ignore_patterns(".write-check.*"),
                    copy_function=copy_sparse,
                )
                store = EdgeStore(copy)
                collections = Collections(
                    self.output_dir, record, store, encoder, fixed_names=store.collections()
                )
            try:
                left_out = self._vouched(collections, finished)
                counts = {name: collections.store.count(name) for name in collections.names}
            except BaseException:
                collections.close()
                raise
        except BaseException:
            if snapshot is not None:
                shutil.rmtree(snapshot, ignore_errors=True)
            if encoder is not self._encoder:
                encoder.unload()
            raise
        if encoder is not self._encoder:
            self._encoder, self._encoder_key = encoder, key
        return LoadedState(collections, counts, signature, snapshot, left_out)

    def _close_state(self, state: LoadedState) -> None:
        try:
            state.collections.close()
        except EmbedCollectionsError as error:
            log.warning("Closing a replaced state of %s: %s", self.output_dir, error)
        if state.collections.encoder is not self._encoder:
            state.collections.encoder.unload()
        if state.snapshot_dir is not None:
            shutil.rmtree(state.snapshot_dir, ignore_errors=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.reload()
            except Exception as error:  # the watcher must outlive any one bad state
                self.last_error = str(error)
                log.warning("Reloading %s failed: %s", self.output_dir, error, exc_info=True)

    def close(self) -> None:
        """Stop watching, close the state and unload the models."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
        with self._lock:
            state, self._state = self._state, None
        if state is not None:
            self._close_state(state)
        if self._encoder is not None:
            self._encoder.unload()
            self._encoder = None

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
