"""What every reranker is: a model scoring (query, text) pairs, loaded once, asked in batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Reranker:
    """A second-stage model: `score(pairs)` gives one readable score per (query, text) pair,
    higher is more relevant (a probability for models trained with a sigmoid)."""

    name: str
    path: Path
    source: str = ""
    trust_remote_code: bool = False
    device: str = ""
    max_tokens: int = 0  # padded tokens per batch [0: 2,048 on a CPU, 16,384 on a GPU]
    max_length: int | None = None  # tokens read of each pair [the model's own limit]
    loaded: Any = field(default=None, repr=False)

    kind = ""

    @property
    def fingerprint(self) -> str:
        """The model's identity: its kind and folder content."""
        from embed_collections.engine.models.folders import fingerprint_folder

        return f"{self.kind}-{fingerprint_folder(self.path)}"

    def describe(self) -> dict[str, Any]:
        """What a run record, `/healthz` and `eval` show of the reranker."""
        return {
            "kind": self.kind,
            "name": self.name,
            "path": str(self.path),
            "source": self.source,
            "device": self.device,
            "max_length": self.max_length,
        }

    def load(self, device: str = "") -> Reranker:
        raise NotImplementedError

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        raise NotImplementedError

    def unload(self) -> None:
        self.loaded = None
