"""Several devices: one worker process each, pulling units; kills, OOM and NaN stay contained."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from conftest import cosine, encode, engine_options

from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.lease import DeviceLease
from embed_collections.engine.local_executor import embed_pending
from embed_collections.engine.models import model_fingerprint, resolve_model
from embed_collections.errors import ModelError

TEXTS = [f"Text number {i}: " + "word " * (i % 23) for i in range(60)]


def options(tmp_path, device, **changes):
    # many small batches, so both workers get units
    return engine_options(tmp_path, **{"device": device, "max_batch_tokens": 64, **changes})


def embed(spec, cache, opts, texts=TEXTS):
    fingerprint = model_fingerprint(spec, opts.backend, opts.dtype)
    telemetry = embed_pending(
        spec, fingerprint, {text_digest(t): t for t in texts}, cache, opts, []
    )
    return fingerprint, telemetry


def embed_cpu1_first(spec, path: Path, opts, texts=TEXTS):
    """Embed on cpu:0,cpu:1 with cpu:1 first: this test holds cpu:0's lease until cpu:1's first
    vectors are in the cache (an event, not a head start in seconds), then lets cpu:0 join."""
    fingerprint = model_fingerprint(spec, opts.backend, opts.dtype)
    outcome: dict = {}

    def work() -> None:
        try:
            with EmbeddingCache(path) as cache:
                outcome["telemetry"] = embed(spec, cache, opts, texts)[1]
        except BaseException as error:  # re-raised in the test's thread
            outcome["error"] = error

    with DeviceLease("head start", "cpu:0", lease_dir=opts.lease_dir):
        worker = threading.Thread(target=work)
        worker.start()
        deadline = time.monotonic() + 120
        while cached_count(path, fingerprint) == 0:
            assert time.monotonic() < deadline and worker.is_alive(), outcome.get("error")
            time.sleep(0.05)
    worker.join(timeout=300)
    if "error" in outcome:
        raise outcome["error"]
    return fingerprint, outcome["telemetry"]


def cached_count(path: Path, fingerprint: str) -> int:
    """Vectors of `fingerprint` in the cache, read beside the run that writes them."""
    try:
        db = sqlite3.connect(path)
        try:
            query = "SELECT COUNT(*) FROM vectors WHERE fingerprint = ?"
            return db.execute(query, (fingerprint,)).fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def vectors(cache, fingerprint, dim=32):
    return cache.get_vectors(fingerprint, [text_digest(t) for t in TEXTS], dim)


def test_two_cpu_workers_give_the_one_worker_vectors(tmp_path, prompt_model, monkeypatch):
    spec = resolve_model(str(prompt_model))  # the workers must put its `passage: ` first
    with EmbeddingCache(tmp_path / "one.sqlite") as cache:
        fp_one, _ = embed(spec, cache, options(tmp_path, "cpu"))
        one = vectors(cache, fp_one)
    fp_two, telemetry = embed_cpu1_first(
        spec, tmp_path / "two.sqlite", options(tmp_path, "cpu:0,cpu:1")
    )
    with EmbeddingCache(tmp_path / "two.sqlite") as cache:
        two = vectors(cache, fp_two)
    assert fp_one == fp_two  # the device list does not change the vectors' identity
    assert cosine(one, two).min() >= 0.9999
    assert cosine(two, encode(prompt_model, TEXTS, "passage")).min() >= 0.9999
    assert cosine(two, encode(prompt_model, TEXTS, None)).max() < 0.999
    by_device = {d.device: d for d in telemetry.devices}
    assert set(by_device) == {"cpu:0", "cpu:1"}
    assert sum(d.chunks for d in by_device.values()) == telemetry.chunks_embedded == len(TEXTS)
    assert by_device["cpu:1"].chunks > 0 and by_device["cpu:1"].seconds > 0
    assert telemetry.loads == 2


def test_a_killed_worker_loses_only_its_unit_which_the_other_embeds(
    tmp_path, tiny_models, monkeypatch, caplog
):
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "kill@cpu:1#1")
    spec = resolve_model(str(tiny_models["tiny32"]))
    fingerprint, telemetry = embed_cpu1_first(
        spec, tmp_path / "c.sqlite", options(tmp_path, "cpu:0,cpu:1")
    )
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        assert cache.missing(fingerprint, [text_digest(t) for t in TEXTS]) == []
    assert telemetry.chunks_embedded == len(TEXTS)
    # the kill really happened (SIGKILL: exit code -9) and its unit's rest went back to the queue
    (died,) = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
    assert re.search(r"worker on cpu:1 died \(exit code -9\); \d+ texts of its unit go back", died)
    by_device = {d.device: d for d in telemetry.devices}
    assert by_device["cpu:0"].chunks > 0  # the survivor embedded the re-queued texts


def test_every_worker_killed_then_a_rerun_embeds_only_what_is_missing(
    tmp_path, tiny_models, monkeypatch
):
    spec = resolve_model(str(tiny_models["tiny32"]))
    digests = [text_digest(t) for t in TEXTS]
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "kill@*#3")  # real SIGKILL, batch 4
        with pytest.raises(ModelError, match="every worker.*re-run"):
            embed(spec, cache, options(tmp_path, "cpu:0,cpu:1"))
        cached = len(TEXTS) - len(
            cache.missing(model_fingerprint(spec, "torch", "float32"), digests)
        )
        assert 0 < cached < len(TEXTS)
        monkeypatch.delenv("EMBED_COLLECTIONS_FAULT")
        fingerprint, telemetry = embed(spec, cache, options(tmp_path, "cpu:0,cpu:1"))
        assert cache.missing(fingerprint, digests) == []
    assert telemetry.cache_hits == cached
    assert telemetry.chunks_embedded == len(TEXTS) - cached


def test_out_of_memory_in_one_worker_stays_in_that_worker(tmp_path, tiny_models, monkeypatch):
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "oom@cpu:1#0")
    spec = resolve_model(str(tiny_models["tiny32"]))
    fingerprint, telemetry = embed_cpu1_first(
        spec, tmp_path / "c.sqlite", options(tmp_path, "cpu:0,cpu:1")
    )
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        assert cache.missing(fingerprint, [text_digest(t) for t in TEXTS]) == []
    by_device = {d.device: d for d in telemetry.devices}
    assert by_device["cpu:1"].oom_retries == 1
    assert by_device["cpu:0"].oom_retries == 0
    assert telemetry.oom_retries == 1
