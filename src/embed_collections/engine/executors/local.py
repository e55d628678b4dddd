"""The model-major schedule: one model at a time, under its device lease(s), embeds every text.

Pending means unique texts whose vector for this model is not cached yet, listed once the lease is
held (so two runs sharing a cache never embed the same text twice). Texts are sorted by token
count across the whole pending set and batched by a token budget; the next batch is tokenised on
a thread while the current one runs. An out-of-memory error halves the budget (and it grows back
after a run of successes); a batch with a NaN/Inf vector is re-run in float32, and a text still
non-finite is reported and never cached. With several devices (`--device cuda` on a multi-GPU box,
or `cpu:0,cpu:1`) one worker process per device pulls units from a queue (`workers.py`); with one
device everything stays in this process.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace

import numpy as np

from embed_collections.engine.cache import EmbeddingCache
from embed_collections.engine.devices import is_cuda
from embed_collections.engine.executors.batches import (
    count_tokens,
    lease_for,
    load_backend,
    prefixed,
    progress_bar,
    record_load,
    report_non_finite,
    run_batches,
    start_telemetry,
)
from embed_collections.engine.executors.pool import Job, embed_on_devices
from embed_collections.engine.lease import LeaseEvent
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.engine.options import EngineOptions
from embed_collections.engine.telemetry import DeviceTelemetry, ModelTelemetry, Timer

log = logging.getLogger(__name__)

STATIC_BATCH = 4096  # texts per call of a static model: no padding, so size costs no compute


def embed_pending(
    spec: ModelSpec,
    fingerprint: str,
    texts: dict[bytes, str],
    cache: EmbeddingCache,
    options: EngineOptions,
    events: list[LeaseEvent],
) -> ModelTelemetry:
    """Embed the texts (digest -> text) this model has not cached yet; the model loads only if any.

    Vectors are written to the cache batch by batch (this process is the only writer), so a crash
    keeps everything finished.
    """
    options = cpu_lease_beside(cache, options)
    telemetry = start_telemetry(spec, fingerprint, cache, options, options.device)
    if not cache.missing(fingerprint, texts):
        telemetry.cache_hits = len(texts)
        log.info("%s: all %d texts cached, model not loaded", spec.name, len(texts))
        return telemetry
    devices = options.devices
    if len(devices) > 1 and not spec.static:  # a static model is fast enough on one device
        job = Job(spec, fingerprint, texts, cache, options, telemetry, events)
        embed_on_devices(job, devices)
        return telemetry
    embed_in_process(spec, fingerprint, texts, cache, options, events, telemetry, devices[0])
    return telemetry


class ModelSession:
    """One model's executor for a whole run: `embed` is called with each wave's texts, `close`
    frees what the session holds. `telemetry` sums the waves; `take_events` hands over the lease
    events recorded since the last call.

    `holds_device` is True when the session keeps its model loaded between calls (a Ray actor
    pool holds its GPUs until `close`): the run then opens one such session at a time and goes
    model-major across its waves, so a device never holds two models at once.
    """

    holds_device = False

    def __init__(
        self, spec: ModelSpec, fingerprint: str, cache: EmbeddingCache, options: EngineOptions
    ):
        self.spec, self.fingerprint, self.cache, self.options = spec, fingerprint, cache, options
        self.telemetry: ModelTelemetry | None = None
        self.events: list[LeaseEvent] = []
        self.taken = 0

    def embed(self, texts: dict[bytes, str]) -> ModelTelemetry:
        """Embed the texts (digest -> text) this model has not cached yet; this call's telemetry."""
        raise NotImplementedError

    def record(self, wave: ModelTelemetry) -> ModelTelemetry:
        """Add a call's telemetry to the session's sum; return the call's."""
        if self.telemetry is None:
            self.telemetry = copy.deepcopy(wave)
        else:
            self.telemetry.add(wave)
        return wave

    def take_events(self) -> list[LeaseEvent]:
        """The lease events recorded since the last call."""
        events = self.events[self.taken :]
        self.taken = len(self.events)
        return events

    def close(self) -> None:
        """Free what the session holds (nothing for the local executor)."""

    def __enter__(self) -> ModelSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LocalSession(ModelSession):
    """The in-process executor as a session: each wave is an `embed_pending` call, which takes
    the lease and loads the model only when the wave has texts to embed."""

    def embed(self, texts: dict[bytes, str]) -> ModelTelemetry:
        """Embed one wave's missing texts in this process (or its worker processes)."""
        wave = embed_pending(
            self.spec, self.fingerprint, texts, self.cache, self.options, self.events
        )
        return self.record(wave)


def cpu_lease_beside(cache: EmbeddingCache, options: EngineOptions) -> EngineOptions:
    """On CPU without --lease-dir, the lease folder sits beside the embedding cache.

    A GPU is one shared device, so its lease is machine-wide (the user cache). CPU runs only need
    to take turns when they share a cache (else both would embed the same texts); runs with their
    own output directories run side by side. Runs that should queue anyway name one --lease-dir.
    """
    if options.lease_dir is not None or any(is_cuda(d) for d in options.devices):
        return options
    return replace(options, lease_dir=cache.path.parent / "leases")


def embed_in_process(
    spec: ModelSpec,
    fingerprint: str,
    texts: dict[bytes, str],
    cache: EmbeddingCache,
    options: EngineOptions,
    events: list[LeaseEvent],
    telemetry: ModelTelemetry,
    device: str,
) -> None:
    """One device: lease, list what is missing, load, embed, all in this process."""
    with lease_for(spec, device, options, events) as lease:
        telemetry.lease_wait_seconds = events[-1].wait_seconds if events else 0.0
        missing = cache.missing(fingerprint, texts)  # after the lease: another run may have
        telemetry.cache_hits = len(texts) - len(missing)  # embedded them while we waited
        telemetry.cache_misses = len(missing)
        if not missing:
            log.info("%s: embedded by another run while waiting for the lease", spec.name)
            return
        with Timer() as load_timer:
            backend = lease.hold(load_backend(spec, telemetry.backend, options, device))
        record_load(spec, fingerprint, cache, telemetry, backend, load_timer.seconds)
        log.info(
            "%s: embedding %d texts (%d cached) on %s, loaded in %.1fs",
            spec.name, len(missing), telemetry.cache_hits, device, load_timer.seconds,
        )  # fmt: skip
        inputs = prefixed(spec, texts, missing)
        if backend.token_bag:
            with Timer() as embed_timer:
                run_static_batches(backend, spec, fingerprint, missing, inputs, cache, telemetry)
            telemetry.embed_seconds = embed_timer.seconds
            backend.unload()
            return
        counts = count_tokens(backend, inputs)
        order = sorted(range(len(inputs)), key=lambda i: -counts[i])  # longest first
        stats = DeviceTelemetry(device=device)
        skipped: list[int] = []

        def deliver(rows: list[int], vectors: np.ndarray) -> None:
            cache.put_vectors(
                fingerprint, [missing[order[r]] for r in rows], vectors,
                [counts[order[r]] for r in rows],
            )  # fmt: skip
            bar.update(len(rows))

        bar = progress_bar(spec, len(order), options)
        with Timer() as embed_timer, bar:
            run_batches(
                backend,
                [inputs[i] for i in order],
                [counts[i] for i in order],
                options.max_batch_tokens,
                options.batch_size,
                stats,
                deliver,
                skipped.append,
                spec.name,
            )
        telemetry.embed_seconds = embed_timer.seconds
        stats.seconds = embed_timer.seconds
        backend.unload()
    if events and events[-1].event_type == "release":
        stats.peak_memory_bytes = events[-1].peak_memory_bytes
    telemetry.absorb(stats)
    report_non_finite(telemetry, [inputs[order[r]] for r in skipped])


def run_static_batches(
    backend,
    spec: ModelSpec,
    fingerprint: str,
    missing: list[bytes],
    inputs: list[str],
    cache: EmbeddingCache,
    telemetry: ModelTelemetry,
) -> None:
    """A static model's fast path: no sorting or padding, large batches, one tokenisation.

    Non-finite vectors are never cached here either: their texts are reported and skipped.
    """
    limit = backend.max_seq_length  # 0: no limit, the usual case for static models
    skipped: list[str] = []
    for start in range(0, len(inputs), STATIC_BATCH):
        vectors, counts = backend.embed_with_counts(inputs[start : start + STATIC_BATCH])
        finite = np.isfinite(vectors).all(axis=1)
        digests = missing[start : start + len(counts)]
        kept = [i for i, ok in enumerate(finite) if ok]
        skipped.extend(inputs[start + i] for i, ok in enumerate(finite) if not ok)
        cache.put_vectors(
            fingerprint, [digests[i] for i in kept], vectors[finite], [counts[i] for i in kept]
        )
        used = [min(c, limit) if limit else c for c in counts]
        telemetry.chunks_embedded += len(kept)
        telemetry.tokens_embedded += sum(used)
        telemetry.padded_tokens += sum(used)  # a token bag pads nothing
        if limit:
            telemetry.truncated_chunks += sum(1 for c in counts if c > limit)
            telemetry.truncated_tokens += sum(max(0, c - limit) for c in counts)
        telemetry.batches += 1
    report_non_finite(telemetry, skipped)
    log.info("%s: static model, %d texts in %d batches", spec.name, len(inputs), telemetry.batches)
