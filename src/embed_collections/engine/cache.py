"""Content-addressed embedding store: (model fingerprint, sha256(text)) -> vector.

Dense vectors live in append-only segment files of raw float32 rows (`<cache>.vectors/*.f32`,
next to the SQLite file), indexed by SQLite: (model, digest) -> (segment, row, tokens). A shard
is written under SQLite's write lock: its rows go to the segment's end first, then one
transaction records them and the segment's new length. A process killed before the commit leaves
only bytes past the recorded length, which no row points at and the next writer overwrites, so a
half-written vector is never read as data; everything committed survives `kill -9`. On disk a
384-d vector takes its 1,536 raw bytes plus ~60 bytes of index, where a SQLite row per vector
took 4,689 (each spilled into an overflow page), and a shard is written as one file write plus
one small transaction. Variable-size values (sparse vectors) stay SQLite rows (`vectors`).

Because the key is the text's hash, identical chunks anywhere in the corpus are embedded once per
model, a resumed run embeds only what is missing, and an unchanged re-run embeds nothing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from embed_collections.atomic import write_json_atomic
from embed_collections.errors import DiskFullError, EmbedCollectionsError

logger = logging.getLogger(__name__)

LOOKUP_CHUNK = 900  # stays under SQLite's default limit of host parameters per statement
SEGMENT_BYTES = 1 << 30  # a new segment file after 1 GiB, so no file grows without bound
LAYOUT = 2  # PRAGMA user_version: 0 = one SQLite row per vector, 2 = segment files
UPGRADE_BATCH = 4096


def text_digest(text: str) -> bytes:
    """The cache key of a text: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class CacheError(EmbedCollectionsError):
    """The embedding cache is unreadable or inconsistent."""


def damaged(path: Path, error: Exception | str) -> str:
    """The message for a cache that cannot be read, naming the fix."""
    return (
        f"Embedding cache {path} is damaged or unreadable ({error}); delete it (vectors are "
        "embedded again) or pass another --cache-dir"
    )


SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    fingerprint TEXT PRIMARY KEY, dim INTEGER, info TEXT, created REAL);
CREATE TABLE IF NOT EXISTS memo (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS vectors (
    fingerprint TEXT, digest BLOB, value BLOB, tokens INTEGER,
    PRIMARY KEY (fingerprint, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spaces (
    id INTEGER PRIMARY KEY, fingerprint TEXT UNIQUE, dim INTEGER);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, space INTEGER, rows INTEGER);
CREATE TABLE IF NOT EXISTS dense (
    space INTEGER, digest BLOB, segment INTEGER, row INTEGER, tokens INTEGER,
    PRIMARY KEY (space, digest)) WITHOUT ROWID;
"""


def enable_wal(db: sqlite3.Connection, seconds: float = 60.0) -> None:
    """Switch to WAL; SQLite answers "locked" at once, without waiting for its busy timeout,
    while another process creates the same new database, so this waits here instead."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class EmbeddingCache:
    """Vectors keyed by model fingerprint and text digest, written as batches complete."""

    def __init__(self, path: Path):
        self.path = path
        self.segment_dir = path.with_suffix(".vectors")
        self.legacy: dict[str, bool] = {}  # fingerprint -> whether it has SQLite-row values
        try:
            self.segment_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CacheError(
                f"Embedding cache folder {self.segment_dir} cannot be created: "
                f"{error.strerror or error} (choose another --cache-dir)"
            ) from error
        try:
            self.db = sqlite3.connect(path, timeout=60, isolation_level=None)
            enable_wal(self.db)
            # NORMAL in WAL mode: a killed process loses nothing committed (only power loss can).
            self.db.execute("PRAGMA synchronous=NORMAL")
            layout = self.db.execute("PRAGMA user_version").fetchone()[0]
            self.db.executescript(SCHEMA)
            if layout < LAYOUT:
                self.upgrade()
        except sqlite3.DatabaseError as error:
            raise CacheError(damaged(path, error)) from error

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upgrade(self) -> None:
        """Move dense vectors of the old layout (one SQLite row each) into segment files."""
        models = self.db.execute("SELECT fingerprint, dim FROM models WHERE dim > 0").fetchall()
        moved = 0
        for fingerprint, dim in models:
            while True:
                rows = self.db.execute(
                    "SELECT digest, value, tokens FROM vectors WHERE fingerprint = ? "
                    "AND length(value) = ? LIMIT ?",
                    (fingerprint, dim * 4, UPGRADE_BATCH),
                ).fetchall()
                if not rows:
                    break
                if not moved:
                    logger.warning(
                        "Embedding cache %s has the old layout (one SQLite row per vector, ~3x "
                        "the vector's size); moving its vectors into segment files (done once)",
                        self.path,
                    )
                digests = [r[0] for r in rows]
                matrix = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(-1, dim)
                # append and delete in one transaction: a kill mid-way leaves each row in
                # exactly one of the two layouts
                self.append(fingerprint, digests, matrix, [r[2] or 0 for r in rows], moved=True)
                moved += len(rows)
        self.db.execute(f"PRAGMA user_version = {LAYOUT}")
        if moved:
            try:
                self.db.execute("VACUUM")  # give the old rows' pages back to the filesystem
            except sqlite3.OperationalError as error:  # another process has it open: later
                logger.info("Embedding cache %s not compacted yet: %s", self.path, error)
            logger.warning(
                "Embedding cache %s: %d vectors moved to segment files", self.path, moved
            )

    def register_model(self, fingerprint: str, dim: int, info: dict) -> None:
        """Remember a model's dimension so later runs know it without loading the model."""
        self.db.execute(
            "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?)",
            (fingerprint, dim, json.dumps(info, sort_keys=True), time.time()),
        )

    def model_dim(self, fingerprint: str) -> int | None:
        row = self.db.execute(
            "SELECT dim FROM models WHERE fingerprint = ?", (fingerprint,)
        ).fetchone()
        return int(row[0]) if row else None

    def recall(self, key: str) -> str | None:
        """A value remembered by an earlier run (model folder hashes, loaded-collection states)."""
        row = self.db.execute("SELECT value FROM memo WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def remember(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO memo VALUES (?, ?)", (key, value))

    def model_info(self, fingerprint: str) -> dict:
        """What was recorded about a model when it was first loaded ({} if never)."""
        row = self.db.execute(
            "SELECT info FROM models WHERE fingerprint = ?", (fingerprint,)
        ).fetchone()
        return json.loads(row[0]) if row else {}

    def missing(self, fingerprint: str, digests: Iterable[bytes]) -> list[bytes]:
        """The digests (in the order given) that have no vector for this model yet."""
        wanted = list(digests)
        present = self.lookup(fingerprint, wanted, "tokens")
        return [d for d in wanted if d not in present]

    def space(self, fingerprint: str) -> tuple[int, int] | None:
        """(id, dim) of the model's dense vectors, None if it has none."""
        row = self.db.execute(
            "SELECT id, dim FROM spaces WHERE fingerprint = ?", (fingerprint,)
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def select(self, sql: str, key: Any, digests: list[bytes]) -> Iterator[tuple]:
        """Rows of `sql` (with `{marks}` for the digests) in batches under the parameter limit."""
        try:
            for part in chunked(list(dict.fromkeys(digests)), LOOKUP_CHUNK):
                yield from self.db.execute(
                    sql.format(marks=",".join("?" * len(part))), (key, *part)
                )
        except sqlite3.DatabaseError as error:
            raise CacheError(damaged(self.path, error)) from error

    def lookup(self, fingerprint: str, digests: list[bytes], column: str) -> dict[bytes, Any]:
        """digest -> `column` (value or tokens) for the digests this model has, in batches."""
        if column not in ("value", "tokens"):
            raise ValueError(f"unknown cache column {column}")
        found: dict[bytes, Any] = {}
        space = self.space(fingerprint)
        if space is not None:
            if column == "value":
                located = self.locate(space[0], digests)
                rows = self.read_rows(located, list(located), space[1]) if located else None
                found.update(zip(located, (row.tobytes() for row in rows or ())))
            else:
                found.update(
                    self.select(
                        "SELECT digest, tokens FROM dense WHERE space = ? AND digest IN ({marks})",
                        space[0],
                        digests,
                    )
                )
        rest = [d for d in digests if d not in found] if found else digests
        if rest and (space is None or self.has_rows(fingerprint)):
            found.update(
                self.select(
                    f"SELECT digest, {column} FROM vectors "
                    "WHERE fingerprint = ? AND digest IN ({marks})",
                    fingerprint,
                    rest,
                )
            )
        return found

    def count(self, fingerprint: str | None = None) -> int:
        """How many texts have a vector of this model (every model's with None), dense segments
        and rows together."""
        rows = "SELECT COUNT(*) FROM vectors"
        dense = "SELECT COUNT(*) FROM dense JOIN spaces ON dense.space = spaces.id"
        if fingerprint is None:
            return sum(self.db.execute(sql).fetchone()[0] for sql in (rows, dense))
        where = " WHERE fingerprint = ?"
        return sum(
            self.db.execute(sql + where, (fingerprint,)).fetchone()[0] for sql in (rows, dense)
        )

    def has_rows(self, fingerprint: str) -> bool:
        """Whether a dense model also has vectors kept as SQLite rows (an old cache's), asked
        once: dense vectors never become rows, so a model without any never looks there."""
        if fingerprint not in self.legacy:
            row = self.db.execute(
                "SELECT 1 FROM vectors WHERE fingerprint = ? LIMIT 1", (fingerprint,)
            ).fetchone()
            self.legacy[fingerprint] = row is not None
        return self.legacy[fingerprint]

    def locate(self, space: int, digests: list[bytes]) -> dict[bytes, tuple[int, int]]:
        """digest -> (segment, row) of the dense vectors present."""
        return {
            digest: (segment, row)
            for digest, segment, row in self.select(
                "SELECT digest, segment, row FROM dense WHERE space = ? AND digest IN ({marks})",
                space,
                digests,
            )
        }

    def read_rows(
        self, located: dict[bytes, tuple[int, int]], digests: list[bytes], dim: int
    ) -> np.ndarray:
        """The float32 rows of the digests (all located), in order, read from the segments."""
        places = np.array([located[d] for d in digests], dtype=np.int64).reshape(-1, 2)
        out = np.empty((len(digests), dim), dtype=np.float32)
        for segment in np.unique(places[:, 0]):
            chosen = np.flatnonzero(places[:, 0] == segment)
            rows = places[chosen, 1]
            file = self.segment_path(int(segment))
            try:
                have = file.stat().st_size // (dim * 4)
                if have <= rows.max():
                    raise CacheError(
                        damaged(self.path, f"{file.name} is shorter than its index says")
                    )
                mapped = np.memmap(file, dtype=np.float32, mode="r", shape=(have, dim))
                out[chosen] = mapped[rows]
                del mapped
            except OSError as error:
                raise CacheError(damaged(self.path, error)) from error
        return out

    def segment_path(self, segment: int) -> Path:
        return self.segment_dir / f"{segment:06d}.f32"

    def put_many(
        self,
        fingerprint: str,
        digests: list[bytes],
        values: list[bytes],
        tokens: list[int] | None = None,
    ) -> None:
        """Store one batch of variable-size values in a single transaction: all of it, or none."""
        token_counts = tokens if tokens is not None else [0] * len(digests)
        self.legacy[fingerprint] = True
        with self.writing():
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                [(fingerprint, d, v, t) for d, v, t in zip(digests, values, token_counts)],
            )
            self.db.execute("COMMIT")

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Rolls back a failed write and turns storage errors into ours."""
        try:
            yield
        except BaseException as error:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
                isinstance(error, sqlite3.OperationalError) and "full" in str(error)
            )
            if full:
                raise DiskFullError(
                    f"Embedding cache {self.path}: the disk is full ({error}); free space on "
                    "that filesystem or pass --cache-dir elsewhere, then re-run"
                ) from error
            if isinstance(error, (sqlite3.DatabaseError, OSError)):
                raise CacheError(damaged(self.path, error)) from error
            raise

    def put_vectors(
        self,
        fingerprint: str,
        digests: list[bytes],
        vectors: np.ndarray,
        tokens: list[int] | None = None,
    ) -> None:
        """Store dense float32 vectors (one row per digest): all of the batch survives, or none."""
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(digests) != len(rows):
            raise ValueError(f"{len(digests)} digests for {len(rows)} vectors")
        if not digests:
            return
        token_counts = tokens if tokens is not None else [0] * len(digests)
        self.append(fingerprint, digests, rows, token_counts)

    def append(
        self,
        fingerprint: str,
        digests: list[bytes],
        rows: np.ndarray,
        tokens: list[int],
        moved: bool = False,
    ) -> None:
        """Write rows at their segment's end, then record them in one transaction."""
        dim = rows.shape[1]
        with self.writing():
            # IMMEDIATE takes the write lock first, so concurrent writers (worker processes)
            # never write to the same place of a segment
            self.db.execute("BEGIN IMMEDIATE")
            space = self.space_for(fingerprint, dim)
            segment, used = self.open_segment(space, dim)
            with open(self.segment_path(segment), "r+b" if used else "wb") as file:
                file.seek(used * dim * 4)
                file.write(rows.data)
            self.db.executemany(
                "INSERT OR REPLACE INTO dense VALUES (?, ?, ?, ?, ?)",
                [(space, d, segment, used + i, t) for i, (d, t) in enumerate(zip(digests, tokens))],
            )
            self.db.execute(
                "UPDATE segments SET rows = ? WHERE id = ?", (used + len(digests), segment)
            )
            if moved:
                self.db.executemany(
                    "DELETE FROM vectors WHERE fingerprint = ? AND digest = ?",
                    [(fingerprint, d) for d in digests],
                )
            self.db.execute("COMMIT")

    def space_for(self, fingerprint: str, dim: int) -> int:
        """The id of the model's dense vectors, created on first use (inside a transaction)."""
        space = self.space(fingerprint)
        if space is None:
            self.db.execute(
                "INSERT INTO spaces (fingerprint, dim) VALUES (?, ?)", (fingerprint, dim)
            )
            space = self.space(fingerprint)
        assert space is not None
        if space[1] != dim:
            raise CacheError(
                f"Embedding cache {self.path}: model {fingerprint[:12]} has {space[1]}-d "
                f"vectors, not {dim}; delete {self.path.parent} or pass another --cache-dir"
            )
        return space[0]

    def shard_dir(self, fingerprint: str) -> Path:
        """Where embedding workers leave finished shards of this model for `adopt_shard`."""
        return self.path.with_suffix(".shards") / fingerprint[:16]

    def adopt_shard(self, fingerprint: str, manifest: Path) -> int:
        """Index a shard a worker wrote (`write_shard`) in place: its rows file becomes a
        segment, no vector is copied. Returns the vectors indexed (0 for a shard whose rows file
        is gone: it was adopted, or lost to a kill mid-adoption and is embedded again)."""
        try:
            info = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CacheError(damaged(self.path, f"shard {manifest.name}: {error}")) from error
        rows_file = manifest.with_suffix(".f32")
        if not rows_file.exists():
            manifest.unlink(missing_ok=True)
            return 0
        dim, digests = int(info["dim"]), [bytes.fromhex(d) for d in info["digests"]]
        keep = [i for i, ok in enumerate(info["finite"]) if ok]
        with self.writing():
            self.db.execute("BEGIN IMMEDIATE")
            space = self.space_for(fingerprint, dim)
            cursor = self.db.execute(
                "INSERT INTO segments (space, rows) VALUES (?, ?)", (space, len(digests))
            )
            assert cursor.lastrowid is not None
            move_file(rows_file, self.segment_path(cursor.lastrowid))
            self.db.executemany(
                "INSERT OR REPLACE INTO dense VALUES (?, ?, ?, ?, ?)",
                [(space, digests[i], cursor.lastrowid, i, info["tokens"][i]) for i in keep],
            )
            self.db.execute("COMMIT")
        manifest.unlink(missing_ok=True)
        return len(keep)

    def adopt_finished_shards(self, fingerprint: str) -> int:
        """Index every shard workers finished for this model (also those of a killed run)."""
        folder = self.shard_dir(fingerprint)
        manifests = sorted(folder.glob("*.json")) if folder.is_dir() else []
        adopted = sum(self.adopt_shard(fingerprint, m) for m in manifests)
        if adopted:
            logger.info("Embedding cache: %d vectors of finished shard files indexed", adopted)
        return adopted

    def open_segment(self, space: int, dim: int) -> tuple[int, int]:
        """(segment id, rows used) of the segment to append to; a new one once it is full."""
        row = self.db.execute(
            "SELECT id, rows FROM segments WHERE space = ? ORDER BY id DESC LIMIT 1", (space,)
        ).fetchone()
        if row is not None and row[1] * dim * 4 < SEGMENT_BYTES:
            return int(row[0]), int(row[1])
        cursor = self.db.execute("INSERT INTO segments (space, rows) VALUES (?, 0)", (space,))
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid), 0

    def get_many(self, fingerprint: str, digests: list[bytes]) -> list[bytes]:
        """Raw values for the digests, in order; a missing one is a CacheError."""
        found = self.lookup(fingerprint, digests, "value")
        self.require(fingerprint, [d for d in digests if d not in found])
        return [found[d] for d in digests]

    def require(self, fingerprint: str, absent: list[bytes]) -> None:
        if absent:
            raise CacheError(
                f"Embedding cache {self.path} lacks {len(absent)} vectors of model "
                f"{fingerprint[:12]} (re-run to embed them)"
            )

    def get_vectors(self, fingerprint: str, digests: list[bytes], dim: int) -> np.ndarray:
        """Dense vectors for the digests as a float32 N x dim array."""
        if not digests:
            return np.zeros((0, dim), dtype=np.float32)
        space = self.space(fingerprint)
        located = self.locate(space[0], digests) if space else {}
        if space is not None and space[1] != dim:
            raise self.wrong_size(fingerprint, dim)
        if len(located) == len(set(digests)):
            return self.read_rows(located, digests, dim)
        # rows an old cache kept as SQLite rows (of a model never registered, so not moved)
        values = self.get_many(fingerprint, digests)
        matrix = np.frombuffer(b"".join(values), dtype=np.float32)
        if matrix.size != len(values) * dim:
            raise self.wrong_size(fingerprint, dim)
        return matrix.reshape(len(values), dim)

    def wrong_size(self, fingerprint: str, dim: int) -> CacheError:
        return CacheError(
            f"Embedding cache {self.path} holds vectors of the wrong size for model "
            f"{fingerprint[:12]} (expected {dim}); delete {self.path.parent} (vectors are "
            "embedded again) or pass another --cache-dir"
        )

    def token_counts(self, fingerprint: str, digests: list[bytes]) -> dict[bytes, int]:
        """Token counts recorded when the texts were embedded (for truncation statistics)."""
        return self.lookup(fingerprint, digests, "tokens")


def write_shard(
    folder: Path, name: str, digests: list[bytes], vectors: np.ndarray, tokens: list[int]
) -> None:
    """Leave a finished shard for `EmbeddingCache.adopt_shard`: raw float32 rows in
    `<name>.f32`, then `<name>.json` (digests, token counts, which rows are finite). Each file
    appears whole (written aside, then renamed), the manifest last, so a shard exists only once
    complete. Used by workers on other processes or machines (shared storage)."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    rows.tofile(folder / f".{name}.f32.tmp")
    os.replace(folder / f".{name}.f32.tmp", folder / f"{name}.f32")
    manifest = {
        "dim": rows.shape[1],
        "digests": [d.hex() for d in digests],
        "tokens": [int(t) for t in tokens],
        "finite": np.isfinite(rows).all(axis=1).tolist(),
    }
    write_json_atomic(folder / f"{name}.json", manifest)


def move_file(source: Path, target: Path) -> None:
    """Rename, or copy and delete when the shard folder is on another filesystem (a cluster's
    shared storage linked into the cache folder: SQLite itself must stay on a local disk)."""
    try:
        os.replace(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        shutil.copyfile(source, target)
        source.unlink()


def chunked(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
