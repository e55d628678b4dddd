"""One worker process per device, pulling token-sorted work units of one model from a shared queue.

The parent lists what is missing once a worker holds its lease, counts tokens, sorts, cuts the
pending texts into units and queues them; each worker (spawned, so CUDA starts clean) takes its
device's lease, loads the model once, and sends vectors back batch by batch. The parent is the
only writer of the cache, so a killed worker loses at most the rest of its current unit, which
the parent queues again for the others. Units are pulled, not assigned, so unequal devices and a
late lease balance themselves. Every worker unloads before `embed_on_devices` returns: all devices
finish one model before any loads the next.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from embed_collections.engine.batches import (
    MAX_BATCH_TEXTS,
    TOKENIZE_CHUNK,
    Faults,
    decided_backend,
    lease_for,
    load_backend,
    next_batch_end,
    prefixed,
    progress_bar,
    record_load,
    report_non_finite,
    run_batches,
)
from embed_collections.engine.cache import EmbeddingCache
from embed_collections.engine.lease import LeaseEvent
from embed_collections.engine.models import ModelSpec, transformer_folder
from embed_collections.engine.options import EngineOptions
from embed_collections.engine.telemetry import DeviceTelemetry, ModelTelemetry, Timer
from embed_collections.errors import ModelError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
UNIT_BATCHES = 8  # batches per work unit: small enough to balance, large enough to keep order
START_TIMEOUT = 600.0  # seconds to wait for the first worker to hold its lease and load


@dataclass
class Unit:
    """A slice of the sorted pending texts: positions into the sorted list, texts, token counts."""

    unit_id: int
    positions: list[int]
    texts: list[str]
    counts: list[int]
    attempts: int = 0


@dataclass
class WorkerState:
    """What the parent knows about one worker."""

    device: str
    process: Any
    finished: bool = False  # reported its end, or died
    chunks: int = 0  # what the parent cached from it, counted for a worker that dies
    tokens: int = 0
    unit: Unit | None = None
    received: set[int] = field(default_factory=set)


def worker_main(
    spec: ModelSpec, options: EngineOptions, device: str, cpu_workers: int, tasks, results
):
    """The body of a worker process: lease, load, then embed units until told to stop."""
    events: list[LeaseEvent] = []
    stats = DeviceTelemetry(device=device)
    try:
        threads = None
        if device.startswith("cpu") and cpu_workers > 1:  # share the cores, never oversubscribe
            import torch

            threads = max(1, (os.cpu_count() or 1) // cpu_workers)
            torch.set_num_threads(threads)
        Faults(device).before_lease()
        with lease_for(spec, device, options, events) as lease:
            with Timer() as load_timer:
                backend = lease.hold(
                    load_backend(spec, decided_backend(options), options, device, threads)
                )
            results.put(
                ("ready", device, events[-1].wait_seconds, load_timer.seconds,
                 backend.dim, backend.max_seq_length)
            )  # fmt: skip
            while (unit := tasks.get()) is not None:
                results.put(("started", device, unit.unit_id))
                started = time.perf_counter()

                def deliver(rows: list[int], vectors: np.ndarray, unit: Unit = unit) -> None:
                    results.put(("vectors", device, unit.unit_id, rows, vectors))

                skipped: list[int] = []
                run_batches(
                    backend, unit.texts, unit.counts, options.max_batch_tokens,
                    options.batch_size, stats, deliver, skipped.append, spec.name,
                )  # fmt: skip
                stats.seconds += time.perf_counter() - started
                results.put(("finished", device, unit.unit_id, skipped))
            backend.unload()
        stats.peak_memory_bytes = events[-1].peak_memory_bytes if events else None
        results.put(("stopped", device, asdict(stats), [e.to_dict() for e in events]))
    except Exception as error:  # the worker's boundary: the parent turns it into a ModelError
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        results.put(("error", device, message))


def count_tokens_in_parent(spec: ModelSpec, inputs: list[str]) -> list[int]:
    """Token counts for sorting, from the model's own tokenizer (no model weights loaded)."""
    from transformers import AutoTokenizer

    folder = transformer_folder(spec.path) or spec.path
    tokenizer = AutoTokenizer.from_pretrained(
        str(folder), trust_remote_code=spec.trust_remote_code, local_files_only=True
    )
    counts: list[int] = []
    for start in range(0, len(inputs), TOKENIZE_CHUNK):
        encoded = tokenizer(
            inputs[start : start + TOKENIZE_CHUNK],
            add_special_tokens=True, truncation=False, padding=False, verbose=False,
        )  # fmt: skip
        counts.extend(len(ids) for ids in encoded["input_ids"])
    return counts


def cut_units(counts: list[int], limit: int, max_tokens: int, max_texts: int) -> list[list[int]]:
    """Positions of the sorted texts grouped into units of about UNIT_BATCHES batches each."""
    units: list[list[int]] = []
    position = 0
    while position < len(counts):
        end = position
        for _ in range(UNIT_BATCHES):
            if end >= len(counts):
                break
            end = next_batch_end(counts, end, limit, max_tokens, max_texts or MAX_BATCH_TEXTS)
        units.append(list(range(position, end)))
        position = end
    return units


def embed_on_devices(
    spec: ModelSpec,
    fingerprint: str,
    texts: dict[bytes, str],
    cache: EmbeddingCache,
    options: EngineOptions,
    events: list[LeaseEvent],
    telemetry: ModelTelemetry,
    devices: list[str],
) -> None:
    """Embed a model's missing texts on several devices, one spawned worker process each."""
    context = multiprocessing.get_context("spawn")
    tasks, results = context.Queue(), context.Queue()
    cpu_workers = sum(1 for d in devices if d.startswith("cpu"))
    workers = {
        device: WorkerState(
            device,
            context.Process(
                target=worker_main,
                args=(spec, options, device, cpu_workers, tasks, results),
                name=f"embed-{device}",
                daemon=True,
            ),
        )
        for device in devices
    }
    for worker in workers.values():
        worker.process.start()
    plan = Plan()
    stop_sent = False
    started = time.perf_counter()
    try:
        with progress_bar(spec, 0, options) as bar:
            while True:
                try:
                    message = results.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    message = None
                if message is not None:
                    handle(message, spec, fingerprint, texts, cache, options, telemetry, events,
                           workers, plan, tasks, bar)  # fmt: skip
                requeue_dead_workers(spec, telemetry, workers, plan.pending, tasks)
                if plan.listed and len(plan.done) >= len(plan.order) and not stop_sent:
                    for _ in workers:
                        tasks.put(None)
                    stop_sent = True
                if stop_sent and all(w.finished for w in workers.values()):
                    break
                if not stop_sent and all(w.finished for w in workers.values()):
                    raise ModelError(
                        f'Model "{spec.name}": every worker ({", ".join(devices)}) died; '
                        f"{len(plan.done)} of {len(plan.order)} texts are cached, "
                        "re-run to embed the rest"
                    )
                waited = time.perf_counter() - started
                if not plan.listed and waited > START_TIMEOUT + options.lease_timeout:
                    raise ModelError(f'Model "{spec.name}": no worker started on {devices}')
    finally:
        for worker in workers.values():
            if worker.process.is_alive():
                worker.process.terminate()
            worker.process.join(timeout=30)
    telemetry.embed_seconds = time.perf_counter() - started
    report_non_finite(telemetry, [plan.inputs[p] for p in plan.skipped])


@dataclass
class Plan:
    """The parent's view of one model's work: sorted inputs, units out, positions done."""

    listed: bool = False
    limit: int = 0
    missing: list[bytes] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    pending: dict[int, Unit] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    skipped: list[int] = field(default_factory=list)


def handle(message, spec, fingerprint, texts, cache, options, telemetry, events, workers, plan,
           tasks, bar) -> None:  # fmt: skip
    """Act on one message from a worker (the parent is the only cache writer)."""
    kind, device = message[0], message[1]
    worker = workers[device]
    if kind == "error":
        raise ModelError(f'Model "{spec.name}" failed on {device}: {message[2]}')
    if kind == "ready":
        _, _, wait, load_seconds, dim, max_seq_length = message
        telemetry.lease_wait_seconds = max(telemetry.lease_wait_seconds, wait)
        record_load(spec, fingerprint, cache, telemetry, _Loaded(dim, max_seq_length), load_seconds)
        if plan.listed:
            return
        # The first lease is held: only now list what is still missing.
        plan.listed = True
        plan.limit = max_seq_length
        plan.missing = cache.missing(fingerprint, texts)
        telemetry.cache_hits = len(texts) - len(plan.missing)
        telemetry.cache_misses = len(plan.missing)
        inputs = prefixed(spec, texts, plan.missing)
        counts = count_tokens_in_parent(spec, inputs) if inputs else []
        plan.order = sorted(range(len(inputs)), key=lambda i: -counts[i])
        plan.inputs = [inputs[i] for i in plan.order]
        plan.counts = [counts[i] for i in plan.order]
        units = cut_units(plan.counts, max_seq_length, options.max_batch_tokens, options.batch_size)
        for unit_id, positions in enumerate(units):
            plan.pending[unit_id] = queue_unit(tasks, unit_id, positions, plan.inputs, plan.counts)
        bar.reset(len(plan.order))
        log.info(
            "%s: embedding %d texts (%d cached) on %s in %d units",
            spec.name, len(plan.missing), telemetry.cache_hits, ", ".join(workers), len(units),
        )  # fmt: skip
    elif kind == "started":
        worker.unit = plan.pending.get(message[2])
        worker.received = set()
    elif kind == "vectors":
        _, _, unit_id, rows, vectors = message
        unit = plan.pending.get(unit_id)
        if unit is None:
            return
        positions = [unit.positions[r] for r in rows]
        fresh = [i for i, p in enumerate(positions) if p not in plan.done]
        cache.put_vectors(
            fingerprint,
            [plan.missing[plan.order[positions[i]]] for i in fresh],
            vectors[fresh],
            [plan.counts[positions[i]] for i in fresh],
        )
        plan.done.update(positions[i] for i in fresh)
        worker.received.update(rows)
        worker.chunks += len(fresh)
        worker.tokens += sum(min(plan.counts[positions[i]], plan.limit) for i in fresh)
        bar.update(len(fresh))
    elif kind == "finished":
        _, _, unit_id, rows = message
        unit = plan.pending.pop(unit_id, None)
        worker.unit = None
        for r in rows if unit else []:
            if unit.positions[r] not in plan.done:
                plan.done.add(unit.positions[r])
                plan.skipped.append(unit.positions[r])
    elif kind == "stopped":
        worker.finished = True
        _, _, stats, lease_events = message
        telemetry.absorb(DeviceTelemetry(**stats))
        events.extend(LeaseEvent(**e) for e in lease_events)


@dataclass
class _Loaded:
    """What the parent learns about a model a worker loaded (record_load reads these two)."""

    dim: int
    max_seq_length: int


def queue_unit(tasks, unit_id: int, positions: list[int], inputs, counts, attempts: int = 0):
    """Put a unit on the task queue and return it."""
    unit = Unit(unit_id, positions, [inputs[p] for p in positions], [counts[p] for p in positions])
    unit.attempts = attempts
    tasks.put(unit)
    return unit


def requeue_dead_workers(
    spec: ModelSpec, telemetry: ModelTelemetry, workers: dict, pending: dict, tasks
) -> None:
    """Queue again what a dead worker had not sent back; a unit that killed two workers fails."""
    for worker in workers.values():
        if worker.finished or worker.process.is_alive() or worker.process.exitcode == 0:
            continue  # a clean exit's "stopped" message is still on its way
        worker.finished = True
        telemetry.absorb(DeviceTelemetry(worker.device, chunks=worker.chunks, tokens=worker.tokens))
        unit = worker.unit
        log.warning(
            "%s: worker on %s died (exit code %s)%s",
            spec.name, worker.device, worker.process.exitcode,
            f"; {len(unit.positions) - len(worker.received)} texts of its unit go back to the queue"
            if unit else "",
        )  # fmt: skip
        if unit is None:
            continue
        if unit.attempts >= 1:
            raise ModelError(
                f'Model "{spec.name}": a work unit killed two workers (last on {worker.device}); '
                "re-run to embed the rest, or lower --max-batch-tokens"
            )
        rest = [i for i in range(len(unit.positions)) if i not in worker.received]
        new_id = max(pending, default=0) + 1000000
        pending.pop(unit.unit_id, None)
        retry = Unit(
            new_id,
            [unit.positions[i] for i in rest],
            [unit.texts[i] for i in rest],
            [unit.counts[i] for i in rest],
            attempts=unit.attempts + 1,
        )
        pending[new_id] = retry
        tasks.put(retry)
        worker.unit = None
