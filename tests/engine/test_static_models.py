"""Static (token-bag) models: StaticEmbedding and model2vec folders load, embed every token, run
on torch under --backend auto, and appear in telemetry without a sequence limit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer

from embed_collections.engine.backends import create_backend
from embed_collections.engine.backends.choice import resolve_backend
from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.executors.local import embed_pending
from embed_collections.engine.models.folders import model_fingerprint
from embed_collections.engine.models.resolve import find_in_package, resolve_model
from embed_collections.engine.models.tiny import build_static_model, minilm_vocab_size
from embed_collections.engine.options import EngineOptions
from embed_collections.errors import UsageError

LONG_TEXT = "static embedding models read every token of a long chunk " * 40  # > 128 tokens


def tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(
        str(find_in_package("sentence-transformers/all-MiniLM-L6-v2") / "tokenizer.json")
    )
    tok.no_truncation()
    tok.no_padding()
    return tok


def mean_of_tokens(matrix: np.ndarray, text: str) -> np.ndarray:
    ids = tokenizer().encode(text, add_special_tokens=False).ids
    return matrix[ids].mean(axis=0)


@pytest.fixture(scope="module")
def static_model(tmp_path_factory):
    matrix = np.random.default_rng(3).standard_normal((minilm_vocab_size(), 24)).astype(np.float32)
    return build_static_model(tmp_path_factory.mktemp("static") / "static24", matrix), matrix


@pytest.fixture(scope="module")
def model2vec_model(tmp_path_factory):
    """A folder in model2vec's own format (no modules.json), written the way model2vec saves."""
    folder = tmp_path_factory.mktemp("m2v") / "m2v12"
    folder.mkdir()
    matrix = np.random.default_rng(4).standard_normal((minilm_vocab_size(), 12)).astype(np.float32)
    save_file({"embeddings": matrix}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps({"model_type": "model2vec", "hidden_dim": 12, "normalize": True})
    )
    tokenizer().save(str(folder / "tokenizer.json"))
    return folder, matrix


def test_static_folder_resolves_as_static_with_its_dimension(static_model, model2vec_model):
    spec = resolve_model(str(static_model[0]))
    assert spec.static and spec.dim == 24
    spec = resolve_model(str(model2vec_model[0]))
    assert spec.static and spec.dim == 12
    assert not resolve_model("minilm").static


def test_static_model_embeds_every_token_without_a_limit(static_model, tmp_path):
    folder, matrix = static_model
    spec = resolve_model(str(folder))
    options = EngineOptions(
        device="cpu", backend="torch", show_progress=False, lease_dir=tmp_path
    ).resolved()
    fingerprint = model_fingerprint(spec, options.backend, options.dtype)
    texts = {text_digest(t): t for t in ("short text", LONG_TEXT, "")}
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        telemetry = embed_pending(spec, fingerprint, texts, cache, options, [])
        vectors = cache.get_vectors(fingerprint, list(texts), 24)
        counts = cache.token_counts(fingerprint, list(texts))
    assert telemetry.backend == "torch" and telemetry.max_seq_length == 0
    assert telemetry.chunks_embedded == 3 and telemetry.truncated_chunks == 0
    long_tokens = len(tokenizer().encode(LONG_TEXT, add_special_tokens=False).ids)
    assert long_tokens > 300 and counts[text_digest(LONG_TEXT)] == long_tokens
    assert telemetry.tokens_embedded == sum(counts.values())
    np.testing.assert_allclose(vectors[1], mean_of_tokens(matrix, LONG_TEXT), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        vectors[0], mean_of_tokens(matrix, "short text"), rtol=1e-4, atol=1e-5
    )
    assert np.all(vectors[2] == 0)  # an empty text has no tokens: a zero vector


def test_static_model_honours_an_explicit_max_seq_length(static_model):
    folder, matrix = static_model
    spec = resolve_model(str(folder), max_seq_length=8)
    backend = create_backend(spec, "torch")
    backend.load("cpu")
    vectors, counts = backend.embed_with_counts([LONG_TEXT])
    ids = tokenizer().encode(LONG_TEXT, add_special_tokens=False).ids
    assert counts == [len(ids)]
    np.testing.assert_allclose(vectors[0], matrix[ids[:8]].mean(axis=0), rtol=1e-4, atol=1e-5)


def test_model2vec_folder_loads_without_model2vec(model2vec_model):
    folder, matrix = model2vec_model
    backend = create_backend(resolve_model(str(folder)), "torch")
    backend.load("cpu")
    vector = backend.embed([LONG_TEXT])[0]
    expected = mean_of_tokens(matrix, LONG_TEXT)
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-5)


def test_cpu_runtimes_refuse_static_models_and_auto_uses_torch(static_model):
    spec = resolve_model(str(static_model[0]))
    assert resolve_backend(spec, "auto", "cpu") == "torch"
    with pytest.raises(UsageError, match=r"static24\" is a static embedding model; --backend onnx"):
        resolve_backend(spec, "onnx", "cpu")
