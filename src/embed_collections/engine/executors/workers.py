"""Device worker processes: one per device, each asking its parent (`pool.DevicePool`) for
token-sorted work units of one model, and the typed messages between them.

Each worker (spawned, so CUDA starts clean) takes its device's lease, loads the model once, and
then asks for a unit at a time over its own pipe; vectors go back batch by batch. With an
ONNX/OpenVINO backend, or a torch model whose fast tokenizer reproduces its preprocessing, the
parent counts with that tokenizer and sends each text's truncated ids with its unit, so a text
is tokenised once. A worker exits when its parent dies (parent-death signal on Linux, a watching
thread everywhere).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from embed_collections.engine.backends.base import CountingTokenizer
from embed_collections.engine.backends.kinds import REFERENCE_BACKEND, RUNTIMES
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
    run_batches,
)
from embed_collections.engine.lease import LeaseEvent
from embed_collections.engine.lifeline import die_with_parent
from embed_collections.engine.models.remote_code import transformer_folder
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.engine.options import EngineOptions, default_batch_tokens
from embed_collections.engine.telemetry import DeviceTelemetry, Timer

UNIT_BATCHES = 64  # most batches per work unit: what a killed worker's unit puts back in the queue
UNITS_PER_DEVICE = 3  # at least this many units per device in a job smaller than a batch
SMALL_BATCH = 16  # fewest texts in a unit cut inside a batch


@dataclass(frozen=True)
class Leased:
    """The worker holds its device's lease; the parent answers whether to load (a bool)."""

    device: str


@dataclass(frozen=True)
class Ready:
    """The model is loaded: the worker asks for units (the parent answers a `Unit` or None)."""

    device: str
    wait_seconds: float
    load_seconds: float
    dim: int
    max_seq_length: int


@dataclass(frozen=True)
class Vectors:
    """One batch's vectors, by position in the parent's sorted list."""

    device: str
    positions: list[int]
    vectors: np.ndarray


@dataclass(frozen=True)
class Finished:
    """A unit is done; `skipped` positions stayed non-finite in float32."""

    device: str
    unit_id: int
    skipped: list[int]


@dataclass(frozen=True)
class Stopped:
    """The worker's end: its telemetry and lease events."""

    device: str
    stats: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Failed:
    """The worker failed (the parent turns it into a ModelError naming the device)."""

    device: str
    message: str


WorkerMessage = Leased | Ready | Vectors | Finished | Stopped | Failed


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
            conn.send(Leased(device))
            if conn.recv():  # the parent still has work for one more device
                with Timer() as load_timer:
                    backend = lease.hold(
                        load_backend(spec, decided_backend(options), options, device, threads)
                    )
                conn.send(
                    Ready(device, events[-1].wait_seconds, load_timer.seconds,
                          backend.dim, backend.max_seq_length)
                )  # fmt: skip
                embed_units(spec, options, device, backend, stats, conn)
                backend.unload()
        stats.peak_memory_bytes = events[-1].peak_memory_bytes if events else None
        conn.send(Stopped(device, asdict(stats), [e.to_dict() for e in events]))
    except (EOFError, BrokenPipeError):  # the parent is gone: nobody to report to
        os._exit(1)
    except Exception as error:  # the worker's boundary: the parent turns it into a ModelError
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        conn.send(Failed(device, message))


def embed_units(spec, options, device, backend, stats: DeviceTelemetry, conn) -> None:
    """Embed units until the parent answers None; one token budget for them all (an OOM's
    halving outlives the unit that hit it)."""
    budget = TokenBudget(options.max_batch_tokens or default_batch_tokens(device))
    while (unit := conn.recv()) is not None:
        started = time.perf_counter()

        def deliver(rows: list[int], vectors: np.ndarray, unit: Unit = unit) -> None:
            conn.send(Vectors(device, [unit.positions[r] for r in rows], vectors))

        skipped: list[int] = []
        if unit.tokenised is not None and unit.tag:  # the parent's count: tokenised once
            backend.hold(unit.texts, unit.tokenised, unit.tag)
        run_batches(
            backend, unit.texts, unit.counts, options.max_batch_tokens,
            options.batch_size, stats, deliver, skipped.append, spec.name, budget,
        )  # fmt: skip
        stats.seconds += time.perf_counter() - started
        conn.send(Finished(device, unit.unit_id, [unit.positions[r] for r in skipped]))


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
