"""Real CUDA checks; each skips itself without a GPU (pytest -m gpu)."""

from __future__ import annotations

import numpy as np
import pytest

from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.executors.local import embed_pending
from embed_collections.engine.models.folders import model_fingerprint
from embed_collections.engine.models.resolve import resolve_model
from embed_collections.engine.models.tiny import build_tiny_model
from embed_collections.engine.options import EngineOptions

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_real_out_of_memory_halves_the_budget_and_completes(tmp_path):
    """A memory-fraction cap makes a large batch fail for real; the engine halves and finishes."""
    folder = build_tiny_model(tmp_path / "wide", 512, seed=5, layers=4)
    spec = resolve_model(str(folder))
    texts = [f"text {i} " + "lorem ipsum dolor sit amet " * 40 for i in range(1024)]
    opts = EngineOptions(
        device="cuda:0",
        backend="torch",
        show_progress=False,
        lease_dir=tmp_path / "leases",
        max_batch_tokens=1024 * 128,
    ).resolved()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    cap = torch.cuda.memory_reserved(0) + 384 * 2**20  # the weights fit; 1024 x 128 tokens do not
    torch.cuda.set_per_process_memory_fraction(cap / total, 0)
    try:
        fingerprint = model_fingerprint(spec, opts.backend, opts.dtype)
        with EmbeddingCache(tmp_path / "c.sqlite") as cache:
            by_digest = {text_digest(t): t for t in texts}
            telemetry = embed_pending(spec, fingerprint, by_digest, cache, opts, [])
            vectors = cache.get_vectors(fingerprint, list(by_digest), 512)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()
    assert telemetry.oom_retries >= 1
    assert telemetry.chunks_embedded == len(texts)
    assert np.isfinite(vectors).all()


def test_default_precision_follows_the_hardware():
    opts = EngineOptions(device="cuda:0").resolved()
    major = torch.cuda.get_device_capability(0)[0]
    assert opts.dtype == ("bfloat16" if major >= 8 else "float16")
    assert opts.max_batch_tokens == 65536
