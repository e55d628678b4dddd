"""Cut one section into spans that fit every model: semantic-text-splitter does the cutting
(Markdown structure, then paragraphs, lists, code blocks and tables kept whole where they fit,
then sentences, then words), sized here against every model's tokenizer.

Sized by characters first, from the section's own characters per token, because the splitter
counting with a tokenizer re-tokenises candidate merges and ran 4x slower. Each section is
tokenised once per model; a piece's tokens are those whose character offsets lie inside it
(exact but at its two edges), a piece within SLACK tokens of the target is counted again
exactly (prefix and special tokens included), and a piece over the target is cut again by the
tightest model's tokenizer: the character estimate never decides whether a chunk fits
(docs/chunking.md).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

from semantic_text_splitter import MarkdownSplitter, TextSplitter

from embed_collections.chunking.sizing import Sizing
from embed_collections.errors import EmbedCollectionsError


class ChunkingError(EmbedCollectionsError):
    """A piece of a document could not be cut to fit every model (a bug: please report it)."""


# The character estimate aims a little under the target, so few pieces need a second cut.
CHAR_MARGIN = 0.9
MAX_ROUNDS = 8
# Tokens a count from the section's own tokenisation may be off by at a piece's edges (a word
# the cut or the prefix joins, a few at most); a piece estimated within this of the target is
# counted exactly.
SLACK = 8


class Estimate:
    """Token counts of spans of one section, from its tokens' character offsets per model."""

    def __init__(self, start: int, models: list[tuple[list[tuple[int, int]], bool]]):
        self.start = start
        self.starts = [[a for a, _ in offsets] for offsets, _ in models]
        self.ends = [[b for _, b in offsets] for offsets, _ in models]
        self.shifted = any(shifted for _, shifted in models)  # lower-casing moved characters

    def tokens(self, start: int, end: int) -> int | None:
        """The most tokens any model has inside [start, end), or None where unknown."""
        if self.shifted:
            return None
        a, b = start - self.start, end - self.start
        counts = [bisect_right(e, b) - bisect_left(s, a) for s, e in zip(self.starts, self.ends)]
        return max(counts, default=0)


class SectionSplitter:
    """Splits sections into (start, end) character spans, reusing its splitters."""

    def __init__(self, sizing: Sizing):
        self.sizing = sizing
        self.overheads = [b.limit - b.room for b in sizing.budgets]
        self._splitters: dict[tuple[Any, ...], Any] = {}
        self.edge = sizing.capacity  # at most every window's room: estimates near it are counted

    def split(
        self, text: str, sections: list[tuple[int, int]], kind: str
    ) -> list[list[tuple[int, int, int]]]:
        """Per section (start, end), its spans (start, end, tokens) within the target and every
        model's window; `tokens` is the most any model counts for the span's own text."""
        bounds = []
        for start, end in sections:
            body = text[start:end]
            lead = len(body) - len(body.lstrip())
            bounds.append((start + lead, start + lead + len(body.strip())))
        estimates = self._estimate(text, bounds)
        result: list[list[tuple[int, int, int]]] = []
        for (start, end), estimate in zip(bounds, estimates):
            tokens = estimate.tokens(start, end)
            if start >= end:
                result.append([])
            elif tokens is not None and tokens > self.sizing.capacity:
                result.append(self._cut(text, start, end, tokens, kind, estimate))
            else:
                result.append(self._settle(text, [(start, end)], kind, estimate))
        return result

    def _cut(
        self, text: str, start: int, end: int, tokens: int, kind: str, estimate: Estimate
    ) -> list[tuple[int, int, int]]:
        """Cut by characters, aiming at the target from this text's characters per token."""
        per_token = (end - start) / max(1, tokens)
        chars = max(16, int(self.sizing.capacity * per_token * CHAR_MARGIN))
        overlap = min(int(self.sizing.overlap * per_token), chars - 1)
        pieces = self._splitter(kind, chars, overlap).chunk_indices(text[start:end])
        spans = [(start + offset, start + offset + len(piece)) for offset, piece in pieces]
        return self._settle(text, spans, kind, estimate)

    def _estimate(self, text: str, bounds: list[tuple[int, int]]) -> list[Estimate]:
        """Each section tokenised once per model, with the offsets of its tokens."""
        bodies = [text[a:b] for a, b in bounds]
        per_model = []
        for budget in self.sizing.budgets:
            lower = budget.tokenizer.lower
            inputs = [body.lower() for body in bodies] if lower else bodies
            encodings = budget.tokenizer.counter.encode_batch(inputs, add_special_tokens=False)
            per_model.append(
                [(e.offsets, len(i) != len(b)) for e, i, b in zip(encodings, inputs, bodies)]
            )
        return [
            Estimate(start, [offsets[index] for offsets in per_model])
            for index, (start, _) in enumerate(bounds)
        ]

    def text_tokens(self, texts: list[str]) -> list[tuple[int, bool]]:
        """For each text: the most tokens any model counts for it, less that model's prefix
        and special tokens, and whether it fits every model's window (exact counts)."""
        most = [0] * len(texts)
        fits = [True] * len(texts)
        for budget, overhead in zip(self.sizing.budgets, self.overheads):
            for index, count in enumerate(budget.count(texts)):
                most[index] = max(most[index], count - overhead)
                fits[index] = fits[index] and count <= budget.limit
        return list(zip(most, fits))

    def _settle(
        self, text: str, spans: list[tuple[int, int]], kind: str, estimate: Estimate | None
    ) -> list[tuple[int, int, int]]:
        """Keep the spans within the target (estimated from the section's tokens, counted
        exactly near a window's edge); cut again, by tokens, those over it."""
        done: list[tuple[int, int, int]] = []
        capacity = self.sizing.capacity
        pending = spans
        for round_ in range(MAX_ROUNDS):
            again: list[tuple[int, int]] = []
            guesses = [estimate.tokens(a, b) if estimate else None for a, b in pending]
            near = [i for i, g in enumerate(guesses) if g is None or g + SLACK > self.edge]
            counted = self.text_tokens([text[pending[i][0] : pending[i][1]] for i in near])
            exact = dict(zip(near, counted))
            for index, (a, b) in enumerate(pending):
                tokens, fit = exact.get(index) or (guesses[index] or 0, True)
                if fit and tokens <= capacity:
                    done.append((a, b, tokens))
                    continue
                # the tightest model cuts; each round aims lower in case prefixes join words
                cut = max(1, capacity - round_ * max(1, capacity // 10))
                splitter = self._token_splitter(kind, self._tightest(text[a:b]), cut)
                again.extend((a + o, a + o + len(p)) for o, p in splitter.chunk_indices(text[a:b]))
            if not again:
                break
            pending, estimate = again, None
            pending = again
        else:  # not met in practice: the cut shrinks each round, and one token fits any window
            raise ChunkingError(
                f"{len(pending)} pieces still over a model's window after {MAX_ROUNDS} cuts"
            )
        return sorted(done)

    def _tightest(self, piece: str) -> int:
        """The budget whose tokenizer counts the most tokens for this piece."""
        counts = [b.count([piece])[0] - o for b, o in zip(self.sizing.budgets, self.overheads)]
        return counts.index(max(counts))

    def _splitter(self, kind: str, chars: int, overlap: int) -> Any:
        key = (kind, chars, overlap)
        if key not in self._splitters:
            cls = MarkdownSplitter if kind == "markdown" else TextSplitter
            self._splitters[key] = cls(chars, overlap=overlap)
        return self._splitters[key]

    def _token_splitter(self, kind: str, budget: int, tokens: int) -> Any:
        key = (kind, budget, tokens)
        if key not in self._splitters:
            cls = MarkdownSplitter if kind == "markdown" else TextSplitter
            overlap = min(self.sizing.overlap, tokens - 1)
            tokenizer = self.sizing.budgets[budget].tokenizer.counter
            self._splitters[key] = cls.from_huggingface_tokenizer(tokenizer, tokens, overlap)
        return self._splitters[key]
