"""Reading documents back out of a collection: a chunk with its neighbours in document order,
the section it belongs to, or the whole document, joined into pieces of text that say where
they come from and never repeat the text that chunks share (chunks overlap).

Points loaded by this version carry `position` (the chunk's place in its document) and
`section` as indexed payload, so a read is a few payload lookups; points loaded before (or
uploaded from an export) are read by listing their document and ordering it by `chunk_index`,
`start_char` and the chunk id, which is slower, and the reader says how to upgrade.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from embed_collections.errors import UsageError
from embed_collections.stores.base import (
    DOCUMENT_FIELD,
    POSITION_FIELD,
    SECTION_FIELD,
    PointLookup,
    Store,
)
from embed_collections.stores.open import point_id

MAX_DOCUMENT_CHUNKS = 100_000
MIN_TEXT_OVERLAP = 8  # characters: a shorter common edge of two texts is likely chance
WINDOW_SLACK = 4  # extra positions asked for around a chunk, for gaps in chunk_index
UPGRADE_HINT = (
    'collection "{name}" was loaded before chunk positions were stored, so reads list the '
    "whole document: run `embed-collections run` again with the same options on this output "
    "directory to add them (nothing is re-embedded)"
)


class UnknownChunkError(UsageError):
    """A read named a chunk or document the collection does not hold."""


@dataclass(frozen=True)
class StoredChunk:
    """One chunk as its point's payload holds it, with its place in its document."""

    collection: str
    chunk_id: str
    doc_id: str
    source_file: str
    section: str
    text: str
    order: tuple[Any, ...]
    position: int | None
    start_char: int | None
    end_char: int | None
    digest: str = ""

    @classmethod
    def from_payload(cls, collection: str, payload: dict[str, Any]) -> StoredChunk:
        metadata = payload.get("metadata") or {}
        text = str(payload.get("text", ""))
        position = payload.get(POSITION_FIELD)
        start = _integer(metadata.get("start_char"))
        end = _integer(metadata.get("end_char"))
        if end is None and start is not None:
            end = start + len(text)
        section = payload.get(SECTION_FIELD)
        if section is None:
            path = metadata.get("section_path")
            section = " > ".join(map(str, path)) if isinstance(path, list) else str(path or "")
        chunk_id = str(payload.get("chunk_id", ""))
        return cls(
            collection=collection,
            chunk_id=chunk_id,
            doc_id=str(payload.get(DOCUMENT_FIELD, "")),
            source_file=str(payload.get("source_file", "")),
            section=str(section),
            text=text,
            order=order_key(payload),
            position=position if type(position) is int else None,
            start_char=start,
            end_char=end,
            digest=str(payload.get("content_sha256", "")),
        )


def _integer(value: Any) -> int | None:
    return value if type(value) is int else None


def order_key(payload: dict[str, Any]) -> tuple[Any, ...]:
    """Where a chunk sits in its document: `position`, else `chunk_index`, else `start_char`,
    else the number at the end of its chunk id (`guide#12`), else the id itself."""
    metadata = payload.get("metadata") or {}
    for value in (
        payload.get(POSITION_FIELD),
        metadata.get("chunk_index"),
        metadata.get("start_char"),
    ):
        if type(value) is int:
            return (0, value, "")
    chunk_id = str(payload.get("chunk_id", ""))
    tail = re.search(r"(\d+)$", chunk_id)
    return (1, int(tail.group(1)) if tail else 0, chunk_id)


@dataclass(frozen=True)
class Piece:
    """Adjacent chunks of one document joined into one text, and where it is from."""

    collection: str
    doc_id: str
    source_file: str
    section: str
    chunk_ids: tuple[str, ...]
    first_index: int | None  # the chunks' positions in their document, where known
    last_index: int | None
    start_char: int | None
    end_char: int | None
    text: str
    score: float | None = None  # the best search hit's score among its chunks
    hits: tuple[str, ...] = ()  # the chunk ids a search found (the others are context)
    tokens: int = 0

    def where(self) -> str:
        """`chunks 3-5, chars 1200-3400` (what is known)."""
        parts = []
        if self.first_index is not None:
            same = self.first_index == self.last_index
            span = f"{self.first_index}" if same else f"{self.first_index}-{self.last_index}"
            parts.append(f"chunk{'' if same else 's'} {span}")
        if self.start_char is not None and self.end_char is not None:
            parts.append(f"chars {self.start_char}-{self.end_char}")
        return ", ".join(parts)

    def citation(self) -> str:
        """One line naming the piece: collection, source file, section, chunks and offsets."""
        section = f" § {self.section}" if self.section else ""
        where = self.where()
        return f"[{self.collection}] {self.source_file}{section}" + (f" ({where})" if where else "")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "collection": self.collection,
            "source_file": self.source_file,
            "document_id": self.doc_id,
            "section": self.section,
            "chunk_ids": list(self.chunk_ids),
            "chunk_index": [self.first_index, self.last_index],
            "chars": [self.start_char, self.end_char],
            "text": self.text,
        }
        if self.score is not None:
            data["score"] = round(self.score, 4)
            data["hits"] = list(self.hits)
        if self.tokens:
            data["tokens"] = self.tokens
        return data


def text_overlap(first: str, second: str) -> int:
    """Characters at the end of `first` that `second` starts with (0 below MIN_TEXT_OVERLAP)."""
    longest = min(len(first), len(second))
    for size in range(longest, MIN_TEXT_OVERLAP - 1, -1):
        if first.endswith(second[:size]):
            return size
    return 0


def join_chunks(chunks: list[StoredChunk]) -> str:
    """The chunks' texts in order, each overlap with the text before it said once: cut by the
    character offsets where both chunks have them, else by the longest common edge."""
    if not chunks:
        return ""
    parts = [chunks[0].text]
    for before, chunk in zip(chunks, chunks[1:]):
        cut = 0
        offsets = (before.start_char, before.end_char, chunk.start_char)
        if all(value is not None for value in offsets):
            shared = before.end_char - chunk.start_char  # type: ignore[operator]
            if 0 < shared < len(chunk.text) and before.text.endswith(chunk.text[:shared]):
                cut = shared
            elif shared <= 0:
                cut = 0
            else:
                cut = text_overlap(before.text, chunk.text)
        else:
            cut = text_overlap(before.text, chunk.text)
        parts.append(("" if cut else "\n\n") + chunk.text[cut:])
    return "".join(parts)


def make_piece(
    chunks: list[StoredChunk], scores: dict[str, float] | None = None, tokens: int = 0
) -> Piece:
    """One piece of adjacent chunks (of one document, in order)."""
    first, last = chunks[0], chunks[-1]
    sections = list(dict.fromkeys(chunk.section for chunk in chunks if chunk.section))
    found = {c.chunk_id: scores[c.chunk_id] for c in chunks if scores and c.chunk_id in scores}
    return Piece(
        collection=first.collection,
        doc_id=first.doc_id,
        source_file=first.source_file,
        section=sections[0] if len(sections) == 1 else " | ".join(sections),
        chunk_ids=tuple(chunk.chunk_id for chunk in chunks),
        first_index=first.order[1] if first.order[0] == 0 else None,
        last_index=last.order[1] if last.order[0] == 0 else None,
        start_char=first.start_char,
        end_char=last.end_char,
        text=join_chunks(chunks),
        score=max(found.values()) if found else None,
        hits=tuple(found),
        tokens=tokens,
    )


@dataclass
class DocumentReader:
    """Chunks and documents of a store's collections, looked up by payload."""

    store: Store
    legacy: dict[str, bool] = field(default_factory=dict)  # collection -> loaded before positions

    def chunk(self, collection: str, chunk_id: str) -> StoredChunk:
        """The chunk with this id (UnknownChunkError naming it and the fix)."""
        if not isinstance(chunk_id, str) or not chunk_id.strip():
            raise UsageError(
                'chunk_id is empty; give the "chunk_id" of a search hit (search returns one '
                "per hit)"
            )
        found = [
            hit
            for hit in self.store.retrieve(collection, [point_id(collection, chunk_id)])
            if hit.payload.get("chunk_id") == chunk_id
        ]
        if not found:  # points stored under other ids (another tool's load): ask the payload
            where = (("chunk_id", chunk_id),)
            found = self.store.lookup(collection, PointLookup(where=where, limit=1))
        if not found:
            raise UnknownChunkError(
                f'chunk_id "{chunk_id}" is not in collection "{collection}"; give the '
                '"chunk_id" of a search hit from that collection'
            )
        chunk = StoredChunk.from_payload(collection, found[0].payload)
        self.legacy[collection] = chunk.position is None
        return chunk

    def document(
        self, collection: str, doc_id: str | None = None, source_file: str | None = None
    ) -> list[StoredChunk]:
        """Every chunk of a document (by id, or every document of a source file), in order."""
        if doc_id:
            where: tuple[tuple[str, Any], ...] = ((DOCUMENT_FIELD, doc_id),)
        elif source_file:
            where = (("source_file", source_file),)
        else:
            raise UsageError(
                "Name the document: give document_id (a hit's document_id) or source_file "
                "(a hit's source_file, a path relative to the chunked folder)"
            )
        chunks = self._ordered(collection, PointLookup(where=where, limit=MAX_DOCUMENT_CHUNKS))
        if not chunks:
            what = f'document_id "{doc_id}"' if doc_id else f'source_file "{source_file}"'
            raise UnknownChunkError(
                f'{what} is not in collection "{collection}"; give the document_id or '
                "source_file of a search hit from that collection"
            )
        return chunks

    def neighbours(self, anchor: StoredChunk, before: int, after: int) -> list[StoredChunk]:
        """The anchor with up to `before` chunks before it and `after` after it, in order."""
        check_count("before", before)
        check_count("after", after)
        chunks = self.window(anchor, max(before, after) + WINDOW_SLACK)
        at = next(i for i, chunk in enumerate(chunks) if chunk.chunk_id == anchor.chunk_id)
        if anchor.position is not None and (at < before or len(chunks) - at - 1 < after):
            # The document's edge, or a gap in its chunk_index wider than the slack.
            chunks = self.document(anchor.collection, anchor.doc_id)
            at = next(i for i, c in enumerate(chunks) if c.chunk_id == anchor.chunk_id)
        return chunks[max(0, at - before) : at + after + 1]

    def section(self, anchor: StoredChunk) -> list[StoredChunk]:
        """Every chunk of the anchor's document that shares its section path, in order."""
        if anchor.position is None:
            chunks = self.document(anchor.collection, anchor.doc_id)
            return [chunk for chunk in chunks if chunk.section == anchor.section]
        where = ((DOCUMENT_FIELD, anchor.doc_id), (SECTION_FIELD, anchor.section))
        return self._ordered(anchor.collection, PointLookup(where=where, limit=MAX_DOCUMENT_CHUNKS))

    def window(self, anchor: StoredChunk, reach: int) -> list[StoredChunk]:
        """The chunks within `reach` places of the anchor (the document where not indexed)."""
        if anchor.position is None:
            return self.document(anchor.collection, anchor.doc_id)
        lookup = PointLookup(
            where=((DOCUMENT_FIELD, anchor.doc_id),),
            between=(POSITION_FIELD, anchor.position - reach, anchor.position + reach),
            limit=2 * reach + 1,
        )
        return self._ordered(anchor.collection, lookup)

    def upgrade_notes(self) -> list[str]:
        """How to make the reads of collections loaded before positions were stored fast."""
        return [UPGRADE_HINT.format(name=name) for name, old in sorted(self.legacy.items()) if old]

    def _ordered(self, collection: str, lookup: PointLookup) -> list[StoredChunk]:
        hits = self.store.lookup(collection, lookup)
        chunks = [StoredChunk.from_payload(collection, hit.payload) for hit in hits]
        return sorted(chunks, key=lambda chunk: (chunk.doc_id, chunk.order))


def check_count(name: str, value: Any, highest: int = 1000) -> int:
    """A whole number of chunks from 0 to `highest` (UsageError naming the argument)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= highest:
        raise UsageError(f"{name} is {value!r}; give a whole number of chunks from 0 to {highest}")
    return value


def split_runs(
    chunks: Iterable[StoredChunk], ordered: list[StoredChunk]
) -> list[list[StoredChunk]]:
    """`chunks` (of one document) in runs of neighbours: adjacent in the document's `ordered`
    chunks, so that each run joins into one piece."""
    place = {chunk.chunk_id: i for i, chunk in enumerate(ordered)}
    picked = sorted({place[c.chunk_id]: c for c in chunks if c.chunk_id in place}.items())
    runs: list[list[StoredChunk]] = []
    last = -2
    for index, chunk in picked:
        if index == last + 1 and runs:
            runs[-1].append(chunk)
        else:
            runs.append([chunk])
        last = index
    return runs
