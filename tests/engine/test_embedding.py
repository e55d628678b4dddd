"""The model-major engine: parity with sentence-transformers, OOM back-off, resumption."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from helpers import engine_options, read_summary, write_chunks

from embed_collections.engine import devices
from embed_collections.engine.backends.transformer import SentenceTransformerBackend
from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.executors.local import embed_pending
from embed_collections.engine.models.folders import model_fingerprint
from embed_collections.engine.models.resolve import resolve_model
from embed_collections.record.config import RunConfig
from embed_collections.runner.pipeline import run

TEXTS = [
    "Docling converts PDF files to Markdown.",
    "def main():\n    print('hello')\n",
    "Qdrant stores vectors with payloads.",
    "A much longer text " * 30,
    "short",
]


def options(tmp_path, **changes):
    return engine_options(tmp_path, **{"batch_size": 4, **changes})


def fingerprint_for(spec, opts):
    return model_fingerprint(spec, opts.backend, opts.dtype)


def embed(spec, texts, cache, opts):
    fingerprint = fingerprint_for(spec, opts)
    by_digest = {text_digest(t): t for t in texts}
    events = []
    telemetry = embed_pending(spec, fingerprint, by_digest, cache, opts, events)
    return fingerprint, telemetry, events


def test_packaged_minilm_matches_sentence_transformers_encode(tmp_path, minilm_dir):
    from sentence_transformers import SentenceTransformer

    spec = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        fingerprint, telemetry, events = embed(spec, TEXTS, cache, options(tmp_path))
        ours = cache.get_vectors(fingerprint, [text_digest(t) for t in TEXTS], 384)
    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS)
    cosines = np.sum(ours * reference, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosines.min() >= 0.9999
    assert telemetry.chunks_embedded == len(TEXTS)
    assert telemetry.truncated_chunks == telemetry.truncated_tokens == 0  # all under 256 tokens
    assert [e.event_type for e in events] == ["acquire", "release"]
    assert 0 < telemetry.tokens_embedded <= telemetry.padded_tokens


def test_out_of_memory_halves_the_batch_and_retries(tmp_path, tiny_models, monkeypatch):
    original = SentenceTransformerBackend.forward
    sizes = []

    def embed_or_oom(self, batch):
        texts = batch.texts
        sizes.append(len(texts))
        if len(texts) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, batch)

    monkeypatch.setattr(SentenceTransformerBackend, "forward", embed_or_oom)
    spec = resolve_model(str(tiny_models["tiny32"]))
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        fingerprint, telemetry, _ = embed(spec, TEXTS, cache, options(tmp_path, batch_size=4))
        assert cache.missing(fingerprint, [text_digest(t) for t in TEXTS]) == []
    assert sizes[:3] == [4, 2, 1]
    assert telemetry.oom_retries >= 2  # a budget in tokens: shorter texts try bigger batches
    assert telemetry.batches == len(TEXTS)


def test_other_errors_are_not_mistaken_for_out_of_memory(tmp_path, tiny_models, monkeypatch):
    calls = []

    def broken(self, texts):
        calls.append(texts)
        raise ValueError("bad input")

    monkeypatch.setattr(SentenceTransformerBackend, "forward", broken)
    spec = resolve_model(str(tiny_models["tiny32"]))
    with EmbeddingCache(tmp_path / "c.sqlite") as cache, pytest.raises(ValueError, match="bad"):
        embed(spec, TEXTS, cache, options(tmp_path))
    assert len(calls) == 1  # raised at once: never retried with a smaller batch as an OOM


def test_cached_texts_load_no_model_and_changed_text_embeds_alone(
    tmp_path, tiny_models, monkeypatch
):
    spec = resolve_model(str(tiny_models["tiny32"]))
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        embed(spec, TEXTS, cache, options(tmp_path))

        def must_not_load(self, device):
            raise AssertionError("model loaded although everything is cached")

        with monkeypatch.context() as patch:
            patch.setattr(SentenceTransformerBackend, "load", must_not_load)
            _, telemetry, events = embed(spec, TEXTS, cache, options(tmp_path))
        assert (telemetry.loads, telemetry.cache_hits, events) == (0, len(TEXTS), [])
        changed = [*TEXTS[:-1], "short, but edited"]
        _, telemetry, _ = embed(spec, changed, cache, options(tmp_path))
        assert (telemetry.chunks_embedded, telemetry.cache_hits) == (1, len(TEXTS) - 1)


def test_fingerprint_separates_settings_that_change_vectors(tmp_path, tiny_models, monkeypatch):
    spec = resolve_model(str(tiny_models["tiny32"]))
    base = fingerprint_for(spec, options(tmp_path))
    assert base == fingerprint_for(spec, options(tmp_path, batch_size=8))
    # bf16 is allowed only on a CPU with bf16 units: this test's CPU has them, whatever runs it
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: avx2 avx512_bf16\n")
    monkeypatch.setattr(devices, "CPUINFO", tmp_path / "cpuinfo")
    assert base != fingerprint_for(spec, options(tmp_path, dtype="bfloat16"))
    assert base != fingerprint_for(spec, options(tmp_path, backend="onnx"))
    assert base != fingerprint_for(
        resolve_model(str(tiny_models["tiny32"]), max_seq_length=64), options(tmp_path)
    )


def test_truncation_is_counted_per_chunk_and_token(tmp_path, tiny_models):
    spec = resolve_model(str(tiny_models["tiny32"]), max_seq_length=16)
    reference = SentenceTransformerBackend(spec, "float32")
    reference.load("cpu")
    counts = reference.token_counts(TEXTS)
    assert any(c > 16 for c in counts) and any(c <= 16 for c in counts)
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        _, telemetry, _ = embed(spec, TEXTS, cache, options(tmp_path))
    assert telemetry.truncated_chunks == sum(1 for c in counts if c > 16)
    assert telemetry.truncated_tokens == sum(c - 16 for c in counts if c > 16)


def corpus(root, duplicates=True):
    shared = "This sentence appears in both collections."
    write_chunks(
        root / "alpha" / "a_chunks.json", [f"alpha text {i}" for i in range(30)] + [shared]
    )
    extra = [shared] if duplicates else []
    write_chunks(root / "beta" / "b_chunks.json", [f"beta text {i}" for i in range(30)] + extra)
    return 61


def test_identical_texts_are_embedded_once_per_model(tmp_path, tiny_models):
    unique = corpus(tmp_path / "Chunked")
    config = RunConfig(
        chunked_dir=tmp_path / "Chunked",
        output_dir=tmp_path / "out",
        models=(str(tiny_models["tiny32"]), str(tiny_models["tiny48"])),
        engine=options(tmp_path),
        build_index=False,
    )
    summary = run(config)
    assert summary.exit_code == 0
    for telemetry in summary.extra.models.values():
        assert telemetry["chunks_embedded"] == unique
        assert telemetry["loads"] == 1
    assert sum(r.total_embeddings_generated for r in summary.results.values()) == unique + 1


def test_killed_run_resumes_embedding_only_what_is_missing(tmp_path, tiny_models):
    """A run SIGKILLed after a few batches keeps them; the resumed run embeds exactly the rest."""
    unique = corpus(tmp_path / "Chunked", duplicates=False)
    log = tmp_path / "embedded.jsonl"
    script = textwrap.dedent(
        f"""
        import json, os, signal, sys
        from pathlib import Path
        from embed_collections.engine.backends.transformer import SentenceTransformerBackend
        from embed_collections.record.config import RunConfig
        from embed_collections.engine.options import EngineOptions
        from embed_collections.runner.pipeline import run

        original = SentenceTransformerBackend.forward
        kill_after = int(sys.argv[1])
        calls = []

        def logged(self, batch):
            if len(calls) == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            calls.append(1)
            with open({str(log)!r}, "a") as f:
                f.write(json.dumps(batch.texts) + "\\n")
            return original(self, batch)

        SentenceTransformerBackend.forward = logged
        run(RunConfig(
            chunked_dir=Path({str(tmp_path / "Chunked")!r}),
            output_dir=Path({str(tmp_path / "out")!r}),
            models=({str(tiny_models["tiny32"])!r},),
            engine=EngineOptions(device="cpu", backend="torch", show_progress=False, batch_size=8,
                                 lease_dir=Path({str(tmp_path / "leases")!r})).resolved(),
            build_index=False,
        ))
        """
    )
    first = subprocess.run([sys.executable, "-c", script, "3"], capture_output=True, text=True)
    assert first.returncode == -signal.SIGKILL, first.stderr
    embedded_first = [t for line in log.read_text().splitlines() for t in json.loads(line)]
    assert len(embedded_first) == 24
    log.unlink()
    second = subprocess.run([sys.executable, "-c", script, "-1"], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    embedded_second = [t for line in log.read_text().splitlines() for t in json.loads(line)]
    assert not set(embedded_first) & set(embedded_second)
    assert len(embedded_first) + len(embedded_second) == unique
    summary = read_summary(tmp_path / "out")
    assert summary["cache_hits"] == 24 and summary["failed_collections"] == {}


def test_unchanged_collections_are_not_rewritten_and_a_changed_one_is(tmp_path, tiny_models):
    corpus(tmp_path / "Chunked")
    config = RunConfig(
        chunked_dir=tmp_path / "Chunked",
        output_dir=tmp_path / "out",
        models=(str(tiny_models["tiny32"]),),
        engine=options(tmp_path),
    )
    assert run(config).exit_code == 0
    store = tmp_path / "out" / "qdrant"

    def markers() -> dict[str, int]:
        # A load replaces its collection's marker file; the store's writes happen in its own
        # process, so they are observed on disk. Marked with an old mtime, a rewritten marker
        # shows a new one (an inode number can be reused by the replacement).
        return {
            name: (store / f"{name}.loaded.json").stat().st_mtime_ns for name in ("alpha", "beta")
        }

    for name in ("alpha", "beta"):
        os.utime(store / f"{name}.loaded.json", ns=(10**18, 10**18))
    before = markers()
    summary = run(config)
    assert markers() == before
    assert summary.results["alpha"].points_in_store == 31
    write_chunks(tmp_path / "Chunked" / "beta" / "b_chunks.json", ["only one chunk now"])
    summary = run(config)
    after = markers()
    assert {name for name in before if after[name] != before[name]} == {"beta"}
    assert summary.results["beta"].points_deleted == 30  # chunk 0 keeps its id


def test_nan_batch_is_rerun_in_float32_and_cached_finite(tmp_path, tiny_models, monkeypatch):
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "nan@*#0")  # the first batch's vectors are NaN
    spec = resolve_model(str(tiny_models["tiny32"]))
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        fingerprint, telemetry, _ = embed(spec, TEXTS, cache, options(tmp_path))
        vectors = cache.get_vectors(fingerprint, [text_digest(t) for t in TEXTS], 32)
    assert np.isfinite(vectors).all()
    assert telemetry.devices[0].non_finite_retries == 1
    assert telemetry.non_finite_chunks == 0


def test_vectors_non_finite_in_float32_too_are_reported_and_never_cached(
    tmp_path, tiny_models, monkeypatch
):
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "nan-always@*#0")
    spec = resolve_model(str(tiny_models["tiny32"]))
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        fingerprint, telemetry, _ = embed(spec, TEXTS, cache, options(tmp_path))
        assert len(cache.missing(fingerprint, [text_digest(t) for t in TEXTS])) == len(TEXTS)
    assert telemetry.non_finite_chunks == len(TEXTS)
    assert telemetry.chunks_embedded == 0
    assert "short" in telemetry.to_dict()["non_finite_texts"]


def test_missing_texts_are_listed_after_the_lease(tmp_path, tiny_models, caplog):
    """A run that waited for the lease embeds nothing another run embedded meanwhile."""
    import threading

    from embed_collections.engine.lease import DeviceLease

    spec = resolve_model(str(tiny_models["tiny32"]))
    opts = options(tmp_path, check_interval=0.05)  # a waiting lease says so every 50 ms
    caplog.set_level(logging.INFO, logger="embed_collections.engine.lease")
    fingerprint = model_fingerprint(spec, opts.backend, opts.dtype)
    by_digest = {text_digest(t): t for t in TEXTS}
    outcome: dict = {}

    def second_run() -> None:
        with EmbeddingCache(tmp_path / "c.sqlite") as cache:
            events: list = []
            outcome["telemetry"] = embed_pending(spec, fingerprint, by_digest, cache, opts, events)
            outcome["events"] = events

    with DeviceLease("first run", "cpu", lease_dir=tmp_path / "leases"):
        waiter = threading.Thread(target=second_run)
        waiter.start()
        deadline = time.monotonic() + 60
        while "Waiting for lease on cpu" not in caplog.text:  # the second run reached the lease
            assert time.monotonic() < deadline and waiter.is_alive()
            time.sleep(0.01)
        with EmbeddingCache(tmp_path / "c.sqlite") as cache:  # the first run embeds everything
            cache.put_vectors(fingerprint, list(by_digest), np.ones((len(TEXTS), 32), np.float32))
    waiter.join()
    telemetry = outcome["telemetry"]
    assert [e.event_type for e in outcome["events"]] == ["acquire", "release"]
    assert (telemetry.chunks_embedded, telemetry.loads) == (0, 0)
    assert telemetry.cache_hits == len(TEXTS)
