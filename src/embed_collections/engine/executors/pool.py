"""The workers' parent: one `DevicePool` per model embeds its missing texts on several devices,
one worker process each (`workers.py`), and is the only writer of the cache.

The pool counts the missing texts' tokens while the workers start, lists what is still missing
once a worker holds its lease, sorts, and cuts the pending texts into units that shrink as the
work runs out (every device gets some, none waits long for another's last unit). It records which
unit it handed to which worker, so whatever kills a worker (even between the hand-out and its
first message), the texts of its unit not yet cached go back to the others. A watchdog fails the
model when no worker makes progress for `stall_timeout` seconds. Every worker unloads before
`run` returns: all devices finish one model before any loads the next.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from embed_collections.engine.cache import EmbeddingCache
from embed_collections.engine.executors.batches import (
    decided_backend,
    prefixed,
    progress_bar,
    record_load,
    report_non_finite,
)
from embed_collections.engine.executors.workers import (
    Failed,
    Finished,
    Leased,
    Ready,
    Stopped,
    Unit,
    Vectors,
    WorkerMessage,
    count_tokens_in_parent,
    cut_units,
    worker_main,
)
from embed_collections.engine.lease import LeaseEvent
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.engine.options import EngineOptions
from embed_collections.engine.telemetry import DeviceTelemetry, ModelTelemetry
from embed_collections.errors import ModelError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
START_TIMEOUT = 600.0  # seconds to wait for the first worker to hold its lease and load


@dataclass(frozen=True)
class Job:
    """One model's work: its texts (digest -> text), where vectors go, how the model runs, and
    where the pool reports (telemetry, lease events)."""

    spec: ModelSpec
    fingerprint: str
    texts: dict[bytes, str]
    cache: EmbeddingCache
    options: EngineOptions
    telemetry: ModelTelemetry
    events: list[LeaseEvent]


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


@dataclass(frozen=True)
class Loaded:
    """What the parent learns about a model a worker loaded (`record_load` reads these two)."""

    dim: int
    max_seq_length: int


def embed_on_devices(job: Job, devices: list[str]) -> None:
    """Embed a model's missing texts on several devices, one spawned worker process each."""
    DevicePool(job, devices).run()


class DevicePool:
    """The worker processes of one model and what the parent knows of them and of the work."""

    def __init__(self, job: Job, devices: list[str]):
        self.job, self.devices = job, devices
        self.plan = Plan()
        self.workers: dict[str, WorkerState] = {}
        self.bar: Any = None

    def run(self) -> None:
        """Start the workers, feed them units until every text is cached, then stop them."""
        job, plan = self.job, self.plan
        started = time.perf_counter()
        self.start_workers()
        try:
            # Count what is missing while the workers start and load; once a worker holds its
            # lease, list_pending keeps what is still missing (another run may have embedded
            # some meanwhile).
            self.count_missing(job.cache.missing(job.fingerprint, job.texts))
            with progress_bar(job.spec, 0, job.options) as self.bar:
                while not all(w.finished for w in self.workers.values()):
                    open_conns = {w.conn: w for w in self.workers.values() if not w.finished}
                    for ready in wait(list(open_conns), timeout=POLL_SECONDS):
                        worker = open_conns[ready]
                        try:
                            message = worker.conn.recv()
                        except (EOFError, OSError):  # dead: every message it sent was read
                            lost_worker(job.spec, job.telemetry, worker, plan)
                            continue
                        self.handle(message)
                    self.dispatch()
                    self.check_progress(started)
        finally:
            for worker in self.workers.values():
                if worker.process.is_alive():
                    worker.process.terminate()
                worker.process.join(timeout=30)
                worker.conn.close()
        job.telemetry.embed_seconds = time.perf_counter() - started
        report_non_finite(job.telemetry, [plan.inputs[p] for p in plan.skipped])

    def start_workers(self) -> None:
        """One spawned process per device, each with its own pipe to this process."""
        context = multiprocessing.get_context("spawn")
        cpu_workers = sum(1 for d in self.devices if d.startswith("cpu"))
        for device in self.devices:
            mine, theirs = context.Pipe(duplex=True)
            process = context.Process(
                target=worker_main,
                args=(self.job.spec, self.job.options, device, cpu_workers, theirs, os.getpid()),
                name=f"embed-{device}",
                daemon=True,
            )
            self.workers[device] = WorkerState(device, process, mine)
            process.start()
            theirs.close()  # only the worker holds its end: its death reads as end-of-file here

    def count_missing(self, missing: list[bytes]) -> None:
        """Count and tokenise the missing texts (digests) not counted yet, into `plan.counted`
        (digest -> (count, ids or None))."""
        job, plan = self.job, self.plan
        fresh = [d for d in missing if d not in plan.counted]
        inputs = prefixed(job.spec, job.texts, fresh)
        counts, tokenised, tag = count_tokens_in_parent(
            job.spec, inputs, decided_backend(job.options)
        )
        plan.counted.update(zip(fresh, zip(counts, tokenised or [None] * len(fresh))))
        plan.tag = plan.tag or tag

    def handle(self, message: WorkerMessage) -> None:
        """Act on one message from a worker."""
        job, plan = self.job, self.plan
        worker = self.workers[message.device]
        plan.progress_at = time.perf_counter()
        if isinstance(message, Failed):
            raise ModelError(
                f'Model "{job.spec.name}" failed on {message.device}: {message.message}'
            )
        if isinstance(message, Leased):
            # Load only where there is work left: a late device would load for nothing.
            send(worker, not plan.listed or bool(plan.waiting))
        elif isinstance(message, Ready):
            job.telemetry.lease_wait_seconds = max(
                job.telemetry.lease_wait_seconds, message.wait_seconds
            )
            loaded = Loaded(message.dim, message.max_seq_length)
            record_load(job.spec, job.fingerprint, job.cache, job.telemetry, loaded,
                        message.load_seconds)  # fmt: skip
            worker.idle = worker.loaded = True
            if not plan.listed:
                self.list_pending(message.max_seq_length)
        elif isinstance(message, Vectors):
            self.cache_vectors(worker, message)
        elif isinstance(message, Finished):
            for position in message.skipped:
                if position not in plan.done:
                    plan.done.add(position)
                    plan.skipped.append(position)
            worker.unit, worker.idle = None, True
        elif isinstance(message, Stopped):
            worker.finished = True
            if message.stats["chunks"] or message.stats["batches"]:  # loaded nothing: unreported
                job.telemetry.absorb(DeviceTelemetry(**message.stats))
            job.events.extend(LeaseEvent(**e) for e in message.events)

    def cache_vectors(self, worker: WorkerState, message: Vectors) -> None:
        """Cache a batch's vectors (a unit given out twice may send a position twice)."""
        job, plan, positions = self.job, self.plan, message.positions
        fresh = [i for i, p in enumerate(positions) if p not in plan.done]
        job.cache.put_vectors(
            job.fingerprint,
            [plan.missing[plan.order[positions[i]]] for i in fresh],
            message.vectors[fresh],
            [plan.counts[positions[i]] for i in fresh],
        )
        plan.done.update(positions[i] for i in fresh)
        worker.chunks += len(fresh)
        worker.tokens += sum(min(plan.counts[positions[i]], plan.limit) for i in fresh)
        self.bar.update(len(fresh))

    def list_pending(self, max_seq_length: int) -> None:
        """The first lease is held: only now list what is still missing, sort it, cut units."""
        job, plan = self.job, self.plan
        plan.listed = True
        plan.limit = max_seq_length
        plan.missing = job.cache.missing(job.fingerprint, job.texts)
        job.telemetry.cache_hits = len(job.texts) - len(plan.missing)
        job.telemetry.cache_misses = len(plan.missing)
        self.count_missing(plan.missing)
        inputs = prefixed(job.spec, job.texts, plan.missing)
        counted = [plan.counted[d] for d in plan.missing]
        plan.counted = {}
        plan.order = sorted(range(len(inputs)), key=lambda i: -counted[i][0])
        plan.inputs = [inputs[i] for i in plan.order]
        plan.counts = [counted[i][0] for i in plan.order]
        if counted and all(ids is not None for _, ids in counted):
            plan.tokenised = [counted[i][1] for i in plan.order]
        options = job.options
        units = cut_units(
            plan.counts, max_seq_length, options.max_batch_tokens, options.batch_size,
            len(self.workers),
        )  # fmt: skip
        for positions in units:
            plan.add_unit(positions)
        self.bar.reset(len(plan.order))
        log.info(
            "%s: embedding %d texts (%d cached) on %s in %d units",
            job.spec.name, len(plan.missing), job.telemetry.cache_hits,
            ", ".join(self.workers), len(units),
        )  # fmt: skip

    def dispatch(self) -> None:
        """Hand waiting units to idle workers; once every text is done, tell idle workers to
        stop."""
        plan = self.plan
        for worker in self.workers.values():
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
        if plan.complete:  # a device still waiting for its lease or loading has nothing to do
            for worker in self.workers.values():
                if not worker.finished and not worker.loaded:
                    worker.process.terminate()
                    worker.process.join(timeout=30)
                    worker.finished = True

    def check_progress(self, started: float) -> None:
        """Fail the model when every worker died, none started, or none progressed for long."""
        spec, options, plan, workers = self.job.spec, self.job.options, self.plan, self.workers
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
                f"{len(plan.done)} of {len(plan.order)} texts are cached, re-run to embed the "
                "rest (or raise --stall-timeout for a slow device)"
            )


def send(worker: WorkerState, item: Any) -> bool:
    """Send to a worker; False when it is already gone."""
    try:
        worker.conn.send(item)
        return True
    except (BrokenPipeError, EOFError, OSError):
        return False


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
