"""Preflight loads every model's configuration and remote code before anything is embedded."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cached_vectors, cli_run_args, read_summary, run_cli, write_chunks

from embed_collections.engine.models.resolve import resolve_model
from embed_collections.engine.models.tiny import build_remote_code_model
from embed_collections.errors import ModelError, UsageError


@pytest.fixture(scope="module")
def remote_models(tmp_path_factory) -> dict[str, Path]:
    """A remote-code model whose code repository sits in a hub cache, and one whose is missing."""
    root = tmp_path_factory.mktemp("remote")
    hub = root / "hf" / "hub"
    return {
        "hf_home": root / "hf",
        "hub": hub,
        "present": build_remote_code_model(root / "present", hub, repo="acme/bert-code"),
        "missing": build_remote_code_model(root / "missing", None, repo="acme/gone-code"),
    }


def run_env(remote_models, tmp_path) -> dict[str, str]:
    return {
        "HF_HOME": str(remote_models["hf_home"]),
        "HF_HUB_CACHE": str(remote_models["hub"]),
        "EMBED_COLLECTIONS_CACHE_HOME": str(tmp_path / "home"),
    }


def run_args(chunked: Path, out: Path, *models: Path, trust: bool = True) -> list:
    trusted = ["--trust-remote-code"] if trust else []
    return cli_run_args(chunked, out, list(models), "--backend", "torch", "--no-upload", *trusted)


def test_remote_code_from_another_repository_loads_and_embeds(tmp_path, tiny_models, remote_models):
    write_chunks(tmp_path / "Chunked" / "a" / "a_chunks.json", ["one text", "another text"])
    out = tmp_path / "out"
    args = run_args(tmp_path / "Chunked", out, tiny_models["tiny48"], remote_models["present"])
    result = run_cli(args, tmp_path, run_env(remote_models, tmp_path))
    assert result.code == 0, result.err
    models = read_summary(out)["models"]
    assert [m["chunks_embedded"] for m in models.values()] == [2, 2]
    assert cached_vectors(out) == 4


def test_missing_remote_code_fails_before_the_first_model_embeds(
    tmp_path, tiny_models, remote_models
):
    write_chunks(tmp_path / "Chunked" / "a" / "a_chunks.json", ["one text", "another text"])
    out = tmp_path / "out"
    args = run_args(tmp_path / "Chunked", out, tiny_models["tiny48"], remote_models["missing"])
    result = run_cli(args, tmp_path, run_env(remote_models, tmp_path))
    assert result.code == 1, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert 'hub repository "acme/gone-code"' in result.err
    assert "models--acme--gone-code" in result.err  # how to fix it
    assert cached_vectors(out) == 0  # the first model embedded nothing


def test_remote_code_without_the_flag_is_a_usage_error_naming_it(
    tmp_path, tiny_models, remote_models
):
    write_chunks(tmp_path / "Chunked" / "a" / "a_chunks.json", ["one text"])
    out = tmp_path / "out"
    args = run_args(
        tmp_path / "Chunked", out, tiny_models["tiny48"], remote_models["present"], trust=False
    )
    result = run_cli(args, tmp_path, run_env(remote_models, tmp_path))
    assert result.code == 2, result.err
    assert "--trust-remote-code" in result.err
    assert cached_vectors(out) == 0


def test_model_cache_dir_also_serves_code(tmp_path, remote_models, monkeypatch):
    # Hugging Face's own caches are empty here: the code can only come from --model-cache-dir
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelError, match='hub repository "acme/bert-code"'):
        resolve_model(str(remote_models["present"]), trust_remote_code=True)
    spec = resolve_model(
        str(remote_models["present"]), model_cache_dir=remote_models["hub"], trust_remote_code=True
    )
    assert spec.code_cache_dir == remote_models["hub"]


def test_preflight_errors_are_typed(remote_models):
    with pytest.raises(UsageError, match="--trust-remote-code"):
        resolve_model(str(remote_models["present"]))
    with pytest.raises(ModelError, match="acme/gone-code"):
        resolve_model(str(remote_models["missing"]), trust_remote_code=True)
