"""Several devices: one worker process each, pulling units; kills, OOM and NaN stay contained."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import cosine, encode, engine_options, need_module

from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.executors.local import embed_pending
from embed_collections.engine.lease import DeviceLease
from embed_collections.engine.models.folders import model_fingerprint
from embed_collections.engine.models.resolve import resolve_model
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
        while worker.is_alive() and cached_count(path, fingerprint) == 0:
            assert time.monotonic() < deadline, "cpu:1 cached nothing in 120 s"
            time.sleep(0.05)
    worker.join(timeout=300)
    if "error" in outcome:
        raise outcome["error"]
    return fingerprint, outcome["telemetry"]


def cached_count(path: Path, fingerprint: str) -> int:
    """Vectors of `fingerprint` in the cache, read beside the run that writes them."""
    with EmbeddingCache(path) as cache:
        return cache.count(fingerprint)


def vectors(cache, fingerprint, dim=32):
    return cache.get_vectors(fingerprint, [text_digest(t) for t in TEXTS], dim)


# onnx: the same path with a runtime export's tokenizer in the parent (-m slow: 9 s)
@pytest.mark.parametrize("backend", ["torch", pytest.param("onnx", marks=pytest.mark.slow)])
def test_two_cpu_workers_give_the_one_worker_vectors(tmp_path, prompt_model, monkeypatch, backend):
    """With onnx the parent tokenises once for the workers (ids travel with the units)."""
    if backend == "onnx":
        need_module("onnxruntime")
        monkeypatch.setenv("EMBED_COLLECTIONS_EXPORT_DIR", str(tmp_path / "exports"))
    # Slow batches (seconds of work in all), so both workers are up before the job ends.
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "slow@*#250")
    spec = resolve_model(str(prompt_model))  # the workers must put its `passage: ` first
    with EmbeddingCache(tmp_path / "one.sqlite") as cache:
        fp_one, one_telemetry = embed(spec, cache, options(tmp_path, "cpu", backend=backend))
        one = vectors(cache, fp_one)
    with EmbeddingCache(tmp_path / "two.sqlite") as cache:
        fp_two, telemetry = embed(spec, cache, options(tmp_path, "cpu:0,cpu:1", backend=backend))
        two = vectors(cache, fp_two)
    assert telemetry.tokens_embedded == one_telemetry.tokens_embedded  # the same counts
    assert fp_one == fp_two  # the device list does not change the vectors' identity
    assert cosine(one, two).min() >= 0.9999
    assert cosine(two, encode(prompt_model, TEXTS, "passage")).min() >= 0.9999
    assert cosine(two, encode(prompt_model, TEXTS, None)).max() < 0.999
    by_device = {d.device: d for d in telemetry.devices}
    assert set(by_device) == {"cpu:0", "cpu:1"}
    assert sum(d.chunks for d in by_device.values()) == telemetry.chunks_embedded == len(TEXTS)
    assert all(d.chunks > 0 and d.seconds > 0 for d in by_device.values())  # each had a share
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


@pytest.mark.slow  # 12 s; one killed worker: test_a_killed_worker_loses_only_its_unit...
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
    assert all(d.oom_retries == 0 for d in telemetry.devices if d.device != "cpu:1")
    assert telemetry.oom_retries == 1


def test_a_worker_killed_right_after_its_unit_is_handed_out_loses_nothing(
    tmp_path, tiny_models, monkeypatch, caplog
):
    # cpu:1 dies before it sends anything for its unit: only the parent's hand-out record knows.
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "kill@cpu:1#0,slow@cpu:0#100")
    spec = resolve_model(str(tiny_models["tiny32"]))
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        fingerprint, telemetry = embed(spec, cache, options(tmp_path, "cpu:0,cpu:1"))
        assert cache.missing(fingerprint, [text_digest(t) for t in TEXTS]) == []
    assert telemetry.chunks_embedded == len(TEXTS)
    assert [d.device for d in telemetry.devices] == ["cpu:0"]
    assert "worker on cpu:1 died" in caplog.text and "go back to the queue" in caplog.text


@pytest.mark.slow
def test_a_worker_without_progress_fails_the_model_with_a_message(
    tmp_path, tiny_models, monkeypatch
):
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "slow@*#60000")  # a minute per batch
    spec = resolve_model(str(tiny_models["tiny32"]))
    pattern = r"no progress on cpu:\d.*--stall-timeout"
    with EmbeddingCache(tmp_path / "c.sqlite") as cache, pytest.raises(ModelError, match=pattern):
        embed(spec, cache, options(tmp_path, "cpu:0,cpu:1", stall_timeout=1.0))


WORKER_PARENT = """
import logging, sys
from pathlib import Path
from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.executors.local import embed_pending
from embed_collections.engine.models.folders import model_fingerprint
from embed_collections.engine.models.resolve import resolve_model
from embed_collections.engine.options import EngineOptions

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    spec = resolve_model(sys.argv[1])
    opts = EngineOptions(device="cpu:0,cpu:1", backend="torch", show_progress=False,
                         lease_dir=Path(sys.argv[2], "leases"), max_batch_tokens=64).resolved()
    texts = [f"Text {i} " + "word " * (i % 23) for i in range(200)]
    with EmbeddingCache(Path(sys.argv[2], "c.sqlite")) as cache:
        embed_pending(spec, model_fingerprint(spec, "torch", opts.dtype),
                      {text_digest(t): t for t in texts}, cache, opts, [])
"""


def spawned_children(parent: int) -> list[int]:
    """Live (not zombie) multiprocessing workers whose parent is `parent`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z" and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_their_parent_is_killed(tmp_path, tiny_models):
    script = tmp_path / "parent.py"
    script.write_text(WORKER_PARENT)
    env = {**os.environ, "EMBED_COLLECTIONS_FAULT": "slow@*#500"}  # busy for a long while
    parent = subprocess.Popen(
        [sys.executable, str(script), str(tiny_models["tiny32"]), str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    seen = []
    try:
        for line in parent.stdout:  # wait until units are out: the workers are mid-batch
            seen.append(line)
            if " units" in line:
                break
        workers = spawned_children(parent.pid)
        assert len(workers) == 2, "".join(seen)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the process table, with a deadline
    assert not any(alive(pid) for pid in workers)


def test_units_are_sized_so_every_device_gets_work():
    from embed_collections.engine.executors.workers import SMALL_BATCH, cut_units

    counts = [40] * 150  # 150 short texts: one CPU batch of 8,192 tokens holds them all
    for devices in (1, 2, 4):
        units = cut_units(counts, 256, 8192, 0, devices)
        assert sorted(p for unit in units for p in unit) == list(range(150))
        assert len(units) >= min(3 * devices, 150 // SMALL_BATCH)
    assert len(cut_units([40] * 20, 256, 8192, 0, 2)) == 2  # never under SMALL_BATCH texts


def test_units_shrink_as_the_work_runs_out():
    from embed_collections.engine.executors.workers import UNIT_BATCHES, cut_units

    counts = sorted(((i * 37) % 500 + 20 for i in range(2000)), reverse=True)
    units = cut_units(counts, 256, 2048, 0, 2)
    assert [p for unit in units for p in unit] == list(range(2000))
    work = [sum(min(counts[p], 256) for p in unit) for unit in units]
    assert work[0] > 8 * 2048  # the first units are many batches: few round trips
    assert max(work) <= UNIT_BATCHES * 2048
    assert all(w <= 2048 for w in work[-4:])  # the last are one batch each: a short wait at the end
    assert work[0] >= work[len(work) // 2] >= work[-1]
