"""What an agent puts in its prompt: a search's best hits widened with their neighbours until a
token budget is spent, merged where they touch, grouped by document, in document order, and
written as one text block with a citation line per piece; and the reads (`read`) behind it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embed_collections.engine import transformer_folder
from embed_collections.errors import UsageError
from embed_collections.query.reading import (
    DocumentReader,
    Piece,
    StoredChunk,
    check_count,
    make_piece,
    split_runs,
)

log = logging.getLogger(__name__)

MAX_CONTEXT_TOKENS = 100_000
DEFAULT_NEIGHBOURS = 2
CHARS_PER_TOKEN = 4  # the estimate where the first model has no tokenizer.json
CITATION_TOKENS = 24  # what one citation line and the blank lines around it cost, at most


def check_budget(max_tokens: Any, name: str = "max_tokens") -> int:
    """A token budget from 1 to MAX_CONTEXT_TOKENS (UsageError naming the argument)."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise UsageError(f"{name} is {max_tokens!r}; give a whole number of tokens, e.g. 2000")
    if not 1 <= max_tokens <= MAX_CONTEXT_TOKENS:
        raise UsageError(
            f"{name} is {max_tokens}; give a number of tokens from 1 to {MAX_CONTEXT_TOKENS:,} "
            "(e.g. 2000)"
        )
    return max_tokens


class TokenCounter:
    """Counts tokens with the run's first model's tokenizer (`tokenizer.json`, no special
    tokens, no truncation), or estimates 4 characters a token where there is none."""

    def __init__(self, tokenizer: Any = None, name: str = "") -> None:
        self.tokenizer, self.name = tokenizer, name or "estimate (4 characters a token)"
        self.known: dict[str, int] = {}

    @classmethod
    def for_model(cls, path: Path | None, name: str = "") -> TokenCounter:
        """The counter of the model in `path` (its transformer folder's tokenizer.json)."""
        if path is None:
            return cls()
        folder = transformer_folder(path) or path
        file = Path(folder) / "tokenizer.json"
        if not file.is_file():
            return cls()
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(file))
            tokenizer.no_truncation()
            tokenizer.no_padding()
        except Exception as error:  # an unreadable tokenizer: estimate instead, and say so
            log.warning("Cannot read %s (%s); estimating tokens from characters", file, error)
            return cls()
        return cls(tokenizer, name)

    def count(self, text: str) -> int:
        """Tokens in `text`."""
        known = self.known.get(text)
        if known is not None:
            return known
        if self.tokenizer is None:
            tokens = -(-len(text) // CHARS_PER_TOKEN)
        else:
            tokens = len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        if len(self.known) < 200_000:
            self.known[text] = tokens
        return tokens


@dataclass(frozen=True)
class ContextBlock:
    """Pieces of documents and the one text an agent pastes (`text`), within `max_tokens`."""

    pieces: list[Piece]
    max_tokens: int
    tokens: int
    counted_with: str
    mode: str = ""
    notes: list[str] = field(default_factory=list)
    truncated: bool = False  # a read cut short by its budget

    @property
    def text(self) -> str:
        return render_block(self.pieces)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "text": self.text,
            "pieces": [piece.to_json() for piece in self.pieces],
            "tokens": self.tokens,
            "max_tokens": self.max_tokens,
            "counted_with": self.counted_with,
        }
        if self.mode:
            data["mode"] = self.mode
        if self.truncated:
            data["truncated"] = True
        if self.notes:
            data["notes"] = list(self.notes)
        return data


def render_block(pieces: list[Piece]) -> str:
    """Each piece under its citation line, numbered, separated by blank lines."""
    return "\n\n".join(
        f"[{i}] {piece.citation()}\n{piece.text}" for i, piece in enumerate(pieces, 1)
    )


@dataclass
class Budget:
    """Chunks chosen for a context block, and the tokens they cost (with citation lines)."""

    limit: int
    counter: TokenCounter
    chosen: dict[tuple[str, str], StoredChunk] = field(default_factory=dict)
    spent: int = 0

    def cost(self, chunk: StoredChunk) -> int:
        return self.counter.count(chunk.text)

    def take(self, chunk: StoredChunk, extra: int = 0) -> bool:
        """Add the chunk if it fits (plus `extra`: a new piece's citation line)."""
        key = (chunk.collection, chunk.chunk_id)
        if key in self.chosen:
            return True
        cost = self.cost(chunk) + extra
        if self.spent + cost > self.limit:
            return False
        self.chosen[key] = chunk
        self.spent += cost
        return True


def around(
    anchor: StoredChunk, window: list[StoredChunk], reach: int, section: bool
) -> list[StoredChunk]:
    """The chunks to add around a hit, nearest first, the one after before the one before (the
    example or caveat usually follows the text that found it): with `section`, the rest of its
    section in the window; else the other chunks within `reach` places."""
    at = next((i for i, c in enumerate(window) if c.chunk_id == anchor.chunk_id), None)
    if at is None:
        return []

    def distance(item: tuple[int, StoredChunk]) -> tuple[int, int]:
        index, _ = item
        return (abs(index - at), 0 if index > at else 1)

    others = sorted(((i, c) for i, c in enumerate(window) if i != at), key=distance)
    if section:
        return [c for _, c in others if anchor.section and c.section == anchor.section]
    return [c for i, c in others if abs(i - at) <= reach]


def build_context(
    reader: DocumentReader,
    hits: list[tuple[StoredChunk, float]],
    max_tokens: int,
    counter: TokenCounter,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> tuple[list[Piece], int]:
    """Pieces within `max_tokens`: each hit, best first (identical texts once), with the rest
    of its section while the budget lasts; then, best hit first, up to `neighbours` chunks on
    each side of each hit.

    Returns the pieces (documents in the order of their best hit, pieces in document order)
    and the tokens they cost.
    """
    budget = Budget(max_tokens, counter)
    scores: dict[str, float] = {}
    said: set[str] = set()  # texts already in the block (a copy elsewhere is not said again)
    kept: list[tuple[StoredChunk, list[StoredChunk]]] = []
    documents: dict[tuple[str, str], list[StoredChunk]] = {}
    reach = max(neighbours, 1) * 4 + 8

    def add(chunk: StoredChunk, extra: int = 0) -> bool:
        """Whether the chunk is in the block now (False: it does not fit)."""
        if (chunk.collection, chunk.chunk_id) in budget.chosen:
            return True
        if (chunk.digest or chunk.text) in said:
            return False
        if not budget.take(chunk, extra):
            return False
        said.add(chunk.digest or chunk.text)
        return True

    for chunk, score in hits:
        held = (chunk.collection, chunk.chunk_id) in budget.chosen  # in an earlier section
        if not held and not add(chunk, CITATION_TOKENS):
            continue
        scores[chunk.chunk_id] = max(score, scores.get(chunk.chunk_id, score))
        window = reader.window(chunk, reach)
        document = documents.setdefault((chunk.collection, chunk.doc_id), [])
        known = {c.chunk_id for c in document}
        document.extend(c for c in window if c.chunk_id not in known)
        kept.append((chunk, window))
        for extra in around(chunk, window, neighbours, section=True):
            if not add(extra):
                break
    for chunk, window in kept:
        for extra in around(chunk, window, neighbours, section=False):
            if not add(extra):
                break
    pieces: list[Piece] = []
    for members in documents.values():
        document = sorted(members, key=lambda c: c.order)
        taken = [c for c in document if (c.collection, c.chunk_id) in budget.chosen]
        for run in split_runs(taken, document):
            tokens = sum(budget.cost(c) for c in run)
            pieces.append(make_piece(run, scores, tokens))
    return trim_to_budget(pieces, max_tokens, counter)


def trim_to_budget(
    pieces: list[Piece], max_tokens: int, counter: TokenCounter
) -> tuple[list[Piece], int]:
    """The pieces whose rendered block fits `max_tokens` (the last pieces dropped if not)."""
    while pieces:
        tokens = counter.count(render_block(pieces))
        if tokens <= max_tokens:
            return pieces, tokens
        pieces = pieces[:-1]
    return [], 0


def read_pieces(
    reader: DocumentReader,
    chunks: list[StoredChunk],
    max_tokens: int | None,
    counter: TokenCounter,
) -> tuple[list[Piece], bool]:
    """The chunks (of one document, in order) as pieces of neighbours, cut at `max_tokens`;
    True when the budget cut them short."""
    if max_tokens is not None:
        check_budget(max_tokens)
    kept, spent, cut = [], 0, False
    for chunk in chunks:
        cost = counter.count(chunk.text)
        if max_tokens is not None and spent + cost > max_tokens:
            cut = True
            break
        kept.append(chunk)
        spent += cost
    pieces = [
        make_piece(run, None, sum(counter.count(c.text) for c in run))
        for run in split_runs(kept, chunks)
    ]
    return pieces, cut


__all__ = [
    "ContextBlock",
    "DocumentReader",
    "TokenCounter",
    "build_context",
    "check_budget",
    "check_count",
    "read_pieces",
]
