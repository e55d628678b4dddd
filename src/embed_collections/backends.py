"""Inference backends: load a resolved model on a device, count tokens, embed batches.

A backend only embeds what it is given; sorting, batching, OOM back-off and caching live once in
`embedding.py`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embed_collections.errors import ModelError
from embed_collections.models import ModelSpec, static_format

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


def gpu_driver_present() -> bool:
    """False only where CUDA surely cannot work: Linux without NVIDIA or ROCm device files."""
    if not sys.platform.startswith("linux"):
        return True  # no cheap test elsewhere: ask torch
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/kfd").exists()


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
    """fp16 on CUDA (about 3x fp32 there), fp32 on CPU (fp16 is slower on CPUs)."""
    return "float16" if device.startswith("cuda") else "float32"


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA (or other accelerator) out-of-memory error."""
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


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

    def load(self, device: str) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            import torch
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.utils.logging.disable_progress_bar()  # ours is the one progress bar

            dtype = self.dtype or default_dtype(device)
            self.model = SentenceTransformer(
                str(self.spec.path),
                device=device,
                trust_remote_code=self.spec.trust_remote_code,
                truncate_dim=self.spec.settings.truncate_dim,
                model_kwargs={dtype_keyword(): getattr(torch, dtype)},
                local_files_only=True,
            )
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

    def token_counts(self, texts: list[str]) -> list[int]:
        """Untruncated token counts (special tokens included), used to sort and to report cuts."""
        tokenizer = self.model.tokenizer
        encoded = tokenizer(
            texts, add_special_tokens=True, truncation=False, padding=False, verbose=False
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=len(texts),
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def unload(self) -> None:
        self.model = None


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
