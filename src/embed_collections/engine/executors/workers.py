"""One worker process per device, asking the parent for token-sorted work units of one model.

The parent counts the missing texts' tokens while the workers start, lists what is still missing
once a worker holds its lease, sorts, and cuts the pending texts into units that shrink as the
work runs out (every device gets some, none waits long for another's last unit). Each worker
(spawned, so CUDA starts clean) takes its device's lease, loads the model once, and then asks for
a unit at a time over its own pipe; vectors go back batch by batch. The parent records which unit
it handed to which worker, so whatever kills a worker (even between the hand-out and its first
message), the texts of its unit not yet cached go back to the others. With an ONNX/OpenVINO
backend, or a torch model whose fast tokenizer reproduces its preprocessing, the parent counts
with that tokenizer and sends each text's truncated ids with its unit, so a text is tokenised
once. The parent is the only writer of the cache.
A watchdog fails the model when no worker makes progress for `stall_timeout` seconds, and a worker
exits when its parent dies (parent-death signal on Linux, a watching thread everywhere). Every
worker unloads before `embed_on_devices` returns: all devices finish one model before any loads
the next.
"""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from embed_collections.engine.backends.base import CountingTokenizer
from embed_collections.engine.backends.kinds import REFERENCE_BACKEND, RUNTIMES
from embed_collections.engine.cache import EmbeddingCache
from embed_collections.engine.devices import is_cuda
from embed_collections.engine.executors.batches import (
    MAX_BATCH_TEXTS,
    TOKENIZE_CHUNK,
    Faults,
    TokenBudget,
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
from embed_collections.engine.lease import LeaseEvent
from embed_collections.engine.lifeline import die_with_parent
from embed_collections.engine.models.remote_code import transformer_folder
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.engine.options import EngineOptions, default_batch_tokens
from embed_collections.engine.telemetry import DeviceTelemetry, ModelTelemetry, Timer
from embed_collections.errors import ModelError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
UNIT_BATCHES = 64  # most batches per work unit: what a killed worker's unit puts back in the queue
UNITS_PER_DEVICE = 3  # at least this many units per device in a job smaller than a batch
SMALL_BATCH = 16  # fewest texts in a unit cut inside a batch
START_TIMEOUT = 600.0  # seconds to wait for the first worker to hold its lease and load


@dataclass
class Unit:
    """A slice of the sorted pending texts: positions into the sorted list, texts, token counts."""

    unit_id: int
    positions: list[int]
    texts: list[str]
    counts: list[int]
    attempts: int = 0
    tokenised: list | None = None  # each text's truncated ids, from the parent's count
    tag: str | None = None  # of the tokenizer that made them (`CountingTokenizer.tag`)


@dataclass
class WorkerState:
    """What the parent knows about one worker."""

    device: str
    process: Any
    conn: Any = None  # the parent's end of the worker's pipe
    finished: bool = False  # reported its end, or died
    idle: bool = False  # asked for a unit and got none yet
    loaded: bool = False  # holds its model (else still waiting for its lease or loading)
    unit: Unit | None = None  # handed out and not finished: what its death would lose
    chunks: int = 0  # what the parent cached from it, counted for a worker that dies
    tokens: int = 0


def worker_main(
    spec: ModelSpec, options: EngineOptions, device: str, cpu_workers: int, conn, parent_pid: int
):
    """The body of a worker process: lease, load, then embed the units the parent hands out."""
    die_with_parent(parent_pid)
    events: list[LeaseEvent] = []
    stats = DeviceTelemetry(device=device)
    try:
        threads = None
        if device.startswith("cpu") and cpu_workers > 1:  # share the cores, never oversubscribe
            threads = max(1, (os.cpu_count() or 1) // cpu_workers)
            # A runtime takes `threads` at load; torch is not imported for it (~1 s of a start).
            if decided_backend(options) == REFERENCE_BACKEND:
                import torch

                torch.set_num_threads(threads)
        if is_cuda(device):
            import torch

            torch.cuda.set_device(device)  # else cuda:0 stays current for streams and kernels
        Faults(device).before_lease()
        with lease_for(spec, device, options, events) as lease:
            conn.send(("leased", device))
            if conn.recv():  # the parent still has work for one more device
                with Timer() as load_timer:
                    backend = lease.hold(
                        load_backend(spec, decided_backend(options), options, device, threads)
                    )
                conn.send(
                    ("ready", device, events[-1].wait_seconds, load_timer.seconds,
                     backend.dim, backend.max_seq_length)
                )  # fmt: skip
                embed_units(spec, options, device, backend, stats, conn)
                backend.unload()
        stats.peak_memory_bytes = events[-1].peak_memory_bytes if events else None
        conn.send(("stopped", device, asdict(stats), [e.to_dict() for e in events]))
    except (EOFError, BrokenPipeError):  # the parent is gone: nobody to report to
        os._exit(1)
    except Exception as error:  # the worker's boundary: the parent turns it into a ModelError
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        conn.send(("error", device, message))


def embed_units(spec, options, device, backend, stats: DeviceTelemetry, conn) -> None:
    """Embed units until the parent answers None; one token budget for them all (an OOM's
    halving outlives the unit that hit it)."""
    budget = TokenBudget(options.max_batch_tokens or default_batch_tokens(device))
    while (unit := conn.recv()) is not None:
        started = time.perf_counter()

        def deliver(rows: list[int], vectors: np.ndarray, unit: Unit = unit) -> None:
            conn.send(("vectors", device, [unit.positions[r] for r in rows], vectors))

        skipped: list[int] = []
        if unit.tokenised is not None and unit.tag:  # the parent's count: tokenised once
            backend.hold(unit.texts, unit.tokenised, unit.tag)
        run_batches(
            backend, unit.texts, unit.counts, options.max_batch_tokens,
            options.batch_size, stats, deliver, skipped.append, spec.name, budget,
        )  # fmt: skip
        stats.seconds += time.perf_counter() - started
        conn.send(("finished", device, unit.unit_id, [unit.positions[r] for r in skipped]))


def count_tokens_in_parent(
    spec: ModelSpec, inputs: list[str], backend: str
) -> tuple[list[int], list | None, str | None]:
    """Token counts for sorting, from the model's own tokenizer (no model weights loaded), and
    each text's truncated ids, which go to the workers with the units (with the tokenizer's tag:
    a worker takes them only from an equal tokenizer, else it tokenises each batch itself)."""
    if not inputs:
        return [], None, None
    counter = parent_counter(spec, backend)
    counts: list[int] = []
    tokenised: list = []
    for start in range(0, len(inputs), TOKENIZE_CHUNK):
        chunk = inputs[start : start + TOKENIZE_CHUNK]
        if isinstance(counter, CountingTokenizer):
            more, ids = counter.tokenise(chunk)
            counts.extend(more)
            tokenised.extend(ids)
        else:  # transformers' tokenizer without a fast twin: counts only
            encoded = counter(
                chunk, add_special_tokens=True, truncation=False, padding=False, verbose=False
            )
            counts.extend(len(ids) for ids in encoded["input_ids"])
    tag = counter.tag if isinstance(counter, CountingTokenizer) else None
    return counts, tokenised or None, tag


def parent_counter(spec: ModelSpec, backend: str) -> Any:
    """The tokenizer the workers' model will run, as a `CountingTokenizer`: a runtime backend's
    export tokenizer (the `tokenizers` library: 0.34 s for 1,476 texts against 2.35 s through
    transformers, which it does not import); for torch the model's fast tokenizer as
    sentence-transformers loads it, truncated at the model's configured window. Else the
    transformers tokenizer itself, to count."""
    if backend.partition("-")[0] in RUNTIMES:  # an export's own tokenizer
        from embed_collections.engine.backends.export import export_tokenizer

        return export_tokenizer(spec, backend)
    from transformers import AutoTokenizer

    folder = transformer_folder(spec.path) or spec.path
    tokenizer = AutoTokenizer.from_pretrained(
        str(folder), trust_remote_code=spec.trust_remote_code, local_files_only=True
    )
    config_file = folder / "sentence_bert_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    limit = spec.settings.max_seq_length or config.get("max_seq_length")
    fast = getattr(tokenizer, "backend_tokenizer", None)
    if not limit or fast is None:
        return tokenizer
    return CountingTokenizer(fast, int(limit), bool(config.get("do_lower_case")))


def count_missing(spec, texts, missing: list[bytes], backend: str, plan: Plan) -> None:
    """Count and tokenise the missing texts (digests) not counted yet, into `plan.counted`
    (digest -> (count, ids or None))."""
    fresh = [d for d in missing if d not in plan.counted]
    counts, tokenised, tag = count_tokens_in_parent(spec, prefixed(spec, texts, fresh), backend)
    plan.counted.update(zip(fresh, zip(counts, tokenised or [None] * len(fresh))))
    plan.tag = plan.tag or tag


def cut_units(
    counts: list[int], limit: int, max_tokens: int, max_texts: int, devices: int = 1
) -> list[list[int]]:
    """Positions of the sorted texts grouped into work units that shrink as the work runs out
    (guided self-scheduling): a unit holds about 1/(2 x devices) of the tokens not yet cut, in
    whole batches, at least one batch and at most UNIT_BATCHES. The first units spare round
    trips; the last are single batches, so no device waits long at the end for another's last
    unit. A job too small for that is cut inside its batch into UNITS_PER_DEVICE units per device
    (never under SMALL_BATCH texts), so every device still gets work.
    """
    tokens = [max(1, min(count, limit)) for count in counts]
    left = sum(tokens)
    floor = min(max_tokens, left / (devices * UNITS_PER_DEVICE))
    max_texts = max_texts or MAX_BATCH_TEXTS
    units: list[list[int]] = []
    start = 0
    while start < len(counts):
        target = max(floor, left / (2 * devices))
        end = next_batch_end(counts, start, limit, max_tokens, max_texts)
        spent = sum(tokens[start:end])
        if spent > target:  # one batch is more than a unit: cut it by text
            end, spent = start, 0
            while end < len(counts) and (spent < target or end - start < SMALL_BATCH):
                spent, end = spent + tokens[end], end + 1
        for _ in range(UNIT_BATCHES - 1):
            if end >= len(counts):
                break
            after = next_batch_end(counts, end, limit, max_tokens, max_texts)
            more = sum(tokens[end:after])
            if spent + more > target:
                break
            end, spent = after, spent + more
        units.append(list(range(start, end)))
        left -= spent
        start = end
    return units


@dataclass
class Plan:
    """The parent's view of one model's work: sorted inputs, units waiting, positions done."""

    listed: bool = False
    limit: int = 0
    missing: list[bytes] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    tokenised: list | None = None
    tag: str | None = None
    counted: dict = field(default_factory=dict)  # digest -> (token count, ids or None)
    waiting: collections.deque[Unit] = field(default_factory=collections.deque)
    done: set[int] = field(default_factory=set)
    skipped: list[int] = field(default_factory=list)
    next_id: int = 0
    progress_at: float = field(default_factory=time.perf_counter)  # the watchdog's clock

    @property
    def complete(self) -> bool:
        return self.listed and len(self.done) >= len(self.order)

    def add_unit(self, positions: list[int], attempts: int = 0) -> None:
        """Queue a unit of these sorted positions."""
        unit = Unit(
            self.next_id,
            positions,
            [self.inputs[p] for p in positions],
            [self.counts[p] for p in positions],
            attempts,
            [self.tokenised[p] for p in positions] if self.tokenised is not None else None,
            self.tag,
        )
        self.next_id += 1
        self.waiting.append(unit)


def start_workers(spec: ModelSpec, options: EngineOptions, devices: list[str]) -> dict:
    """One spawned process per device, each with its own pipe to this process."""
    context = multiprocessing.get_context("spawn")
    cpu_workers = sum(1 for d in devices if d.startswith("cpu"))
    workers: dict[str, WorkerState] = {}
    for device in devices:
        mine, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=worker_main,
            args=(spec, options, device, cpu_workers, theirs, os.getpid()),
            name=f"embed-{device}",
            daemon=True,
        )
        workers[device] = WorkerState(device, process, mine)
        process.start()
        theirs.close()  # only the worker holds its end: its death reads as end-of-file here
    return workers


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
    started = time.perf_counter()
    workers = start_workers(spec, options, devices)
    plan = Plan()
    try:
        # Count what is missing while the workers start and load; once a worker holds its
        # lease, list_pending keeps what is still missing (another run may have embedded some).
        missing = cache.missing(fingerprint, texts)
        count_missing(spec, texts, missing, decided_backend(options), plan)
        with progress_bar(spec, 0, options) as bar:
            while not all(w.finished for w in workers.values()):
                open_conns = {w.conn: w for w in workers.values() if not w.finished}
                for ready in wait(list(open_conns), timeout=POLL_SECONDS):
                    worker = open_conns[ready]
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):  # dead: every message it sent was read first
                        lost_worker(spec, telemetry, worker, plan)
                        continue
                    handle(message, spec, fingerprint, texts, cache, options, telemetry, events,
                           workers, plan, bar)  # fmt: skip
                dispatch(workers, plan)
                check_progress(spec, options, workers, plan, started)
    finally:
        for worker in workers.values():
            if worker.process.is_alive():
                worker.process.terminate()
            worker.process.join(timeout=30)
            worker.conn.close()
    telemetry.embed_seconds = time.perf_counter() - started
    report_non_finite(telemetry, [plan.inputs[p] for p in plan.skipped])


def check_progress(spec, options, workers, plan: Plan, started: float) -> None:
    """Fail the model when every worker died, none started, or none progressed for too long."""
    alive = [w for w in workers.values() if not w.finished]
    if not alive and not plan.complete:
        raise ModelError(
            f'Model "{spec.name}": every worker ({", ".join(workers)}) died; '
            f"{len(plan.done)} of {len(plan.order)} texts are cached, re-run to embed the rest"
        )
    waited = time.perf_counter() - started
    if not plan.listed and waited > START_TIMEOUT + options.lease_timeout:
        raise ModelError(f'Model "{spec.name}": no worker started on {", ".join(workers)}')
    busy = [w.device for w in alive if w.unit is not None]
    stalled = time.perf_counter() - plan.progress_at
    if plan.listed and busy and stalled > options.stall_timeout:
        raise ModelError(
            f'Model "{spec.name}": no progress on {", ".join(busy)} for {stalled:.0f}s; '
            f"{len(plan.done)} of {len(plan.order)} texts are cached, re-run to embed the rest "
            "(or raise --stall-timeout for a slow device)"
        )


def dispatch(workers: dict, plan: Plan) -> None:
    """Hand waiting units to idle workers; once every text is done, tell idle workers to stop."""
    for worker in workers.values():
        if worker.finished or not worker.idle:
            continue
        if plan.waiting:
            unit = plan.waiting.popleft()
            if send(worker, unit):
                worker.unit, worker.idle = unit, False
                plan.progress_at = time.perf_counter()
            else:
                plan.waiting.appendleft(unit)  # its death shows as end-of-file next
        elif plan.complete:
            send(worker, None)
            worker.idle = False
    if plan.complete:  # a device still waiting for its lease or loading has nothing left to do
        for worker in workers.values():
            if not worker.finished and not worker.loaded:
                worker.process.terminate()
                worker.process.join(timeout=30)
                worker.finished = True


def send(worker: WorkerState, item: Any) -> bool:
    """Send to a worker; False when it is already gone."""
    try:
        worker.conn.send(item)
        return True
    except (BrokenPipeError, EOFError, OSError):
        return False


def handle(message, spec, fingerprint, texts, cache, options, telemetry, events, workers, plan,
           bar) -> None:  # fmt: skip
    """Act on one message from a worker (the parent is the only cache writer)."""
    kind, device = message[0], message[1]
    worker = workers[device]
    plan.progress_at = time.perf_counter()
    if kind == "error":
        raise ModelError(f'Model "{spec.name}" failed on {device}: {message[2]}')
    if kind == "leased":
        # Load only where there is work left: a late device would load for nothing.
        send(worker, not plan.listed or bool(plan.waiting))
    elif kind == "ready":
        _, _, wait_seconds, load_seconds, dim, max_seq_length = message
        telemetry.lease_wait_seconds = max(telemetry.lease_wait_seconds, wait_seconds)
        record_load(spec, fingerprint, cache, telemetry, _Loaded(dim, max_seq_length), load_seconds)
        worker.idle = worker.loaded = True
        if not plan.listed:
            list_pending(spec, fingerprint, texts, cache, options, telemetry, workers, plan, bar,
                         max_seq_length)  # fmt: skip
    elif kind == "vectors":
        _, _, positions, vectors = message
        fresh = [i for i, p in enumerate(positions) if p not in plan.done]
        cache.put_vectors(
            fingerprint,
            [plan.missing[plan.order[positions[i]]] for i in fresh],
            vectors[fresh],
            [plan.counts[positions[i]] for i in fresh],
        )
        plan.done.update(positions[i] for i in fresh)
        worker.chunks += len(fresh)
        worker.tokens += sum(min(plan.counts[positions[i]], plan.limit) for i in fresh)
        bar.update(len(fresh))
    elif kind == "finished":
        _, _, _, skipped = message
        for position in skipped:
            if position not in plan.done:
                plan.done.add(position)
                plan.skipped.append(position)
        worker.unit, worker.idle = None, True
    elif kind == "stopped":
        worker.finished = True
        _, _, stats, lease_events = message
        if stats["chunks"] or stats["batches"]:  # a device that loaded nothing is not reported
            telemetry.absorb(DeviceTelemetry(**stats))
        events.extend(LeaseEvent(**e) for e in lease_events)


def list_pending(spec, fingerprint, texts, cache, options, telemetry, workers, plan, bar,
                 max_seq_length: int) -> None:  # fmt: skip
    """The first lease is held: only now list what is still missing, sort it and cut units."""
    plan.listed = True
    plan.limit = max_seq_length
    plan.missing = cache.missing(fingerprint, texts)
    telemetry.cache_hits = len(texts) - len(plan.missing)
    telemetry.cache_misses = len(plan.missing)
    count_missing(spec, texts, plan.missing, decided_backend(options), plan)
    inputs = prefixed(spec, texts, plan.missing)
    counted = [plan.counted[d] for d in plan.missing]
    plan.counted = {}
    plan.order = sorted(range(len(inputs)), key=lambda i: -counted[i][0])
    plan.inputs = [inputs[i] for i in plan.order]
    plan.counts = [counted[i][0] for i in plan.order]
    if counted and all(ids is not None for _, ids in counted):
        plan.tokenised = [counted[i][1] for i in plan.order]
    units = cut_units(
        plan.counts, max_seq_length, options.max_batch_tokens, options.batch_size, len(workers)
    )
    for positions in units:
        plan.add_unit(positions)
    bar.reset(len(plan.order))
    log.info(
        "%s: embedding %d texts (%d cached) on %s in %d units",
        spec.name, len(plan.missing), telemetry.cache_hits, ", ".join(workers), len(units),
    )  # fmt: skip


@dataclass
class _Loaded:
    """What the parent learns about a model a worker loaded (record_load reads these two)."""

    dim: int
    max_seq_length: int


def lost_worker(spec: ModelSpec, telemetry: ModelTelemetry, worker: WorkerState, plan: Plan):
    """A worker's pipe ended without its "stopped": queue again what of its unit is not cached;
    a unit that killed two workers fails the model."""
    worker.finished = True
    worker.process.join(timeout=5)
    if worker.chunks:
        telemetry.absorb(DeviceTelemetry(worker.device, chunks=worker.chunks, tokens=worker.tokens))
    unit, worker.unit = worker.unit, None
    rest = [p for p in unit.positions if p not in plan.done] if unit else []
    log.warning(
        "%s: worker on %s died (exit code %s)%s",
        spec.name, worker.device, worker.process.exitcode,
        f"; {len(rest)} texts of its unit go back to the queue" if unit else "",
    )  # fmt: skip
    if not rest or unit is None:
        return
    if unit.attempts >= 1:
        raise ModelError(
            f'Model "{spec.name}": a work unit killed two workers (last on {worker.device}); '
            "re-run to embed the rest, or lower --max-batch-tokens"
        )
    plan.add_unit(rest, attempts=unit.attempts + 1)
