"""The embedded store in a child process, so that a fault in its memory-mapped files cannot take
the run with it.

Qdrant Edge writes through memory maps: when the disk fills (or a file under a map is cut short)
the kernel answers a write with SIGBUS, which no Python code can catch and which kills the
process without a message or a summary. Every call of a run's store goes through a pipe to a
forked child that holds the `EdgeStore`; if the child dies, the call raises DiskFullError (SIGBUS)
or StoreError here and the run stops the documented way: summary written, finished collections
kept, a re-run resumes.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from embed_collections.errors import DiskFullError, StoreError
from embed_collections.stores import edge_files
from embed_collections.stores.base import (
    Hit,
    PointBatch,
    PointLookup,
    SearchQuery,
    StoreScan,
    VectorLayout,
)
from embed_collections.stores.edge import EdgeStore

log = logging.getLogger(__name__)

RESUME = "finished work is kept and running the same command again resumes it"
PARENT_CHECK_S = 1.0  # how often an idle store child checks that its parent is alive


def serve(root: Path, conn: Connection, parents_end: Connection, parent: int) -> None:
    """The child: run calls on one EdgeStore until "close" or until the parent goes away.

    The parent's end of the pipe is closed here, so the parent's death reads as end of file;
    the parent's pid is also watched, because processes the parent forks later (workers) hold
    copies of that end. Either way the child closes its shards and exits, releasing the locks
    it inherited (the output directory's) and its own (the store's).
    """
    parents_end.close()
    # The parent decides when the store stops (Ctrl-C reaches the whole process group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    store = EdgeStore(root)
    try:
        while True:
            try:
                while not conn.poll(PARENT_CHECK_S):
                    if os.getppid() != parent:
                        return
                method, args = conn.recv()
            except (EOFError, OSError):
                return  # the parent died: close the shards (finally) and go
            try:
                value = getattr(store, method)(*args)
            except Exception as error:
                conn.send((False, error))
            else:
                conn.send((True, value))
            if method == "close":
                return
    finally:
        store.close()


class IsolatedStore:
    """An `EdgeStore` at `root` living in a forked child process (same interface)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        # fork: the child starts in milliseconds and logs into the run's handlers; it is made
        # before any model is loaded, so no engine thread is copied into it.
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=serve,
            args=(self.root, child, self._conn, os.getpid()),
            name="embed-collections-store",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._dead: str = ""
        self._unanswered = 0

    def __enter__(self) -> IsolatedStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, *args: Any) -> Any:
        if self._dead:
            raise StoreError(self._dead)
        try:
            while self._unanswered:  # a call interrupted here (Ctrl-C) still gets its answer
                self._conn.recv()
                self._unanswered -= 1
            self._conn.send((method, args))
            self._unanswered += 1
            ok, value = self._conn.recv()
            self._unanswered -= 1
        except (EOFError, OSError):
            raise self._died(method) from None
        if not ok:
            if isinstance(value, OSError):  # a sidecar or lock file the disk refused
                raise self._refused(method, value) from value
            raise value
        return value

    def _refused(self, method: str, error: OSError) -> StoreError | DiskFullError:
        where = f"{error.filename} ({method})" if error.filename else f"{self.root} ({method})"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFullError(
                f"The Qdrant store cannot write {where}: {error.strerror}; free space there or "
                f"move --qdrant-path to a larger disk; {RESUME}"
            )
        return StoreError(
            f"The Qdrant store cannot write {where}: {error.strerror or error} (fix the "
            "folder's permissions or use another --qdrant-path)"
        )

    def _died(self, method: str) -> StoreError | DiskFullError:
        self._process.join(timeout=10)
        code = self._process.exitcode
        if code == -signal.SIGBUS:
            self._dead = (
                f"The Qdrant store {self.root} was killed by SIGBUS during {method}: the disk "
                "under its memory-mapped files is full (or a file was cut short); free space "
                f"there or move --qdrant-path to a larger disk; {RESUME}"
            )
            return DiskFullError(self._dead)
        self._dead = (
            f"The Qdrant store process for {self.root} died during {method} (exit code {code}); "
            "re-run to resume"
        )
        return StoreError(self._dead)

    def check_writable(self) -> None:
        self._call("check_writable")

    # The sidecar files are read here, not in the child: they are small JSON files and stats,
    # never memory-mapped, and an unchanged re-run then needs no call per collection.
    def layout(self, collection: str) -> VectorLayout | None:
        return edge_files.read_layout(self.root, collection)

    def ensure_collection(
        self, collection: str, layout: VectorLayout, recreate: bool = False
    ) -> None:
        self._call("ensure_collection", collection, layout, recreate)

    def drop(self, collection: str) -> None:
        self._call("drop", collection)

    def loaded_marker(self, collection: str) -> dict[str, Any] | None:
        return edge_files.read_marker(self.root, collection)

    def unchanged_since_marked(self, collection: str) -> bool:
        marker = edge_files.read_marker(self.root, collection)
        return marker is not None and edge_files.unchanged_since_marked(
            self.root, collection, marker
        )

    def mark_loaded(self, collection: str, signature: str, count: int, digest: str = "") -> None:
        self._call("mark_loaded", collection, signature, count, digest)

    def clear_loaded(self, collection: str) -> None:
        self._call("clear_loaded", collection)

    def upsert(self, collection: str, batch: PointBatch) -> None:
        self._call("upsert", collection, batch)

    def point_ids(self, collection: str) -> set[str]:
        return self._call("point_ids", collection)  # type: ignore[no-any-return]

    def scan(self, collection: str, keep: frozenset[str] = frozenset()) -> StoreScan:
        return self._call("scan", collection, keep)  # type: ignore[no-any-return]

    def delete(self, collection: str, ids: list[str]) -> None:
        self._call("delete", collection, ids)

    def count(self, collection: str) -> int:
        return self._call("count", collection)  # type: ignore[no-any-return]

    def search(self, collection: str, queries: list[SearchQuery]) -> list[list[Hit]]:
        return self._call("search", collection, queries)  # type: ignore[no-any-return]

    def lookup(self, collection: str, lookup: PointLookup) -> list[Hit]:
        return self._call("lookup", collection, lookup)  # type: ignore[no-any-return]

    def retrieve(self, collection: str, ids: list[str]) -> list[Hit]:
        return self._call("retrieve", collection, ids)  # type: ignore[no-any-return]

    def index_payload(self, collection: str) -> None:
        self._call("index_payload", collection)

    def payload_indexes(self, collection: str) -> set[str]:
        return self._call("payload_indexes", collection)  # type: ignore[no-any-return]

    def finish(self, collection: str, build_index: bool = True) -> None:
        self._call("finish", collection, build_index)

    def collections(self) -> list[str]:
        return self._call("collections")  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the store in the child and wait for it to exit (a dead child is reaped)."""
        if self._process.exitcode is None and not self._dead:
            try:
                self._call("close")
            except StoreError as error:
                log.error("%s", error)
        self._process.join(timeout=60)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join()
        self._conn.close()
