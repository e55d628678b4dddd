"""The batch loop at its limits: the float32 re-run (attention, OOM, tokenizer) and the budget."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from embed_collections.engine.backends.transformer import SentenceTransformerBackend
from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.executors.batches import TokenBudget, count_tokens, run_batches
from embed_collections.engine.executors.local import embed_pending
from embed_collections.engine.models.folders import model_fingerprint
from embed_collections.engine.models.resolve import resolve_model
from embed_collections.engine.options import EngineOptions
from embed_collections.engine.telemetry import DeviceTelemetry

TEXTS = [f"Sentence {i} about vectors, " + "and more words " * (i % 7) for i in range(24)]


def loaded(tiny_models, dtype="float32"):
    backend = SentenceTransformerBackend(resolve_model(str(tiny_models["tiny32"])), dtype)
    backend.load("cpu")
    return backend


def sorted_inputs(backend):
    counts = count_tokens(backend, TEXTS)
    order = sorted(range(len(TEXTS)), key=lambda i: -counts[i])
    return [TEXTS[i] for i in order], [counts[i] for i in order]


def test_float32_rerun_leaves_flash_attention_for_sdpa_and_padded_inputs(tiny_models):
    backend = loaded(tiny_models, "bfloat16")
    reference = loaded(tiny_models, "float32").embed(TEXTS[:4])
    first = backend.model[0]
    # The state flash-attention 2 leaves after loading (not loadable on CPU): flash attention
    # named in the config and sentence-transformers flattening the inputs.
    first.model.config._attn_implementation_internal = "flash_attention_2"
    first.can_flatten_inputs = True
    seen = []

    def record(module, args):
        inner = first.model
        seen.append((inner.config._attn_implementation, first.can_flatten_inputs, inner.dtype))

    first.model.encoder.register_forward_pre_hook(record)
    vectors = backend.embed_float32(TEXTS[:4])
    assert seen == [("sdpa", False, torch.float32)]
    cosines = np.sum(vectors * reference, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosines.min() > 0.999  # float32 compute on bf16-rounded weights
    assert next(backend.model.parameters()).dtype == torch.bfloat16  # back to working precision


def test_out_of_memory_inside_the_float32_rerun_retries_a_smaller_batch(
    tmp_path, tiny_models, monkeypatch
):
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "nan@*#0,oom32@*#0")
    spec = resolve_model(str(tiny_models["tiny32"]))
    opts = EngineOptions(
        device="cpu", backend="torch", show_progress=False, lease_dir=tmp_path / "leases"
    ).resolved()
    fingerprint = model_fingerprint(spec, "torch", opts.dtype)
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        telemetry = embed_pending(
            spec, fingerprint, {text_digest(t): t for t in TEXTS}, cache, opts, []
        )
        vectors = cache.get_vectors(fingerprint, [text_digest(t) for t in TEXTS], 32)
    assert np.isfinite(vectors).all()
    assert telemetry.oom_retries == 1
    assert telemetry.devices[0].non_finite_retries == 2  # the failed re-run, then the smaller one
    assert telemetry.chunks_embedded == len(TEXTS)


def test_the_token_budget_outlives_a_work_unit(tiny_models, monkeypatch):
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "oom@*#0")
    backend = loaded(tiny_models)
    inputs, counts = sorted_inputs(backend)
    budget = TokenBudget(4096)
    stats = DeviceTelemetry("cpu")
    sizes: list[int] = []

    def deliver(rows, vectors):
        sizes.append(len(rows))

    def unit() -> None:
        run_batches(backend, inputs, counts, 4096, 0, stats, deliver, print, "tiny", budget)

    unit()
    assert stats.oom_retries == 1 and budget.current < budget.full
    first_unit = len(sizes)
    unit()  # the next unit starts at the halved budget, not at the one that failed
    assert stats.oom_retries == 1
    assert max(sizes[first_unit:]) * max(counts) <= budget.full // 2
    assert len(sizes) - first_unit >= 2


def test_the_tokenizer_is_used_from_one_thread_at_a_time(tiny_models, monkeypatch):
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "nan-always@*#0")  # every batch re-runs
    backend = loaded(tiny_models)
    inputs, counts = sorted_inputs(backend)
    original = backend.tokenize
    guard = threading.Lock()
    inside = [0]
    most = [0]

    def tokenize(texts):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            if threading.current_thread() is not threading.main_thread():
                time.sleep(0.05)  # a slow prefetch: the re-run comes while it still runs
            return original(texts)
        finally:
            with guard:
                inside[0] -= 1

    backend.tokenize = tokenize  # type: ignore[method-assign]
    stats = DeviceTelemetry("cpu")
    run_batches(backend, inputs, counts, 200, 0, stats, print, lambda row: None, "tiny")
    assert stats.non_finite_retries == stats.batches >= 3, stats
    assert most[0] == 1, (most, stats)
