"""Inference backends: load a resolved model on a device, count tokens, embed batches.

A backend only embeds what it is given; sorting, batching, OOM back-off and caching live once in
`embedding.py`.
"""

from __future__ import annotations

import hashlib
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


class TokenisedOnce:
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
