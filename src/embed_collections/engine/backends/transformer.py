"""The reference backend: sentence-transformers on torch."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from embed_collections.engine.backends.base import (
    Batch,
    CountingTokenizer,
    TokenisedOnce,
    attention_implementation,
    default_dtype,
    pad_rows,
)
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.errors import ModelError

log = logging.getLogger(__name__)


def dtype_keyword() -> str:
    """transformers renamed `torch_dtype` to `dtype` in 4.56; support both release lines."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


PROBE_TEXTS = (  # where a tokenizer's own preprocessing could differ from `CountingTokenizer`
    "Docling converts PDF files to Markdown.",
    "  Leading and trailing spaces, MiXeD CaSe  ",
    "Ünïcödé, emoji 🚀 and CJK 向量检索\ttabs\nand lines",
    "word " * 600,  # longer than any window: the truncation
    "x",
)


class SentenceTransformerBackend(TokenisedOnce):
    """The reference backend: sentence-transformers on torch. Each text is tokenised once where
    the model's tokenizer reproduces its own preprocessing (`verified_counter`)."""

    def __init__(self, spec: ModelSpec, dtype: str | None = None):
        self.spec = spec
        self.name = spec.name
        self.dtype = dtype
        self.model: Any = None
        self.dim = spec.dim or 0
        self.max_seq_length = spec.settings.max_seq_length or 512
        self.device = "cpu"
        self.tokenised = {}
        self.names: set[str] = set()  # a batch's tensors (input_ids, attention_mask, ...)
        self.extras: dict[str, Any] = {}  # and its other features (`modality`: text)

    def load(self, device: str) -> None:
        # On a GPU the tokenizer's own threads feed the device; on CPU they would compete with
        # the forward pass for the same cores.
        parallel = "true" if device.startswith("cuda") else "false"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", parallel)
        try:
            import torch
            import transformers

            transformers.utils.logging.disable_progress_bar()  # ours is the one progress bar

            dtype = self.dtype or default_dtype(device)
            self.device = device
            kwargs: dict[str, Any] = {dtype_keyword(): getattr(torch, dtype)}
            attention = attention_implementation(device)
            if attention == "flash_attention_2" and dtype == "float32":
                attention = "sdpa"  # flash-attention runs only in half precision
            try:
                self.model = self.open(device, {**kwargs, "attn_implementation": attention})
            except (ValueError, ImportError) as error:
                # Architectures without SDPA (some remote-code models) refuse the keyword.
                log.debug("%s: %s attention refused (%s)", self.name, attention, error)
                self.model = self.open(device, kwargs)
        except Exception as error:  # loading raises anything from OSError to ValueError
            raise ModelError(
                f'Model "{self.name}" could not be loaded from {self.spec.path}: '
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from error
        if self.spec.settings.max_seq_length:
            self.model.max_seq_length = self.spec.settings.max_seq_length
        self.max_seq_length = int(self.model.max_seq_length or self.max_seq_length)
        dimension = getattr(self.model, "get_embedding_dimension", None)
        dimension = dimension or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.counter = self.verified_counter()

    def verified_counter(self) -> CountingTokenizer | None:
        """A `CountingTokenizer` of the model's tokenizer whose padded batch of PROBE_TEXTS equals
        the model's own preprocessing of them, tensor for tensor; else None, and every batch is
        tokenised again by the model (after the counting pass)."""
        import torch

        first = self.model[0]
        fast = getattr(getattr(first, "tokenizer", None), "backend_tokenizer", None)
        if fast is None:
            return None
        try:
            lower = bool(getattr(first, "do_lower_case", False))
            counter = CountingTokenizer(fast, self.max_seq_length, lower)
            expected = self.preprocess(list(PROBE_TEXTS))
            self.extras = {k: v for k, v in expected.items() if not isinstance(v, torch.Tensor)}
            self.names = set(expected) - set(self.extras)
            mine = self.padded(counter.tokenise(list(PROBE_TEXTS))[1])
            same = expected.keys() == mine.keys() and all(
                v == mine[k] if k in self.extras else torch.equal(v, mine[k])
                for k, v in expected.items()
            )
        except Exception as error:  # any surprise in a tokenizer: keep the model's own path
            log.debug("%s: tokenised per batch (%s)", self.name, error)
            return None
        log.debug("%s: %s", self.name, "tokenised once" if same else "tokenised per batch")
        return counter if same else None

    def preprocess(self, texts: list[str]) -> dict[str, Any]:
        """The model's own tokenisation of a batch (sentence-transformers 6, else 5)."""
        prepare = getattr(self.model, "preprocess", None) or self.model.tokenize
        return dict(prepare(texts))

    def padded(self, rows: list) -> dict[str, Any]:
        """A batch's features from kept ids: the tensors the model's preprocessing gives, padded
        its way, with its non-tensor entries."""
        import torch

        tokenizer = self.model[0].tokenizer
        arrays = pad_rows(
            rows, int(tokenizer.pad_token_id or 0),
            int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
            getattr(tokenizer, "padding_side", "right") == "left",
        )  # fmt: skip
        features = {k: torch.from_numpy(v) for k, v in arrays.items() if k in self.names}
        return {**features, **self.extras}

    def open(self, device: str, model_kwargs: dict[str, Any]) -> Any:
        """The SentenceTransformer on `device`, offline, remote code from the model's code cache."""
        from sentence_transformers import SentenceTransformer

        cache = self.spec.code_cache_dir
        return SentenceTransformer(
            str(self.spec.path),
            device=device,
            trust_remote_code=self.spec.trust_remote_code,
            truncate_dim=self.spec.settings.truncate_dim,
            model_kwargs=model_kwargs,
            cache_folder=str(cache) if cache else None,
            local_files_only=True,
        )

    def token_counts(self, texts: list[str]) -> list[int]:
        """Untruncated token counts (special tokens included), used to sort and to report cuts;
        with a verified counter each text's ids are kept for its batch."""
        if self.counter is not None:
            return self.count_and_keep(texts)
        tokenizer = self.model.tokenizer
        encoded = tokenizer(
            texts, add_special_tokens=True, truncation=False, padding=False, verbose=False
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def tokenize(self, texts: list[str]) -> Batch:
        """Tokenise a batch (thread-safe: the engine prefetches the next batch on a thread).

        sentence-transformers 6's `preprocess` also returns non-tensor entries (`modality`),
        which stay as they are; tensors are pinned on CUDA so the copy can overlap compute.
        """
        import torch

        if self.counter is not None:
            features = self.padded(self.rows(texts))
        else:
            features = self.preprocess(texts)
        if self.device.startswith("cuda"):
            for key, value in features.items():
                if isinstance(value, torch.Tensor):
                    features[key] = value.pin_memory()
        return Batch(texts, features)

    def forward(self, batch: Batch) -> np.ndarray:
        """Embed a tokenised batch: non-blocking copy in, forward pass, float32 vectors out."""
        import torch

        features = {
            key: value.to(self.device, non_blocking=True)
            if isinstance(value, torch.Tensor)
            else value
            for key, value in batch.features.items()
        }
        with torch.inference_mode():
            vectors = self.model(features)["sentence_embedding"]
            if self.spec.settings.truncate_dim:
                vectors = vectors[:, : self.spec.settings.truncate_dim]
            return vectors.float().cpu().numpy()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed texts in one forward pass."""
        return self.forward(self.tokenize(texts))

    def embed_float32(self, texts: list[str]) -> np.ndarray:
        """Embed texts with the model temporarily in float32 (the re-run for non-finite vectors).

        Flash-attention runs only in half precision, and with it sentence-transformers feeds
        unpadded (flattened) sequences, which SDPA would mix: the re-run switches the attention
        to SDPA and the inputs to padded ones, and back afterwards.
        """
        import torch

        dtype = next(self.model.parameters()).dtype
        if dtype == torch.float32:
            return self.embed(texts)
        first = self.model[0]
        inner: Any = getattr(first, "model", None) or getattr(first, "auto_model", None)
        attention = str(getattr(getattr(inner, "config", None), "_attn_implementation", "") or "")
        flash = "flash" in attention
        unpad = getattr(first, "unpad_inputs", None)
        self.model.float()
        try:
            if flash:
                inner.set_attn_implementation("sdpa")
                first.unpad_inputs = False
            return self.embed(texts)
        finally:
            self.model.to(dtype)
            if flash:
                restore_attention(self.name, first, inner, attention, unpad)

    def unload(self) -> None:
        self.model = None
        self.tokenised.clear()


def restore_attention(name: str, first: Any, inner: Any, attention: str, unpad: Any) -> None:
    """Back to flash-attention and unpadded inputs after a float32 re-run; where that fails,
    SDPA with padded inputs stays (correct in half precision too, only slower)."""
    try:
        inner.set_attn_implementation(attention)
        first.unpad_inputs = unpad
    except (ImportError, ValueError, RuntimeError) as error:
        log.warning("%s: stays on SDPA attention after a float32 re-run (%s)", name, error)
