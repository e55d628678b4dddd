"""Static (token-bag) models: sentence-transformers `StaticEmbedding` and model2vec folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embed_collections.engine.backends.transformer import SentenceTransformerBackend
from embed_collections.engine.models.folders import static_format
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.errors import ModelError


class StaticBackend(SentenceTransformerBackend):
    """A static (token-bag) model: `StaticEmbedding` folders and model2vec folders.

    Such a model averages one vector per token, so it has no sequence limit (sentence-transformers
    reports an infinite `max_seq_length`), no padding and nothing to gain from sorting: the engine
    embeds pending texts in their order, in large batches, tokenising each text once
    (`embed_with_counts`). The tokenizer's own truncation is switched off (MiniLM's tokenizer.json,
    which distilled models inherit, cuts at 128 tokens); `--max-seq-length` still applies.
    `max_seq_length` is 0 here, meaning no limit, unless one was set.
    """

    token_bag = True

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
