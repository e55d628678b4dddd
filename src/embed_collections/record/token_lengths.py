"""How long the run's chunks are in each model's tokens: a histogram per model, the truncation
they cause, and the warning that names the fix."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("embed_collections.record.token_lengths")

BIN_TOKENS = 32  # histogram bin width
LAST_BIN = 8192  # texts of this many tokens or more share the last bin


@dataclass
class TokenLengths:
    """One model's token counts over every chunk of the run (cached ones too)."""

    model: str
    max_seq_length: int = 0
    chunks: int = 0
    tokens: int = 0
    truncated_chunks: int = 0
    truncated_tokens: int = 0
    bins: dict[int, int] = field(default_factory=dict)  # bin start -> chunks

    def add(self, counts: list[int], max_seq_length: int) -> None:
        """Count one collection's chunks (their untruncated token counts)."""
        self.max_seq_length = max_seq_length or self.max_seq_length
        limit = self.max_seq_length
        for count in counts:
            start = min(count, LAST_BIN) // BIN_TOKENS * BIN_TOKENS
            self.bins[start] = self.bins.get(start, 0) + 1
            self.chunks += 1
            self.tokens += count
            if limit and count > limit:
                self.truncated_chunks += 1
                self.truncated_tokens += count - limit

    @property
    def dropped_share(self) -> float:
        """The share of the corpus's tokens the model never reads."""
        return self.truncated_tokens / self.tokens if self.tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary's `token_lengths` entry of this model."""
        return {
            "max_seq_length": self.max_seq_length,
            "chunks": self.chunks,
            "tokens": self.tokens,
            "truncated_chunks": self.truncated_chunks,
            "truncated_tokens": self.truncated_tokens,
            "dropped_share": round(self.dropped_share, 4),
            "bin_tokens": BIN_TOKENS,
            "bins": {str(start): n for start, n in sorted(self.bins.items())},
        }

    def warning(self) -> str | None:
        """The truncation warning with the fix, or None when nothing was cut."""
        if not self.truncated_chunks:
            return None
        return (
            f"{self.model}: {self.truncated_chunks:,} of {self.chunks:,} chunks "
            f"({self.truncated_chunks / self.chunks:.0%}) are longer than its "
            f"{self.max_seq_length}-token window; {self.truncated_tokens:,} of "
            f"{self.tokens:,} tokens ({self.dropped_share:.1%}) were not embedded "
            "(raise --max-seq-length if the model allows it, or add a model with a longer "
            "window; chunk smaller to keep everything)"
        )


def warn_truncation(lengths: dict[str, TokenLengths]) -> None:
    """Log one warning per model that cut chunks."""
    for item in lengths.values():
        message = item.warning()
        if message:
            log.warning("%s", message)
