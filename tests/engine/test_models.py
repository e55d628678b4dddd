"""Model resolution: local folders, caches, packaged copies, and the errors for everything else."""

import shutil

import pytest

from embed_collections.engine.models.resolve import resolve_ensemble, resolve_model
from embed_collections.engine.models.specs import BGE_QUERY_INSTRUCTION, KNOWN_SETTINGS
from embed_collections.errors import ModelError, UsageError


def test_packaged_minilm_resolves_by_hub_id_and_alias(minilm_dir):
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "minilm"):
        spec = resolve_model(name)
        assert spec.name == "sentence-transformers/all-MiniLM-L6-v2"
        assert spec.source.startswith("package")
        assert spec.path == minilm_dir
        assert spec.dim == 384
        assert spec.settings.max_seq_length == 256


def test_local_folder_reads_dimension_without_loading(tiny_models):
    spec = resolve_model(str(tiny_models["tiny48"]))
    assert spec.source == "local folder"
    assert spec.dim == 48
    assert spec.slug == "tiny48"


def test_hf_cache_layout_is_found_with_its_revision(tmp_path, tiny_models):
    repo = tmp_path / "models--acme--tiny"
    shutil.copytree(tiny_models["tiny32"], repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    spec = resolve_model("acme/tiny", model_cache_dir=tmp_path)
    assert spec.revision == "abc123"
    assert spec.path == repo / "snapshots" / "abc123"
    assert spec.dim == 32


def test_unresolvable_model_names_the_model_and_the_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as error:
        resolve_model("acme/does-not-exist", model_cache_dir=tmp_path)
    message = str(error.value)
    assert '"acme/does-not-exist"' in message
    assert "--model-cache-dir" in message and "HF_HUB_OFFLINE" in message


def test_missing_local_folder_is_a_model_error():
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("./no/such/folder")


def test_folder_without_model_files_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="no modules.json"):
        resolve_model(str(tmp_path))


def test_remote_code_model_needs_explicit_consent():
    with pytest.raises(ModelError, match="--trust-remote-code"):
        resolve_model("nomic-ai/nomic-embed-text-v1.5")


def test_known_models_carry_their_prefixes():
    nomic = KNOWN_SETTINGS["nomic-ai/nomic-embed-text-v1.5"]
    assert (nomic.document_prefix, nomic.query_prefix) == ("search_document: ", "search_query: ")
    assert KNOWN_SETTINGS["BAAI/bge-small-en-v1.5"].query_prefix == BGE_QUERY_INSTRUCTION


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0], "1 weights given for 2 models"),
        ([1.0, 0.0], "must be positive"),
        ([1, -2], "positive"),
    ],
)
def test_bad_weights_are_usage_errors(tiny_models, weights, message):
    names = [str(tiny_models["tiny32"]), str(tiny_models["tiny48"])]
    with pytest.raises(UsageError, match=message):
        resolve_ensemble(names, weights)


def test_truncate_dim_cuts_the_model_s_vectors_and_refuses_more_than_it_has(tiny_models):
    from helpers import cosine, encode

    from embed_collections.engine.backends.transformer import SentenceTransformerBackend

    spec = resolve_model(str(tiny_models["tiny48"]), truncate_dim=16)
    backend = SentenceTransformerBackend(spec, "float32")
    backend.load("cpu")
    vectors = backend.embed(["a text to cut", "another one"])
    assert (backend.dim, vectors.shape) == (16, (2, 16))
    full = encode(tiny_models["tiny48"], ["a text to cut", "another one"], None)
    assert cosine(vectors, full[:, :16]).min() > 0.9999  # the first 16 of the 48, not others
    with pytest.raises(UsageError, match="--truncate-dim 64 is larger than .* dimension 48"):
        resolve_model(str(tiny_models["tiny48"]), truncate_dim=64)
