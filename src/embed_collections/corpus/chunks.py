"""Read chunk files into `Chunk` records, losing only the records and files that are bad."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embed_collections.corpus.discovery import CHUNK_FILE_PATTERN, find_chunk_files
from embed_collections.errors import ChunkFileError

logger = logging.getLogger(__name__)

TEXT_KEYS = ("text", "content", "page_content")
METADATA_KEYS = ("metadata", "meta")
LIST_KEYS = ("chunks", "data", "records", "items")
# One broken export can hold thousands of bad records; every one is counted, few are listed.
MAX_LISTED_PER_FILE = 20
# Limits that keep one record from poisoning a shard (see `find_poison`).
MAX_PAYLOAD_DEPTH = 32
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_INT_DIGITS = 4000  # under Python's own 4300-digit limit on int(str)


@dataclass(frozen=True)
class Chunk:
    """One text to embed, with the ids that make its point stable across runs."""

    text: str
    chunk_id: str
    doc_id: str
    source_file: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """What the chunk's Qdrant point carries: the chunk itself and a hash of its text."""
        return {
            "text": self.text,
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "source_file": self.source_file,
            "metadata": self.metadata,
            "content_sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest(),
        }


@dataclass(frozen=True)
class LoadStats:
    """What loading a collection read and what it had to drop, for the run summary."""

    files: int
    records: int
    skipped_records: int
    file_errors: tuple[str, ...]
    duplicate_ids: int


@dataclass(frozen=True)
class LoadedCollection:
    """A collection's chunks in file order, with the problems met while reading them."""

    name: str
    chunks: tuple[Chunk, ...]
    stats: LoadStats
    warnings: tuple[str, ...]


def load_chunk_file(
    path: Path, root: Path | None = None
) -> tuple[list[Chunk], list[str], int, int]:
    """Read one chunk file; bad records are skipped and reported, a bad file raises.

    Returns (chunks, warnings, records read, records skipped). Raises ChunkFileError when the
    file cannot be read, is not UTF-8, is not valid JSON or has an unknown shape.
    """
    display = path.as_posix()
    records = _read_records(path, display)
    source_file = _relative_name(path, root)
    doc_stem = path.stem.removesuffix("_chunks") or path.stem
    chunks: list[Chunk] = []
    problems: list[str] = []
    for index, record in enumerate(records):
        try:
            built = _build_chunk(record, index, path.stem, doc_stem, source_file)
        except Exception as exc:  # one bad record costs one record, whatever is wrong with it
            built = f"cannot be used ({type(exc).__name__}: {exc})"
        if isinstance(built, Chunk):
            chunks.append(built)
        else:
            problems.append(f"{display} record {index}: {built} (record skipped)")
    warnings = _list_capped(problems, display, "bad records")
    return chunks, warnings, len(records), len(problems)


def load_collection(
    name: str,
    directory: Path,
    pattern: str = CHUNK_FILE_PATTERN,
    root: Path | None = None,
) -> LoadedCollection:
    """Load the chunk files directly in `directory` (nested collections are their own)."""
    files = find_chunk_files(directory, pattern)
    chunks: list[Chunk] = []
    warnings: list[str] = []
    file_errors: list[str] = []
    records = skipped = 0
    for path in files:
        try:
            file_chunks, file_warnings, file_records, file_skipped = load_chunk_file(path, root)
        except ChunkFileError as exc:
            logger.error("%s (file skipped)", exc)
            file_errors.append(str(exc))
            continue
        chunks.extend(file_chunks)
        warnings.extend(file_warnings)
        records += file_records
        skipped += file_skipped
    chunks, duplicate_warnings, duplicates = _make_ids_unique(name, chunks)
    warnings.extend(duplicate_warnings)
    stats = LoadStats(len(files), records, skipped, tuple(file_errors), duplicates)
    logger.debug("Loaded collection '%s': %d chunks, %s", name, len(chunks), stats)
    return LoadedCollection(name, tuple(chunks), stats, tuple(warnings))


def _read_records(path: Path, display: str) -> list[Any]:
    """Decode a chunk file and return its list of records, whichever accepted shape holds it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ChunkFileError(f"{display}: cannot read file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")  # a BOM is common in files written on Windows
    except UnicodeDecodeError as exc:
        raise ChunkFileError(
            f"{display}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from exc
    try:
        data = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise ChunkFileError(
            f"{display}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise ChunkFileError(f"{display}: not usable JSON: nested too deeply") from exc
    if isinstance(data, list):
        return data
    expected = 'a list of records or an object with a "chunks", "data", "records" or "items" list'
    if isinstance(data, dict):
        for key in LIST_KEYS:
            if isinstance(data.get(key), list):
                return data[key]
        keys = ", ".join(f'"{key}"' for key in list(data)[:8]) or "none"
        raise ChunkFileError(
            f"{display}: unknown shape: expected {expected}, found an object with keys {keys}"
        )
    raise ChunkFileError(f"{display}: unknown shape: expected {expected}, found {_kind(data)}")


def _build_chunk(
    record: Any, index: int, file_stem: str, doc_stem: str, source_file: str
) -> Chunk | str:
    """Build a Chunk from one record, or return why the record is unusable."""
    if isinstance(record, str):
        record = {"text": record}
    if not isinstance(record, dict):
        return f"is {_kind(record)}, not an object or a string"
    text_key = next((key for key in TEXT_KEYS if key in record), "text")
    text = record.get(text_key)
    if text is None or (isinstance(text, str) and not text.strip()):
        return f'"{text_key}" is missing or empty'
    if not isinstance(text, str):
        return f'"{text_key}" is {_kind(text)}, not a string'
    metadata_key = next((key for key in METADATA_KEYS if key in record), None)
    raw_metadata = record.get(metadata_key) if metadata_key else None
    if raw_metadata is not None and not isinstance(raw_metadata, dict):
        return f'"{metadata_key}" is {_kind(raw_metadata)}, not an object'
    metadata = dict(raw_metadata or {})
    for key, value in record.items():
        if key not in (text_key, metadata_key):
            metadata.setdefault(key, value)
    poison = find_poison(text, metadata)
    if poison:
        return poison
    return Chunk(
        # Kept exactly: whitespace and newlines carry meaning in code chunks.
        text=text,
        chunk_id=_first_id(metadata, ("chunk_id", "id")) or f"{file_stem}#{index}",
        doc_id=_first_id(metadata, ("document_id", "doc_id")) or doc_stem,
        source_file=source_file,
        metadata=metadata,
    )


class HugeInt(str):
    """An integer literal too long to convert (Python refuses over 4300 digits): kept as its
    digits so the file still parses and only its record is skipped."""


def _parse_int(digits: str) -> int | HugeInt:
    return HugeInt(digits) if len(digits) > MAX_INT_DIGITS else int(digits)


def _unencodable(value: str) -> int | None:
    """Position of the first character UTF-8 cannot encode (a lone surrogate), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def find_poison(text: str, metadata: dict[str, Any]) -> str | None:
    """Why a record must not reach the store (too deep, non-finite, too large, an integer the
    store cannot hold, a lone surrogate), or None.

    The store's write-ahead log recurses over nested payloads: a record nested a few hundred
    levels deep was stored and then left its shard unopenable.
    """
    position = _unencodable(text)
    if position is not None:
        return (
            f"text holds a lone surrogate (\\u{ord(text[position]):04x} at character "
            f"{position}), which UTF-8 cannot encode"
        )
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            return f"metadata is nested deeper than {MAX_PAYLOAD_DEPTH} levels"
        if isinstance(value, dict):
            for key in value:
                if _unencodable(str(key)) is not None:
                    return "metadata holds a key with a lone surrogate, which UTF-8 cannot encode"
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, float) and not math.isfinite(value):
            return f"metadata holds the non-finite number {value} (JSON has no such number)"
        elif isinstance(value, HugeInt):
            return f"metadata holds a {len(value.lstrip('-'))}-digit integer"
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not (-(2**63) <= value < 2**64)
        ):
            return f"metadata holds the integer {value}, outside the store's 64-bit range"
        elif isinstance(value, str) and _unencodable(value) is not None:
            return "metadata holds a string with a lone surrogate, which UTF-8 cannot encode"
    size = len(text.encode("utf-8")) + len(json.dumps(metadata, default=str).encode("utf-8"))
    if size > MAX_PAYLOAD_BYTES:
        return (
            f"payload is {size // 1024} KiB, over the {MAX_PAYLOAD_BYTES // 1024} KiB limit "
            "(split the chunk)"
        )
    return None


def _first_id(metadata: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first usable (string or number, non-blank) id under `keys`, as a string."""
    for key in keys:
        value = metadata.get(key)
        usable = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        if usable and str(value).strip():
            return str(value)
    return None


def _make_ids_unique(collection: str, chunks: list[Chunk]) -> tuple[list[Chunk], list[str], int]:
    """Rename repeated chunk ids to `id#2`, `id#3`, ... so no point overwrites another."""
    originals = {chunk.chunk_id for chunk in chunks}
    taken: set[str] = set()
    next_number: dict[str, int] = {}
    unique: list[Chunk] = []
    problems: list[str] = []
    for chunk in chunks:
        if chunk.chunk_id not in taken:
            taken.add(chunk.chunk_id)
            unique.append(chunk)
            continue
        number = next_number.get(chunk.chunk_id, 2)
        # Never take an id that a later record really has, so that record keeps it.
        new_id = f"{chunk.chunk_id}#{number}"
        while new_id in taken or new_id in originals:
            number += 1
            new_id = f"{chunk.chunk_id}#{number}"
        next_number[chunk.chunk_id] = number + 1
        taken.add(new_id)
        unique.append(dataclasses.replace(chunk, chunk_id=new_id))
        problems.append(
            f'{collection}: duplicate chunk_id "{chunk.chunk_id}" in {chunk.source_file} '
            f'renamed to "{new_id}"'
        )
    warnings = _list_capped(problems, collection, "duplicate ids")
    return unique, warnings, len(problems)


def _list_capped(problems: list[str], owner: str, what: str) -> list[str]:
    """Log and return at most MAX_LISTED_PER_FILE problems, then one line counting the rest."""
    listed = problems[:MAX_LISTED_PER_FILE]
    hidden = len(problems) - len(listed)
    if hidden:
        listed.append(f"{owner}: {hidden} more {what} not listed")
    for message in listed:
        logger.warning("%s", message)
    return listed


def _relative_name(path: Path, root: Path | None) -> str:
    """The chunk file as a posix path relative to `root`, else just its name."""
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name


def _kind(value: Any) -> str:
    """Name a JSON value's type the way the file's author would ("an object", "a number")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
