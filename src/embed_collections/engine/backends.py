"""Inference backends: load a resolved model on a device, count tokens, embed batches.

A backend only embeds what it is given; sorting, batching, OOM back-off and caching live once in
`embedding.py`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embed_collections.engine.devices import gpu_driver_present, supports_bfloat16
from embed_collections.engine.models import ModelSpec, static_format
from embed_collections.errors import ModelError

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What the scheduler needs from a loaded model."""

    name: str
    dim: int
    max_seq_length: int

    def load(self, device: str) -> None: ...

    def token_counts(self, texts: list[str]) -> list[int]: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def unload(self) -> None: ...


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


def dtype_keyword() -> str:
    """transformers renamed `torch_dtype` to `dtype` in 4.56; support both release lines."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class SentenceTransformerBackend:
    """The reference backend: sentence-transformers on torch."""

    def __init__(self, spec: ModelSpec, dtype: str | None = None):
        self.spec = spec
        self.name = spec.name
        self.dtype = dtype
        self.model: Any = None
        self.dim = spec.dim or 0
        self.max_seq_length = spec.settings.max_seq_length or 512
        self.device = "cpu"

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
        """Untruncated token counts (special tokens included), used to sort and to report cuts."""
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

        prepare = getattr(self.model, "preprocess", None) or self.model.tokenize
        features = dict(prepare(texts))
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


def restore_attention(name: str, first: Any, inner: Any, attention: str, unpad: Any) -> None:
    """Back to flash-attention and unpadded inputs after a float32 re-run; where that fails,
    SDPA with padded inputs stays (correct in half precision too, only slower)."""
    try:
        inner.set_attn_implementation(attention)
        first.unpad_inputs = unpad
    except (ImportError, ValueError, RuntimeError) as error:
        log.warning("%s: stays on SDPA attention after a float32 re-run (%s)", name, error)


class StaticBackend(SentenceTransformerBackend):
    """A static (token-bag) model: `StaticEmbedding` folders and model2vec folders.

    Such a model averages one vector per token, so it has no sequence limit (sentence-transformers
    reports an infinite `max_seq_length`), no padding and nothing to gain from sorting: the engine
    embeds pending texts in their order, in large batches, tokenising each text once
    (`embed_with_counts`). The tokenizer's own truncation is switched off (MiniLM's tokenizer.json,
    which distilled models inherit, cuts at 128 tokens); `--max-seq-length` still applies.
    `max_seq_length` is 0 here, meaning no limit, unless one was set.
    """

    def __init__(self, spec: ModelSpec, dtype: str | None = None):
        super().__init__(spec, dtype)
        self.max_seq_length = spec.settings.max_seq_length or 0

    def load(self, device: str) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer

            if static_format(self.spec.path) == "model2vec":
                self.model = SentenceTransformer(
                    modules=load_model2vec_modules(self.spec.path), device=device
                )
            else:
                self.model = SentenceTransformer(
                    str(self.spec.path), device=device, local_files_only=True
                )
            self.model.to(getattr(torch, self.dtype or "float32"))
        except Exception as error:  # loading raises anything from OSError to ValueError
            raise ModelError(
                f'Model "{self.name}" could not be loaded from {self.spec.path}: '
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from error
        self.tokenizer = self.model[0].tokenizer
        self.tokenizer.no_truncation()
        self.dim = int(self.model[0].embedding_dim)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Token counts as the model reads them (a static model adds no special tokens)."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_with_counts(texts)[0]

    def embed_with_counts(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Vectors and untruncated token counts from one tokenisation of the texts."""
        import torch

        ids = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        counts = [len(row) for row in ids]
        if self.max_seq_length:
            ids = [row[: self.max_seq_length] for row in ids]
        offsets = np.cumsum([0] + [len(row) for row in ids[:-1]])
        features = {
            "input_ids": torch.tensor([t for row in ids for t in row], dtype=torch.long),
            "offsets": torch.from_numpy(offsets),
        }
        device = self.model.device
        with torch.inference_mode():
            output = self.model({k: v.to(device) for k, v in features.items()})
        vectors = output["sentence_embedding"].float().cpu().numpy()
        return np.asarray(vectors, dtype=np.float32), counts


def load_model2vec_modules(path: Path) -> list[Any]:
    """A model2vec folder as sentence-transformers modules (StaticEmbedding, + Normalize if the
    folder's config asks for it), without the model2vec package."""
    import json

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    except ImportError:  # sentence-transformers 5.x
        from sentence_transformers.models import Normalize, StaticEmbedding  # type: ignore

    modules: list[Any] = [StaticEmbedding.load(str(path), local_files_only=True)]
    config = json.loads((path / "config.json").read_text())
    if config.get("normalize"):
        modules.append(Normalize())
    return modules
