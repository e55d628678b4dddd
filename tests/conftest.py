"""Shared fixtures: tiny real models built on the fly, Ray, a small full disk; the process
environment of the suite. Helpers live in `helpers.py`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PACKAGE_ROOT, mount_tmpfs, need_module, packaged_minilm_dir

from embed_collections.engine.models.tiny import build_tiny_model
from embed_collections.engine.models.tiny_kinds import build_tiny_cross_encoder, build_tiny_splade

# Child processes must import the package under test, not another installed copy (a relative
# PYTHONPATH=src means nothing in a child started in tmp_path).
os.environ["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def isolated_exports(tmp_path_factory):
    """Exported models and remembered folder hashes go to session folders, not the user's cache."""
    os.environ["EMBED_COLLECTIONS_EXPORT_DIR"] = str(tmp_path_factory.mktemp("exported"))
    os.environ["EMBED_COLLECTIONS_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-home"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny sentence-transformers folders of different dimensions (32 and 48)."""
    root = tmp_path_factory.mktemp("models")
    return {
        "tiny32": build_tiny_model(root / "tiny32", 32, seed=1),
        "tiny48": build_tiny_model(root / "tiny48", 48, seed=2),
    }


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    """A tiny random one-logit cross-encoder (reranker) folder with MiniLM's tokenizer."""
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("rerankers") / "ce", 32, seed=5)


@pytest.fixture(scope="session")
def tiny_splade(tmp_path_factory) -> Path:
    """A tiny random SPLADE-style sentence-transformers SparseEncoder folder."""
    return build_tiny_splade(tmp_path_factory.mktemp("splade") / "splade", 32, seed=6)


@pytest.fixture(scope="session")
def prompt_model(tmp_path_factory) -> Path:
    """A tiny model (32) declaring e5-style `query: ` / `passage: ` prompts in its own config."""
    root = tmp_path_factory.mktemp("prompted")
    prompts = {"query": "query: ", "passage": "passage: "}
    return build_tiny_model(root / "e5", 32, seed=7, prompts=prompts)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every Ray test: 2 CPUs, 80 MiB object store, no dashboard."""
    ray = need_module("ray")
    ray.init(
        num_cpus=2,
        object_store_memory=80 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return packaged_minilm_dir()


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 12 MB tmpfs, unmounted afterwards."""
    target = tmp_path / "disk"
    target.mkdir()
    mount_tmpfs(target, 12)
    yield target
    subprocess.run(["umount", "-l", str(target)], check=False)
