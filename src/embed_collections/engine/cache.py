"""Content-addressed embedding store: (model fingerprint, sha256(text)) -> vector.

SQLite in WAL mode holds it: each committed batch survives `kill -9`, and a transaction torn by a
crash is rolled back on reopen by SQLite's own checksummed WAL, so a half-written vector is never
read as data. Because the key is the text's hash, identical chunks anywhere in the corpus are
embedded once per model, a resumed run embeds only what is missing, and an unchanged re-run
embeds nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from embed_collections.errors import DiskFullError, EmbedCollectionsError

LOOKUP_CHUNK = 900  # stays under SQLite's default limit of host parameters per statement


def text_digest(text: str) -> bytes:
    """The cache key of a text: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class CacheError(EmbedCollectionsError):
    """The embedding cache is unreadable or inconsistent."""


def damaged(path: Path, error: Exception) -> str:
    """The message for a cache SQLite cannot read, naming the fix."""
    return (
        f"Embedding cache {path} is damaged or unreadable ({error}); delete it (vectors are "
        "embedded again) or pass another --cache-dir"
    )


class EmbeddingCache:
    """Vectors keyed by model fingerprint and text digest, written as batches complete."""

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CacheError(
                f"Embedding cache folder {path.parent} cannot be created: "
                f"{error.strerror or error} (choose another --cache-dir)"
            ) from error
        try:
            self.db = sqlite3.connect(path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a killed process loses nothing committed (only power loss can).
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(
                """
                CREATE TABLE IF NOT EXISTS models (
                    fingerprint TEXT PRIMARY KEY, dim INTEGER, info TEXT, created REAL);
                CREATE TABLE IF NOT EXISTS memo (key TEXT PRIMARY KEY, value TEXT);
                CREATE TABLE IF NOT EXISTS vectors (
                    fingerprint TEXT, digest BLOB, value BLOB, tokens INTEGER,
                    PRIMARY KEY (fingerprint, digest)) WITHOUT ROWID;
                """
            )
        except sqlite3.DatabaseError as error:
            raise CacheError(damaged(path, error)) from error

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def lookup(self, fingerprint: str, digests: list[bytes], column: str) -> dict[bytes, Any]:
        """digest -> `column` (value or tokens) for the digests this model has, in batches."""
        if column not in ("value", "tokens"):
            raise ValueError(f"unknown cache column {column}")
        found: dict[bytes, Any] = {}
        try:
            for part in chunked(list(dict.fromkeys(digests)), LOOKUP_CHUNK):
                marks = ",".join("?" * len(part))
                rows = self.db.execute(
                    f"SELECT digest, {column} FROM vectors "
                    f"WHERE fingerprint = ? AND digest IN ({marks})",
                    (fingerprint, *part),
                )
                found.update(rows)
        except sqlite3.DatabaseError as error:
            raise CacheError(damaged(self.path, error)) from error
        return found

    def put_many(
        self,
        fingerprint: str,
        digests: list[bytes],
        values: list[bytes],
        tokens: list[int] | None = None,
    ) -> None:
        """Store one batch in a single transaction: all of it survives a crash, or none."""
        token_counts = tokens if tokens is not None else [0] * len(digests)
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany(
                    "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                    [(fingerprint, d, v, t) for d, v, t in zip(digests, values, token_counts)],
                )
        except sqlite3.OperationalError as error:
            if "full" in str(error):
                raise DiskFullError(
                    f"Embedding cache {self.path}: the disk is full ({error}); free space on "
                    "that filesystem or pass --cache-dir elsewhere, then re-run"
                ) from error
            raise CacheError(damaged(self.path, error)) from error
        except sqlite3.DatabaseError as error:
            raise CacheError(damaged(self.path, error)) from error

    def put_vectors(
        self,
        fingerprint: str,
        digests: list[bytes],
        vectors: np.ndarray,
        tokens: list[int] | None = None,
    ) -> None:
        """Store dense float32 vectors (one row per digest)."""
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        self.put_many(fingerprint, digests, [row.tobytes() for row in rows], tokens)

    def get_many(self, fingerprint: str, digests: list[bytes]) -> list[bytes]:
        """Raw values for the digests, in order; a missing one is a CacheError."""
        found = self.lookup(fingerprint, digests, "value")
        absent = [d for d in digests if d not in found]
        if absent:
            raise CacheError(
                f"Embedding cache {self.path} lacks {len(absent)} vectors of model "
                f"{fingerprint[:12]} (re-run to embed them)"
            )
        return [found[d] for d in digests]

    def get_vectors(self, fingerprint: str, digests: list[bytes], dim: int) -> np.ndarray:
        """Dense vectors for the digests as a float32 N x dim array."""
        values = self.get_many(fingerprint, digests)
        if not values:
            return np.zeros((0, dim), dtype=np.float32)
        matrix = np.frombuffer(b"".join(values), dtype=np.float32)
        if matrix.size != len(values) * dim:
            raise CacheError(
                f"Embedding cache {self.path} holds vectors of the wrong size for model "
                f"{fingerprint[:12]} (expected {dim}); delete {self.path} (vectors are embedded "
                "again) or pass another --cache-dir"
            )
        return matrix.reshape(len(values), dim)

    def token_counts(self, fingerprint: str, digests: list[bytes]) -> dict[bytes, int]:
        """Token counts recorded when the texts were embedded (for truncation statistics)."""
        return self.lookup(fingerprint, digests, "tokens")


def chunked(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
