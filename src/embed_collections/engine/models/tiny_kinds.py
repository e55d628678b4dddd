"""Tiny random models of the other kinds, built offline in a second: a cross-encoder reranker
(`BertForSequenceClassification`, one label) and a SPLADE-style sparse encoder (`BertForMaskedLM`
under sentence-transformers' masked-LM module and `SpladePooling`), both with MiniLM's tokenizer,
so tests and benchmarks go through the loading code real models use."""

from __future__ import annotations

import shutil
from pathlib import Path

from embed_collections.engine.models.tiny import tiny_tokenizer


def bert_config(hidden_size: int, layers: int, heads: int, **extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden_size * 4 if hidden_size >= 256 else hidden_size * 2,
        max_position_embeddings=512,
        **extra,
    )


def build_tiny_cross_encoder(
    folder: Path, hidden_size: int = 32, seed: int = 0, layers: int = 2, heads: int = 4
) -> Path:
    """Save a random one-logit BERT cross-encoder folder (6 x 384, 12 heads: MiniLM-L6's shape)."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    config = bert_config(hidden_size, layers, heads, num_labels=1)
    config.sentence_transformers = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    BertForSequenceClassification(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def build_tiny_splade(
    folder: Path, hidden_size: int = 32, seed: int = 0, layers: int = 2, max_active_dims: int = 64
) -> Path:
    """Save a random masked-LM BERT as a sentence-transformers `SparseEncoder` (SPLADE pooling);
    `max_active_dims` keeps each vector's largest terms (a random model activates them all)."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    mlm_dir = folder / "_mlm"
    BertForMaskedLM(bert_config(hidden_size, layers, 4)).save_pretrained(mlm_dir)
    tiny_tokenizer().save_pretrained(mlm_dir)
    transformer = Transformer(str(mlm_dir), transformer_task="fill-mask", max_seq_length=128)
    model = SparseEncoder(
        modules=[transformer, SpladePooling("max")], device="cpu", max_active_dims=max_active_dims
    )
    model.save(str(folder))
    shutil.rmtree(mlm_dir)  # the saved model holds its own copy
    return folder
