"""The engine's promises about batches and devices: the token budget, the out-of-memory back-off
and its growing back, a unit that killed two workers, one lock for `cuda` and `cuda:0`."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest
from helpers import engine_options

from embed_collections.engine.executors.batches import GROW_AFTER, load_backend, run_batches
from embed_collections.engine.executors.pool import Plan, WorkerState, lost_worker
from embed_collections.engine.executors.workers import Unit
from embed_collections.engine.lease import DeviceLease
from embed_collections.engine.models.resolve import resolve_model
from embed_collections.engine.models.specs import ModelSettings, ModelSpec
from embed_collections.engine.telemetry import DeviceTelemetry, ModelTelemetry
from embed_collections.errors import LeaseTimeoutError, ModelError

SPEC = ModelSpec(name="tiny", path=Path("tiny"), source="test", settings=ModelSettings())
TEXTS = [f"alpha beta gamma delta {i}" for i in range(40)]  # equal token counts


@pytest.fixture(scope="module")
def backend(tiny_models, tmp_path_factory):
    spec = resolve_model(str(tiny_models["tiny32"]))
    options = engine_options(tmp_path_factory.mktemp("batching"))
    loaded = load_backend(spec, "torch", options, "cpu")
    yield loaded
    loaded.unload()


def batch_sizes(backend, max_tokens: int) -> tuple[list[int], list[int], DeviceTelemetry]:
    """Texts per delivered batch, the token counts, and the device's telemetry."""
    counts = backend.token_counts(TEXTS)
    stats = DeviceTelemetry(device="cpu")
    sizes: list[int] = []
    run_batches(
        backend, TEXTS, counts, max_tokens, 0, stats,
        lambda rows, vectors: sizes.append(len(rows)), lambda row: None, "tiny",
    )  # fmt: skip
    return sizes, counts, stats


def test_max_batch_tokens_bounds_every_padded_batch(backend):
    sizes, counts, stats = batch_sizes(backend, max_tokens=4 * max(backend.token_counts(TEXTS)))
    assert sum(sizes) == len(TEXTS) and sizes == [4] * 10
    assert stats.padded_tokens <= 4 * max(counts) * len(sizes)
    wide, _, _ = batch_sizes(backend, max_tokens=20 * max(counts))
    assert wide == [20, 20]


def test_out_of_memory_halves_the_budget_which_grows_back_after_8_good_batches(
    backend, monkeypatch
):
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "oom@cpu#0")
    width = max(backend.token_counts(TEXTS))
    sizes, _, stats = batch_sizes(backend, max_tokens=4 * width)
    assert stats.oom_retries == 1
    assert sum(sizes) == len(TEXTS)  # the failed batch was embedded again, nothing lost
    assert sizes[:GROW_AFTER] == [2] * GROW_AFTER  # half the budget after the OOM ...
    assert sizes[GROW_AFTER] == 4  # ... and the full budget again after 8 good batches


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def dead_worker(device: str, unit: Unit) -> WorkerState:
    """A worker whose process really died of SIGKILL while it held `unit`."""
    process = multiprocessing.get_context("fork").Process(target=kill_self)
    process.start()
    process.join(timeout=30)
    assert process.exitcode == -signal.SIGKILL
    return WorkerState(device=device, process=process, unit=unit)


def test_a_unit_that_killed_one_worker_goes_back_then_one_that_killed_two_fails():
    telemetry = ModelTelemetry(model="tiny", fingerprint="f")
    plan = Plan(listed=True, order=[0, 1, 2], inputs=["a", "b", "c"], counts=[3, 3, 3])
    plan.done = {0}  # the first text's vector reached the cache before the kill
    first = Unit(7, [0, 1, 2], ["a", "b", "c"], [3, 3, 3])
    lost_worker(SPEC, telemetry, dead_worker("cpu:1", first), plan)
    (retry,) = plan.waiting
    assert (retry.positions, retry.texts, retry.attempts) == ([1, 2], ["b", "c"], 1)
    plan.waiting.clear()  # handed to the next worker, which dies too
    with pytest.raises(ModelError, match=r"a work unit killed two workers \(last on cpu:0\)"):
        lost_worker(SPEC, telemetry, dead_worker("cpu:0", retry), plan)


def test_cuda_and_cuda_0_meet_on_one_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    leases = {d: DeviceLease("m", d, lease_dir=tmp_path) for d in ("cuda", "cuda:0", "cuda:1")}
    assert leases["cuda"].lock_path == leases["cuda:0"].lock_path
    assert leases["cuda:1"].lock_path != leases["cuda:0"].lock_path
    import torch

    if not torch.cuda.is_available():  # else the GPU's UUID names it
        assert leases["cuda:1"].lock_path.name == "cuda_5.lock"  # the physical device's name
    with leases["cuda"], pytest.raises(LeaseTimeoutError, match="lease on cuda:0"):
        DeviceLease("other", "cuda:0", lease_dir=tmp_path, max_wait_time=0.2).acquire()
