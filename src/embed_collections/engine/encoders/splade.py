"""Learned sparse vectors (SPLADE-style): a sentence-transformers `SparseEncoder` model encodes
documents and queries into vocabulary-sized vectors with few active terms, stored in the same
named sparse vector as BM25 but without the store's IDF modifier (the model weighs its terms)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embed_collections.engine.backends.base import default_device
from embed_collections.engine.encoders.bm25 import SparseEncoder
from embed_collections.engine.models.folders import fingerprint_folder
from embed_collections.engine.models.resolve import locate_model
from embed_collections.errors import ModelError, UsageError

KIND = "splade"
BATCH_TEXTS = 32
MAX_ACTIVE_DIMS = 1024  # terms kept per vector unless the model sets its own (trained: ~50-300)


def is_sparse_encoder_folder(path: Path) -> bool:
    """Whether a folder is a sentence-transformers SparseEncoder (its modules say SPLADE
    pooling or a sparse module, or its config names the model type)."""
    config = path / "config_sentence_transformers.json"
    try:
        if config.is_file() and json.loads(config.read_text()).get("model_type") == "SparseEncoder":
            return True
        modules = json.loads((path / "modules.json").read_text())
    except (OSError, ValueError, AttributeError):
        return False
    return any("sparse_encoder" in str(module.get("type", "")) for module in modules)


@dataclass
class SpladeEncoder(SparseEncoder):
    """A SparseEncoder model; its folder's content keys the cache like a dense model's."""

    model_name: str = ""
    path: str = ""
    idf = False

    def __post_init__(self) -> None:
        self.loaded: Any = None
        self._fingerprint = ""

    @property
    def fingerprint(self) -> str:
        if not self._fingerprint:
            content = fingerprint_folder(Path(self.path))
            settings = {"kind": KIND, "content": content, "max_active_dims": MAX_ACTIVE_DIMS}
            digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
            self._fingerprint = "sparse-" + digest
        return self._fingerprint

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model_name, "path": self.path}

    def load(self) -> Any:
        if self.loaded is None:
            try:
                from sentence_transformers import SparseEncoder as STSparseEncoder

                self.loaded = STSparseEncoder(
                    self.path, device=default_device(), local_files_only=True
                )
            except Exception as error:  # transformers raises many unrelated types
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise ModelError(
                    f'Sparse model "{self.model_name}" at {self.path} could not be loaded: '
                    f"{first[:300]} (point --sparse at a sentence-transformers SparseEncoder "
                    "folder, or use bm25)"
                ) from error
        return self.loaded

    def encode(self, texts: list[str], query: bool) -> list[tuple[list[int], list[float]]]:
        model = self.load()
        encode = model.encode_query if query else model.encode_document
        dims = getattr(model, "max_active_dims", None) or MAX_ACTIVE_DIMS
        vectors = []
        for start in range(0, len(texts), BATCH_TEXTS):
            found = encode(
                texts[start : start + BATCH_TEXTS],
                batch_size=BATCH_TEXTS,
                max_active_dims=dims,
                convert_to_sparse_tensor=True,
                show_progress_bar=False,
            )
            for row in found.cpu().coalesce() if found.is_sparse else found.cpu():
                row = row.coalesce() if row.is_sparse else row.to_sparse().coalesce()
                indices = row.indices()[0].tolist()
                values = row.values().float().tolist()
                vectors.append((indices, values))
        return vectors

    def embed_documents(self, texts: list[str]) -> list[tuple[list[int], list[float]]]:
        return self.encode(texts, query=False)

    def embed_document(self, text: str) -> tuple[list[int], list[float]]:
        return self.encode([text], query=False)[0]

    def embed_query(self, text: str) -> tuple[list[int], list[float]]:
        return self.encode([text], query=True)[0]


def create_splade(
    name: str, language: str, k: float, b: float, avg_len: float, path: str = ""
) -> SpladeEncoder:
    """A SPLADE encoder for a model name or folder (its recorded `path` first, if still there)."""
    if path and Path(path).is_dir():
        folder = Path(path)
    else:
        try:
            folder = locate_model(name, None)[0]
        except ModelError as error:
            raise UsageError(
                f'--sparse "{name}" is neither bm25 nor a SparseEncoder model that can be found '
                f"({error})"
            ) from error
    if not is_sparse_encoder_folder(folder):
        raise UsageError(
            f'--sparse "{name}" is neither bm25 nor a sentence-transformers SparseEncoder '
            f"model ({folder} has no SPLADE pooling): use --sparse bm25, or a SPLADE model folder"
        )
    return SpladeEncoder(KIND, language, k, b, avg_len, model_name=name, path=str(folder))
