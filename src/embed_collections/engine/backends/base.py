"""What every backend shares: the `Backend` base class, batches, tokenising once, devices'
default precision and out-of-memory detection.

A backend only embeds what it is given; sorting, batching, OOM back-off and caching live once in
`engine/executors/batches.py`."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embed_collections.engine.devices import gpu_driver_present, supports_bfloat16

log = logging.getLogger(__name__)


class Backend:
    """A model loaded on a device. A backend implements `load`, `token_counts`, `embed` and
    `unload`; what the batch loop can also ask of it are methods with defaults here, so a new
    backend overrides only the abilities it has (`engine/executors/batches.py` calls them all).
    """

    name: str = ""
    dim: int = 0
    max_seq_length: int = 0  # tokens embedded of a text; 0: no limit (static models)
    token_bag: bool = False  # no sorting, no padding: `embed_with_counts` on large batches

    def load(self, device: str) -> None:
        raise NotImplementedError

    def token_counts(self, texts: list[str]) -> list[int]:
        """Untruncated token counts (special tokens included): they sort texts and report cuts."""
        raise NotImplementedError

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 vectors of texts, one forward pass."""
        raise NotImplementedError

    def unload(self) -> None:
        """Let go of the model (its memory, kept token ids)."""

    def tokenize(self, texts: list[str]) -> Batch:
        """A batch prepared for `forward`, possibly on another thread; by default nothing is
        prepared and `forward` embeds the texts."""
        return Batch(texts)

    def forward(self, batch: Batch) -> np.ndarray:
        """Vectors of a prepared batch."""
        return self.embed(batch.texts)

    def embed_float32(self, texts: list[str]) -> np.ndarray:
        """The re-run for a batch with non-finite vectors, in float32 where the model runs in
        half precision; the same `embed` otherwise."""
        return self.embed(texts)

    def hold(self, texts: list[str], rows: list[Row], tag: str) -> None:
        """Ids tokenised elsewhere (a workers' parent), kept if this backend can use them."""

    def embed_with_counts(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors and untruncated token counts together (one tokenisation for token bags)."""
        return self.embed(texts), self.token_counts(texts)


def default_device() -> str:
    """cuda when a GPU is usable, else cpu; torch (seconds to import) only asked on GPU hosts."""
    if not gpu_driver_present():
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def default_dtype(device: str) -> str:
    """bf16 on GPUs that have it, fp16 on older GPUs (T4, V100), fp32 on CPU.

    On Ampere and newer, bf16 and fp16 run at the same tensor-core rate; bf16 keeps fp32's
    exponent range, so long texts cannot overflow to Inf as they can in fp16. CPUs without AMX
    run both half types slower than fp32.
    """
    if not device.startswith("cuda"):
        return "float32"
    return "bfloat16" if supports_bfloat16(device) else "float16"


_ALLOCATION_FAILURES = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cuda error: out of memory",
    "failed to allocate",
)


def is_out_of_memory(error: BaseException) -> bool:
    """True for an accelerator allocation failure: torch's OOM type, or cuBLAS/cuDNN ones."""
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(m in text for m in _ALLOCATION_FAILURES)


def attention_implementation(device: str) -> str:
    """flash_attention_2 where installed on compute capability >= 8.0, else PyTorch's SDPA."""
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        import torch

        if torch.cuda.get_device_capability(device)[0] >= 8:
            return "flash_attention_2"
    return "sdpa"


@dataclass
class Batch:
    """Texts and their tokenised features, prepared (possibly on another thread) for `forward`."""

    texts: list[str]
    features: Any = None


Row = tuple[np.ndarray, np.ndarray | None]  # a text's truncated ids and type ids (None: all 0)


class CountingTokenizer:
    """A fast tokenizer (the `tokenizers` library) used once per text: the untruncated count that
    sorts it and its ids truncated the tokenizer's own way, from the same encoding. `tag` names
    the tokenizer, limit and casing, so ids made elsewhere are taken only by an equal tokenizer."""

    def __init__(self, tokenizer: Any, max_seq_length: int, lower: bool = False):
        from tokenizers import Tokenizer

        # Copies: a tokenizer's own settings may pad and truncate (to 128 in MiniLM's file).
        text = tokenizer.to_str()
        self.counter, self.truncator = Tokenizer.from_str(text), Tokenizer.from_str(text)
        self.counter.no_truncation()
        self.counter.no_padding()
        self.truncator.enable_truncation(max_seq_length)
        self.truncator.no_padding()  # `pad_rows` pads a batch
        self.specials = self.truncator.num_special_tokens_to_add(False)
        self.lower = lower
        # Kept ids are held for a whole wave of texts: 2 bytes a token where the vocabulary fits.
        self.id_type = np.uint16 if self.truncator.get_vocab_size() <= 2**16 else np.int32
        key = f"{self.counter.to_str()}\0{max_seq_length}\0{lower}".encode()
        self.tag = hashlib.sha256(key).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: Path, max_seq_length: int, lower: bool = False) -> CountingTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), max_seq_length, lower)

    def tokenise(self, texts: list[str]) -> tuple[list[int], list[Row]]:
        """Untruncated counts (special tokens included), and ids and type ids truncated with
        special tokens added (equal to the tokenizer's own truncation of the whole text, tested)."""
        texts = [text.lower() for text in texts] if self.lower else texts
        encodings = self.counter.encode_batch(texts, add_special_tokens=False)
        counts = [len(e.ids) + self.specials for e in encodings]
        done = [self.truncator.post_process(e) for e in encodings]
        types = [np.array(e.type_ids, np.int8) if any(e.type_ids) else None for e in done]
        return counts, [(np.array(e.ids, self.id_type), t) for e, t in zip(done, types)]


def pad_rows(rows: list[Row], pad_id: int, pad_type_id: int, left: bool) -> dict[str, np.ndarray]:
    """A batch's input ids, type ids and attention mask (int64), padded to its longest row."""
    width = max(len(ids) for ids, _ in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    types = np.full((len(rows), width), pad_type_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (row_ids, row_types) in enumerate(rows):
        place = slice(width - len(row_ids), None) if left else slice(0, len(row_ids))
        ids[i, place], mask[i, place] = row_ids, 1
        types[i, place] = 0 if row_types is None else row_types
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


class TokenisedOnce(Backend):
    """Texts tokenised once: the counting pass (or a workers' parent, through `hold`) keeps each
    text's truncated ids until its batch takes them; texts never counted are tokenised there.
    Without a `counter` (a tokenizer whose output could not be reproduced), nothing is kept."""

    counter: CountingTokenizer | None = None
    tokenised: dict[str, Row]

    def count_and_keep(self, texts: list[str]) -> list[int]:
        """Untruncated token counts; each text's ids kept for its batch."""
        assert self.counter is not None
        counts, rows = self.counter.tokenise(texts)
        self.tokenised.update(zip(texts, rows))
        return counts

    def hold(self, texts: list[str], rows: list[Row], tag: str) -> None:
        """Keep ids tokenised elsewhere, if by an equal tokenizer (else they are tokenised here)."""
        if self.counter is not None and tag == self.counter.tag:
            self.tokenised.update(zip(texts, rows))

    def rows(self, texts: list[str]) -> list[Row]:
        """The batch's ids: those kept (taken), the others tokenised now."""
        assert self.counter is not None
        held = [self.tokenised.pop(text, None) for text in texts]
        fresh = iter(self.counter.tokenise([t for t, row in zip(texts, held) if row is None])[1])
        return [row if row is not None else next(fresh) for row in held]
