"""sentence-transformers `CrossEncoder` rerankers (MiniLM-L6 ms-marco, BGE rerankers, ...).

Pairs are tokenised once to count their tokens, sorted longest first and cut into batches by a
padded-token budget (as embedding batches are), so a long text does not pad every short one;
on a GPU the model runs in half precision.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from embed_collections.engine.backends.base import default_device
from embed_collections.engine.executors.batches import next_batch_end
from embed_collections.engine.models.remote_code import code_references, transformer_folder
from embed_collections.engine.rerankers.base import Reranker
from embed_collections.errors import ModelError, UsageError

log = logging.getLogger(__name__)

MAX_BATCH_PAIRS = 256
# Measured on 2 CPU cores (bench/README.md, "Reranking"): 20 pairs of 200-400 tokens took 0.75 s
# in batches of 2,048 padded tokens and 1.36 s in one batch padded to the longest pair.
CPU_BATCH_TOKENS = 2048
GPU_BATCH_TOKENS = 16384


class CrossEncoderReranker(Reranker):
    """A cross-encoder with one output logit, scored through its activation (sigmoid)."""

    kind = "cross-encoder"

    def check_folder(self) -> None:
        """Before loading: a ModelError for a folder that is not a cross-encoder (an embedding
        model would load with a random scoring head), a UsageError when it maps to its own code
        and the caller did not allow it."""
        folder = transformer_folder(self.path)
        try:
            raw = json.loads((folder / "config.json").read_text()) if folder else None
        except (OSError, ValueError):
            return  # loading reports an unreadable config with its own message
        if not isinstance(raw, dict):
            return
        architectures = [str(a) for a in raw.get("architectures") or []]
        if architectures and not any("ForSequenceClassification" in a for a in architectures):
            raise ModelError(
                f'Reranker "{self.name}" is not a cross-encoder (its config declares '
                f"{architectures[0]}, not a sequence classifier): point --rerank at a "
                "cross-encoder such as cross-encoder/ms-marco-MiniLM-L6-v2"
            )
        refs = code_references(raw.get("auto_map") or {})
        if refs and not self.trust_remote_code:
            raise UsageError(
                f'Reranker "{self.name}" runs its own code ({refs[0]}): pass '
                "--trust-remote-code if you trust the model"
            )

    def load(self, device: str = "") -> CrossEncoderReranker:
        """Load the model now (a ModelError naming the folder when it cannot be)."""
        if self.loaded is not None:
            return self
        self.check_folder()
        device = (device or self.device or default_device()).split(",")[0]
        device = "cpu" if device.startswith("cpu") else device
        try:
            from sentence_transformers import CrossEncoder

            model = CrossEncoder(
                str(self.path),
                device=device,
                trust_remote_code=self.trust_remote_code,
                local_files_only=True,
            )
        except Exception as error:  # transformers raises many unrelated types
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ModelError(
                f'Reranker "{self.name}" at {self.path} could not be loaded: {first[:300]} '
                "(point --rerank at a sentence-transformers CrossEncoder folder)"
            ) from error
        if getattr(model, "num_labels", 1) != 1:
            raise ModelError(
                f'Reranker "{self.name}" has {model.num_labels} output labels; a reranker '
                "scores relevance with one (choose a cross-encoder trained for reranking)"
            )
        if self.max_length:
            model.max_length = self.max_length
        self.max_length = int(model.max_length or 512)
        if device.startswith("cuda"):
            model.half()
        model.eval()
        self.loaded, self.device = model, device
        if not self.max_tokens:
            self.max_tokens = GPU_BATCH_TOKENS if device.startswith("cuda") else CPU_BATCH_TOKENS
        return self

    def token_counts(self, pairs: list[tuple[str, str]]) -> list[int]:
        tokenizer = self.loaded.tokenizer
        limit = int(self.loaded.max_length or 512)
        encoded = tokenizer(
            [q for q, _ in pairs],
            [t for _, t in pairs],
            truncation="longest_first",
            max_length=limit,
            return_length=True,
        )
        return [int(n) for n in encoded["length"]]

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """One score per pair, in the pairs' order (the model's sigmoid activation)."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        self.load()
        counts = self.token_counts(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -counts[i])
        ranked = [counts[i] for i in order]
        limit = int(self.loaded.max_length or 512)
        scores = np.zeros(len(pairs), dtype=np.float32)
        start = 0
        while start < len(order):
            end = next_batch_end(ranked, start, limit, self.max_tokens, MAX_BATCH_PAIRS)
            rows = order[start:end]
            found = self.loaded.predict(
                [pairs[i] for i in rows], batch_size=len(rows), show_progress_bar=False
            )
            scores[rows] = np.asarray(found, dtype=np.float32).reshape(len(rows))
            start = end
        return scores
