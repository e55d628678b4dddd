"""One document's chunk records, in the schema of the corpus's `*_chunks.json` files: a list of
`{"text", "metadata"}` whose ids, spans and digests depend only on the file and the sizing (no
timestamps), so the same input writes the same bytes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Any

from embed_collections.chunking.documents import Document
from embed_collections.chunking.splitter import SectionSplitter
from embed_collections.chunking.structure import Section, find_sections

CHUNKER_VERSION = "embed-collections-chunk-1"
_LINK = re.compile(r"!?\[[^\]]*\]\([^)]*\)")
_WORD = re.compile(r"\w+")
NAVIGATION_SHARE = 0.25  # words outside links, below which a chunk is navigation
STRATEGY = "structure+semantic-text-splitter"


def document_id(source_file: str) -> str:
    """A page's id: from its path under the source folder, so an edit keeps it."""
    return hashlib.sha256(source_file.encode("utf-8")).hexdigest()[:12]


def chunk_document(
    document: Document,
    source_file: str,
    splitter: SectionSplitter,
    keep_navigation: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """The chunk records of one document; `source_file` is its posix path under the source.
    Chunks that are navigation (mostly links: a site's menu, repeated on every page) are
    left out unless `keep_navigation`; returns the records and how many were left out."""
    text = document.text
    sections = merge_bare_headings(text, find_sections(text, document.kind))
    doc_id = document_id(source_file)
    name = PurePosixPath(source_file)
    spans: list[tuple[Section, int, int, int]] = []
    dropped = 0
    cuts = splitter.split(text, [(s.start, s.end) for s in sections], document.kind)
    for section, pieces in zip(sections, cuts):
        for start, end, tokens in pieces:
            if not keep_navigation and is_navigation(text[start:end]):
                dropped += 1
            else:
                spans.append((section, start, end, tokens))
    ids = [f"{doc_id}-{index:04d}" for index in range(len(spans))]
    first_of: dict[tuple[str, ...], str] = {}
    for (section, *_), chunk_id in zip(spans, ids):
        first_of.setdefault(section.path, chunk_id)
    children: dict[str, list[str]] = {}
    parents: list[str | None] = []
    for section, *_ in spans:
        parent = first_of.get(section.path[:-1]) if section.path else None
        parents.append(parent)
        own = first_of[section.path]
        if parent and parent != own and own not in children.setdefault(parent, []):
            children[parent].append(own)
    records = []
    for index, ((section, start, end, tokens), chunk_id) in enumerate(zip(spans, ids)):
        chunk_text = text[start:end]
        records.append(
            {
                "text": chunk_text,
                "metadata": {
                    "chunk_id": chunk_id,
                    "document_id": doc_id,
                    "document_name": name.stem,
                    "source_file": source_file,
                    "filename": name.name,
                    "file_extension": name.suffix,
                    "chunk_index": index,
                    "section_path": list(section.path),
                    "heading_text": section.heading,
                    "hierarchy_path": " > ".join(section.path),
                    "document_level": section.level,
                    "start_char": start,
                    "end_char": end,
                    "char_count": end - start,
                    "token_count": tokens,
                    "content_digest": hashlib.sha256(chunk_text.encode()).hexdigest()[:16],
                    "parent_chunk_id": parents[index] if parents[index] != chunk_id else None,
                    "child_chunk_ids": children.get(chunk_id, []),
                    "content_type": document.kind,
                    "chunking_strategy": STRATEGY,
                    "chunker_version": CHUNKER_VERSION,
                    "chunk_size_tokens": splitter.sizing.chunk_size,
                    "chunk_overlap_tokens": splitter.sizing.overlap,
                    "within_token_limit": True,
                },
            }
        )
    return records, dropped


def is_navigation(text: str) -> bool:
    """Whether a chunk is mostly links (over three quarters of its words inside links): a menu
    or a table of contents, which matches every query about its pages and answers none
    (docs/chunking.md)."""
    if not _LINK.search(text):
        return False
    words = len(_WORD.findall(text))
    outside = len(_WORD.findall(_LINK.sub(" ", text)))
    return outside < NAVIGATION_SHARE * words


def merge_bare_headings(text: str, sections: list[Section]) -> list[Section]:
    """A heading with no text of its own before its first subsection is joined to that
    subsection, so no chunk is a lone title (the subsection's path names both)."""
    merged: list[Section] = []
    carry: int | None = None
    for index, section in enumerate(sections):
        start = section.start if carry is None else carry
        carry = None
        following = sections[index + 1] if index + 1 < len(sections) else None
        body = text[section.start : section.end].split("\n", 1)
        bare = section.level > 0 and (len(body) == 1 or not body[1].strip())
        if bare and following is not None and following.level > section.level:
            carry = start
            continue
        merged.append(Section(start, section.end, section.level, section.heading, section.path))
    return merged


def encode_records(records: list[dict[str, Any]]) -> bytes:
    """A chunk file's bytes: stable key order, UTF-8, a final newline (not indented: the
    indenting encoder is pure Python and took a sixth of the chunking time)."""
    return (json.dumps(records, ensure_ascii=False) + "\n").encode("utf-8")
