"""How many tokens a chunk may have: every model's window, less its document prefix and special
tokens, counted by that model's own tokenizer (the engine's `CountingTokenizer`, untruncated).

Read from the model folder alone (`tokenizer.json`, `sentence_bert_config.json`): sizing a
corpus never loads torch or a model's weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embed_collections.engine import CountingTokenizer, ModelSpec
from embed_collections.errors import ModelError, UsageError

DEFAULT_CHUNK_SIZE = 256  # tokens; the window of the tightest model wins when it is smaller
DEFAULT_OVERLAP = 0
# A tokenizer's own `model_max_length` is a huge sentinel when a model declares none.
UNSET_LIMIT = 1_000_000
FALLBACK_LIMIT = 512


@dataclass(frozen=True)
class ModelBudget:
    """One model's tokenizer and the tokens a chunk's text may take in its window."""

    name: str
    tokenizer: CountingTokenizer
    limit: int  # the model's window, special tokens and prefix included
    prefix: str
    room: int  # tokens left for a chunk's own text (an estimate; `count` is what is checked)

    def count(self, texts: list[str]) -> list[int]:
        """Tokens each text takes as the model reads it: prefix, text and special tokens
        (`CountingTokenizer.tokenise`'s counts, without building the truncated ids)."""
        inputs = [self.prefix + text for text in texts]
        if self.tokenizer.lower:
            inputs = [text.lower() for text in inputs]
        encodings = self.tokenizer.counter.encode_batch(inputs, add_special_tokens=False)
        return [len(e.ids) + self.tokenizer.specials for e in encodings]


@dataclass(frozen=True)
class Sizing:
    """The budgets of every model, the target size and the overlap, in tokens."""

    budgets: tuple[ModelBudget, ...]
    chunk_size: int
    overlap: int

    @property
    def capacity(self) -> int:
        """The most tokens a chunk aims at: the target, or less where a window is smaller."""
        return max(1, min([self.chunk_size, *(b.room for b in self.budgets)]))

    def fits(self, texts: list[str]) -> list[bool]:
        """Whether each text fits every model's window with that model's prefix."""
        fit = [True] * len(texts)
        for budget in self.budgets:
            for index, count in enumerate(budget.count(texts)):
                fit[index] = fit[index] and count <= budget.limit
        return fit

    def counts(self, texts: list[str]) -> list[dict[str, int]]:
        """Each text's tokens per model, prefix and special tokens included."""
        per_model = {b.name: b.count(texts) for b in self.budgets}
        return [{name: counts[i] for name, counts in per_model.items()} for i in range(len(texts))]

    def describe(self) -> dict[str, Any]:
        return {
            "chunk_size": self.chunk_size,
            "overlap": self.overlap,
            "capacity": self.capacity,
            "models": {b.name: {"limit": b.limit, "room": b.room} for b in self.budgets},
        }


def build_sizing(
    specs: list[ModelSpec], chunk_size: int | None = None, overlap: int | None = None
) -> Sizing:
    """The sizing for these resolved models; chunk_size/overlap in tokens (None: defaults)."""
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    overlap = DEFAULT_OVERLAP if overlap is None else overlap
    if chunk_size < 8:
        raise UsageError(f"--chunk-size {chunk_size} is too small; give 8 tokens or more")
    if not 0 <= overlap < chunk_size:
        raise UsageError(
            f"--chunk-overlap {overlap} must be 0 or more and less than --chunk-size {chunk_size}"
        )
    budgets = tuple(model_budget(spec) for spec in specs)
    sizing = Sizing(budgets, chunk_size, overlap)
    for budget in budgets:
        if budget.room < 8:
            raise UsageError(
                f'Model "{budget.name}" leaves {budget.room} tokens of its {budget.limit}-token '
                "window after its document prefix; shorten the prefix or raise --max-seq-length"
            )
    return sizing


def model_budget(spec: ModelSpec) -> ModelBudget:
    """A model's tokenizer (from `tokenizer.json`) and window, as the engine will embed it."""
    path = Path(spec.path)
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.exists():  # a static model keeps it in its module's folder
        tokenizer_file = next(iter(sorted(path.glob("*/tokenizer.json"))), tokenizer_file)
    if not tokenizer_file.exists():
        raise ModelError(
            f'Cannot size chunks for model "{spec.name}": no tokenizer.json in {path} '
            "(a fast tokenizer is needed; save one with the model's tokenizer.save_pretrained)"
        )
    config = _read_json(path / "sentence_bert_config.json")
    tokenizer_config = _read_json(path / "tokenizer_config.json")
    limit = spec.settings.max_seq_length or config.get("max_seq_length")
    if not limit:
        declared = tokenizer_config.get("model_max_length")
        limit = declared if isinstance(declared, int) and declared < UNSET_LIMIT else None
    # a static model reads any length: only the target size bounds its chunks
    limit = UNSET_LIMIT if spec.static else int(limit or FALLBACK_LIMIT)
    lower = bool(config.get("do_lower_case", False))
    try:
        tokenizer = CountingTokenizer.from_file(tokenizer_file, limit, lower)
    except Exception as exc:  # the tokenizers library raises its own Exception type
        raise ModelError(f'Cannot read {tokenizer_file} of model "{spec.name}": {exc}') from exc
    prefix = spec.settings.document_prefix
    room = (
        limit
        - tokenizer.specials
        - len(tokenizer.counter.encode(prefix, add_special_tokens=False).ids)
    )
    return ModelBudget(spec.name, tokenizer, limit, prefix, room)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
