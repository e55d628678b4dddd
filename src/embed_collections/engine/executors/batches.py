"""What every executor shares to embed one model on one device: the lease, loading, the batch loop.

The batch loop batches sorted texts by a token budget, tokenises the next batch on a thread while
the current one runs, halves the budget on out-of-memory (growing it back after a run of
successes) and re-runs a batch holding NaN/Inf vectors in float32; a text still non-finite is
reported and never cached. The in-process path (`embedding.py`) and the worker processes
(`workers.py`) both run it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed_collections.engine.backends import create_backend
from embed_collections.engine.backends.base import Batch, is_out_of_memory
from embed_collections.engine.backends.kinds import AUTO, REFERENCE_BACKEND, RUNTIMES
from embed_collections.engine.cache import EmbeddingCache
from embed_collections.engine.devices import is_cuda
from embed_collections.engine.lease import DeviceLease
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.engine.options import EngineOptions, default_batch_tokens
from embed_collections.engine.telemetry import MAX_REPORTED_TEXTS, DeviceTelemetry, ModelTelemetry
from embed_collections.errors import ModelError
from embed_collections.progress import Progress

log = logging.getLogger("embed_collections.engine.executors.local")

TOKENIZE_CHUNK = 4096  # texts tokenised per call, to bound memory on huge pending sets
MAX_BATCH_TEXTS = 1024  # a cap on texts per batch whatever the budget (very short texts)
GROW_AFTER = 8  # successful batches after an out-of-memory halving before the budget doubles
FAULT_VARIABLE = "EMBED_COLLECTIONS_FAULT"


def decided_backend(options: EngineOptions) -> str:
    """The backend preflight decided (`auto` is passed only where preflight did not run: torch)."""
    return REFERENCE_BACKEND if options.backend == AUTO else options.backend


def start_telemetry(
    spec: ModelSpec, fingerprint: str, cache: EmbeddingCache, options: EngineOptions, device: str
) -> ModelTelemetry:
    """A model's telemetry before any work: what the cache already knows of its shape."""
    return ModelTelemetry(
        model=spec.name,
        fingerprint=fingerprint,
        device=device,
        backend=decided_backend(options),
        dtype=options.dtype,
        dim=cache.model_dim(fingerprint) or spec.dim or 0,
        max_seq_length=cache.model_info(fingerprint).get("max_seq_length")
        or spec.settings.max_seq_length
        or 0,
    )


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
OTHER_RUNTIMES = set(RUNTIMES)  # folders of exported variants torch never loads
NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state")


def weights_size(folder: Path) -> int:
    """Bytes of the weight files torch loads from a model folder, to ask the lease for enough free
    GPU memory: per module folder its safetensors (else its .bin/.pt files), never the ONNX or
    OpenVINO variants nor training state."""
    by_folder: dict[Path, list[Path]] = {}
    for path in folder.rglob("*"):
        if (
            path.suffix in WEIGHT_SUFFIXES
            and not path.name.startswith(NOT_WEIGHTS)
            and not OTHER_RUNTIMES & set(path.relative_to(folder).parts[:-1])
            and path.is_file()
        ):
            by_folder.setdefault(path.parent, []).append(path)
    total = 0
    for files in by_folder.values():
        preferred = [f for f in files if f.suffix == ".safetensors"] or files
        total += sum(f.stat().st_size for f in preferred)
    return total


def lease_for(spec: ModelSpec, device: str, options: EngineOptions, events: list) -> DeviceLease:
    """The lease of one device for one model (asking CUDA for room for the weights)."""
    required = int(weights_size(spec.path) * (1.0 if options.dtype == "float32" else 0.5) * 1.5)
    return DeviceLease(
        spec.name,
        device,
        lease_dir=options.lease_dir,
        max_wait_time=options.lease_timeout,
        check_interval=options.check_interval,
        required_memory_bytes=required if is_cuda(device) else None,
        events=events,
    )


def torch_device(device: str) -> str:
    """The torch device for a worker's device (`cpu:1` is a second CPU worker, torch's `cpu`)."""
    return "cpu" if device.startswith("cpu") else device


def load_backend(
    spec: ModelSpec, backend: str, options: EngineOptions, device: str, threads: int | None = None
):
    """Create and load a model's backend on a device (`threads`: a CPU worker's share)."""
    loaded = create_backend(spec, backend, options.dtype, threads)
    loaded.load(torch_device(device))
    return loaded


def record_load(spec, fingerprint, cache, telemetry, backend, seconds: float) -> None:
    """Note a model load in the telemetry and in the cache (its dimension and sequence length)."""
    telemetry.loads += 1
    telemetry.load_seconds += seconds
    telemetry.dim = backend.dim
    telemetry.max_seq_length = backend.max_seq_length
    info = {"model": spec.name, "path": str(spec.path), "max_seq_length": backend.max_seq_length}
    cache.register_model(fingerprint, backend.dim, info)


def prefixed(spec: ModelSpec, texts: dict[bytes, str], digests: list[bytes]) -> list[str]:
    """The texts as the model sees them (with its document prefix)."""
    prefix = spec.settings.document_prefix
    return [prefix + texts[d] for d in digests]


def count_tokens(backend, inputs: list[str]) -> list[int]:
    """Untruncated token counts of every input, tokenised in bounded chunks."""
    counts: list[int] = []
    for start in range(0, len(inputs), TOKENIZE_CHUNK):
        counts.extend(backend.token_counts(inputs[start : start + TOKENIZE_CHUNK]))
    return counts


def report_non_finite(telemetry: ModelTelemetry, texts: list[str]) -> None:
    """Record texts whose vectors stayed non-finite (they are not cached) and warn."""
    if not texts:
        return
    telemetry.non_finite_chunks += len(texts)
    room = MAX_REPORTED_TEXTS - len(telemetry.non_finite_texts)
    telemetry.non_finite_texts.extend(t[:80] for t in texts[: max(0, room)])
    log.warning(
        "%s: %d texts give NaN/Inf vectors even in float32 and were skipped, e.g. %r",
        telemetry.model, len(texts), texts[0][:80],
    )  # fmt: skip


def progress_bar(spec: ModelSpec, total: int, options: EngineOptions) -> Progress:
    """The one progress display of the embedding loop (counts chunks): a bar or log lines."""
    return Progress(total, spec.slug, "chunk", options.show_progress)


def next_batch_end(
    counts: list[int], start: int, limit: int, max_tokens: int, max_texts: int
) -> int:
    """End of the batch starting at `start`: padded tokens within the budget, at least one text.

    Inputs are sorted longest first, so the first text sets the padded length of the batch.
    """
    width = max(1, min(counts[start], limit))
    size = max(1, min(max_texts, max_tokens // width, len(counts) - start))
    return start + size


class Faults:
    """Fault injection for tests: EMBED_COLLECTIONS_FAULT=kind@device#n[,...].

    kind: kill (SIGKILL this process), oom (raise an out-of-memory error once), oom32 (the same
    inside the float32 re-run of batch n), nan (NaN vectors once, in the working precision only),
    nan-always, or slow (sleep n milliseconds before every batch), or late (a worker waits n
    milliseconds before taking its lease); `device` is the worker's device (or *); the fault
    fires at the n-th batch (from 0) that device runs (a process counts across its work units).
    """

    def __init__(self, device: str):
        self.armed: list[tuple[str, int]] = []
        for item in filter(None, os.environ.get(FAULT_VARIABLE, "").split(",")):
            kind, _, rest = item.partition("@")
            where, _, count = rest.partition("#")
            if where in ("*", device):
                self.armed.append((kind, int(count or 0)))

    def before_lease(self) -> None:
        """Delay a worker's start where armed (to decide which worker gets the first units)."""
        for kind, at in self.armed:
            if kind == "late":
                time.sleep(at / 1000)

    def before_forward(self, batch_index: int) -> None:
        """Kill the process or raise an out-of-memory error where armed."""
        for kind, at in self.armed:
            if kind == "slow":
                time.sleep(at / 1000)
            if kind == "kill" and batch_index >= at:
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "oom" and batch_index == at:
                self.armed.remove((kind, at))
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    def before_float32(self, batch_index: int) -> None:
        """Raise an out-of-memory error in the float32 re-run where armed (once)."""
        if ("oom32", batch_index) in self.armed:
            self.armed.remove(("oom32", batch_index))
            raise RuntimeError("CUDA out of memory in the float32 re-run (injected)")

    def after_forward(self, batch_index: int, vectors: np.ndarray, float32: bool) -> np.ndarray:
        """Turn vectors into NaN where armed."""
        for kind, at in self.armed:
            if (kind == "nan" and batch_index == at and not float32) or kind == "nan-always":
                return np.full_like(vectors, np.nan)
        return vectors


@dataclass
class TokenBudget:
    """Padded tokens per forward pass: halved on out-of-memory, doubled back after a run of
    successes. A worker process or Ray actor keeps one across its work units: a unit that started
    again at the full budget would run out of memory again, every unit."""

    full: int
    current: int = 0
    successes: int = 0

    def __post_init__(self) -> None:
        self.current = self.current or self.full

    def shrink(self, batch_tokens: int) -> None:
        """Halve the budget below the padded tokens of the batch that did not fit."""
        self.current = max(1, min(self.current, batch_tokens) // 2)
        self.successes = 0

    def succeed(self) -> None:
        """One more batch fitted: after GROW_AFTER in a row, double towards the full budget."""
        self.successes += 1
        if self.current < self.full and self.successes >= GROW_AFTER:
            self.current, self.successes = min(self.full, self.current * 2), 0


def run_batches(
    backend,
    inputs: list[str],
    counts: list[int],
    max_tokens: int,
    max_texts: int,
    stats: DeviceTelemetry,
    deliver: Callable[[list[int], np.ndarray], None],
    skip: Callable[[int], None],
    model: str,
    budget: TokenBudget | None = None,
) -> None:
    """Embed inputs (sorted longest first) batch by batch; `deliver(rows, vectors)` each batch.

    Shared by every backend and by the worker processes: the token budget, the tokenising of
    the next batch on a thread, the out-of-memory back-off and the non-finite check live here.
    Rows whose vector stays non-finite in float32 go to `skip(row)` instead of `deliver`.
    `budget`: the caller's budget, kept across calls (workers, actors); a fresh one otherwise.
    """
    limit = backend.max_seq_length
    budget = budget or TokenBudget(max_tokens or default_batch_tokens(stats.device))
    max_texts = max_texts or MAX_BATCH_TEXTS
    # A tokenizer must not run on two threads: the prefetch thread and the float32 re-run (which
    # tokenises again) take turns through this lock.
    tokenizer_lock = threading.Lock()

    def tokenize(texts: list[str]) -> Batch:
        with tokenizer_lock:
            return backend.tokenize(texts)

    faults = Faults(stats.device)
    position = 0
    started = time.perf_counter() - stats.seconds  # a worker's later units continue its timeline
    ahead: tuple[int, int, Future] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
        while position < len(inputs):
            end = next_batch_end(counts, position, limit, budget.current, max_texts)
            if ahead and ahead[:2] == (position, end):
                batch = ahead[2].result()
            else:
                if ahead:  # the budget changed: drop the prefetched batch once it is done
                    ahead[2].exception()
                batch = tokenize(inputs[position:end])
            ahead = None
            if end < len(inputs):  # tokenise the next batch while this one runs
                after = next_batch_end(counts, end, limit, budget.current, max_texts)
                ahead = (end, after, pool.submit(tokenize, inputs[end:after]))
            out_of_memory = False
            rows = list(range(position, end))
            try:
                faults.before_forward(stats.batches)
                vectors = backend.forward(batch)
                vectors = faults.after_forward(stats.batches, vectors, float32=False)
                # Inside the handler: the float32 re-run needs about twice the activations of
                # the batch that just fitted, so it is the likeliest forward pass to run out.
                rows, vectors = keep_finite(
                    backend, batch.texts, rows, vectors, stats, faults, skip, tokenizer_lock
                )
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                out_of_memory = True  # handled below, once the traceback (and its tensors) is gone
            if out_of_memory:
                batch = None  # type: ignore[assignment]  # drop the failed batch, then free memory
                release_accelerator_memory()
                if end - position == 1:
                    raise ModelError(
                        f'Model "{model}" runs out of memory on {stats.device} even one text '
                        "at a time (lower --max-seq-length or use a smaller model)"
                    )
                budget.shrink((end - position) * min(counts[position], limit))
                stats.oom_retries += 1
                log.warning(
                    "%s: out of memory on %s; retrying with a budget of %d tokens",
                    model, stats.device, budget.current,
                )  # fmt: skip
                continue
            if rows:
                deliver(rows, vectors)
            used = [min(counts[i], limit) for i in range(position, end)]
            stats.chunks += len(rows)
            stats.tokens += sum(used)
            stats.padded_tokens += max(used) * len(used)
            stats.truncated_chunks += sum(1 for i in range(position, end) if counts[i] > limit)
            stats.truncated_tokens += sum(max(0, counts[i] - limit) for i in range(position, end))
            stats.batches += 1
            stats.mark(time.perf_counter() - started)
            position = end
            budget.succeed()


def keep_finite(backend, texts, rows, vectors, stats, faults, skip, tokenizer_lock=None):
    """Re-run a batch holding NaN/Inf vectors in float32; rows still non-finite are skipped.

    The re-run tokenises again, so it holds `tokenizer_lock` (the prefetch thread's turn waits).
    """
    bad = ~np.isfinite(vectors).all(axis=1)
    if not bad.any():
        return rows, vectors
    stats.non_finite_retries += 1
    again = [i for i, b in enumerate(bad) if b]
    faults.before_float32(stats.batches)
    with tokenizer_lock or threading.Lock():
        fixed = backend.embed_float32([texts[i] for i in again])
    fixed = faults.after_forward(stats.batches, fixed, float32=True)
    vectors = vectors.copy()
    vectors[again] = fixed
    finite = np.isfinite(vectors).all(axis=1)
    for i in np.flatnonzero(~finite):
        skip(rows[i])
    return [r for r, ok in zip(rows, finite) if ok], vectors[finite]


def release_accelerator_memory() -> None:
    """Free cached CUDA blocks after an OOM so the smaller retry has room."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
