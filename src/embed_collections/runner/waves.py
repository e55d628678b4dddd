"""Waves: collections loaded in groups of about `wave_size` chunks, embedded model-major, stored.

A wave bounds the driver's memory on huge corpora (a typical corpus is a single wave). Each
model has one executor session for the whole run (`engine.local_executor.ModelSession`). When
sessions hold their device between calls (Ray's actor pools), one model at a time goes through
every wave (pass 1 reads the corpus; later passes re-read it, unless it was a single wave, kept
in memory), and the last model's pass also stores each wave, since every model's vectors are
cached by then: one pool start per model per run. Local sessions hold nothing between calls, so
one pass embeds each wave with every model and stores it (the corpus is read once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from embed_collections.corpus.chunks import LoadedCollection, load_collection
from embed_collections.corpus.discovery import find_chunk_files
from embed_collections.engine import (
    EmbeddingCache,
    ModelSession,
    embed_sparse_pending,
    executor_for,
    text_digest,
)
from embed_collections.progress import Progress
from embed_collections.record.config import RunConfig
from embed_collections.record.summary import (
    CollectionResult,
    RunSummary,
    log_collection_completion,
    log_collection_header,
)
from embed_collections.record.token_lengths import TokenLengths
from embed_collections.runner.collection import Targets, store_collection
from embed_collections.runner.diskspace import check_wave_space, stops_the_run
from embed_collections.runner.ensemble import Ensemble
from embed_collections.stores import Store

log = logging.getLogger("embed_collections.runner.pipeline")


class RunWork:
    """What a run gathers across waves and passes for its summary and report: phase times, lease
    events (once per run, not per collection), token lengths per model, and per collection the
    texts it newly needed per model and its share of the embedding seconds."""

    def __init__(self, phases: dict[str, float] | None = None):
        self.phases = {} if phases is None else phases
        self.lease_events: list[dict] = []
        self.lengths: dict[str, TokenLengths] = {}
        self.embedded_now: dict[str, dict[str, int]] = {}
        self.shares: dict[str, float] = {}
        self.waves = 0

    def add_phase(self, name: str, seconds: float) -> None:
        """Add seconds to a phase (a model's embedding spans every wave)."""
        self.phases[name] = self.phases.get(name, 0.0) + seconds


def choose_session(config: RunConfig) -> type[ModelSession]:
    """The session class of `config.executor`: in this process (local) or on Ray actors."""
    return executor_for(config.executor).session


def plan_passes(count: int, holds_device: bool) -> list[list[int]]:
    """Which models (by index) each pass over the waves embeds: one model per pass when a
    session holds its device between waves, else every model in one pass."""
    if holds_device:
        return [[index] for index in range(count)]
    return [list(range(count))] if count else [[]]


def run_waves(
    selected: dict[str, Path],
    ensemble: Ensemble,
    cache: EmbeddingCache,
    store: Store | None,
    config: RunConfig,
    summary: RunSummary,
    progress: Progress | None = None,
    work: RunWork | None = None,
) -> None:
    """Embed every wave with every model, one session per model for the whole run, then store
    each wave (in the last pass)."""
    work = RunWork() if work is None else work
    session_class = choose_session(config)
    passes = plan_passes(len(ensemble.specs), session_class.holds_device)
    plan: list[list[str]] = []  # the first pass's waves, by collection name, for the re-reads
    kept: list[LoadedCollection] | None = None  # a single wave, kept for the later passes
    last_name = next(reversed(selected), None)
    for number, models in enumerate(passes):
        final = number == len(passes) - 1
        waves: Iterator[list[LoadedCollection]]
        if number == 0:
            waves = load_waves(selected, config, summary, work.phases)
        elif kept is not None:
            waves = iter([kept])
        else:
            waves = reload_waves(plan, selected, config, summary, work.phases)
        with ExitStack() as stack:
            sessions = []
            for index in models:
                spec, backend = ensemble.specs[index], ensemble.backends[index]
                options = replace(config.engine, backend=backend, quantize="")  # from preflight
                session = session_class(spec, ensemble.fingerprints[index], cache, options)
                stack.callback(take_events, session, work)  # its releases, once it is closed
                sessions.append(stack.enter_context(session))
            for wave in waves:
                if number == 0:
                    plan.append([loaded.name for loaded in wave])
                    work.waves = len(plan)  # so far: an interrupted run reports what it read
                    keep = len(passes) > 1 and len(plan) == 1 and wave[-1].name == last_name
                    kept = wave if keep else None
                embed_wave(wave, ensemble, sessions, cache, config, work)
                if final:
                    store_wave(wave, ensemble, cache, store, config, summary, progress, work)
                del wave  # the next wave loads without this one in memory


def take_events(session: ModelSession, work: RunWork) -> None:
    """Move a session's new lease events into the run's list."""
    work.lease_events.extend(event.to_dict() for event in session.take_events())


def load_waves(
    selected: dict[str, Path],
    config: RunConfig,
    summary: RunSummary,
    phases: dict[str, float] | None = None,
) -> Iterator[list[LoadedCollection]]:
    """Load collections in order, yielding groups of about `wave_size` chunks (the loading time
    is added to `phases["load chunks"]`); failures and skipped records go to the summary."""
    wave: list[LoadedCollection] = []
    size = 0
    phases = {} if phases is None else phases
    wave_size = config.wave_size or 0
    for name, directory in selected.items():
        clock = time.perf_counter()
        try:
            log_collection_header(name, len(find_chunk_files(directory, config.pattern)))
            loaded = load_collection(name, directory, config.pattern, config.chunked_dir)
        except Exception as error:  # per-collection boundary: record and go on
            log.debug("Loading %s failed", name, exc_info=True)
            summary.failed_collections[name] = f"{type(error).__name__}: {error}"
            summary.extra.file_errors += 1
            continue
        finally:
            phases["load chunks"] = phases.get("load chunks", 0.0) + time.perf_counter() - clock
        summary.extra.file_errors += len(loaded.stats.file_errors)
        summary.extra.skipped_records += loaded.stats.skipped_records
        if loaded.stats.file_errors:
            summary.failed_collections[name] = "; ".join(loaded.stats.file_errors)
        if not loaded.chunks:
            summary.failed_collections.setdefault(name, f"No readable chunks in {directory}")
            continue
        wave.append(loaded)
        size += len(loaded.chunks)
        if size >= wave_size:
            yield wave
            wave, size = [], 0
    if wave:
        yield wave


def reload_waves(
    plan: list[list[str]],
    selected: dict[str, Path],
    config: RunConfig,
    summary: RunSummary,
    phases: dict[str, float],
) -> Iterator[list[LoadedCollection]]:
    """The first pass's waves read again (for the next model): what loading counted for the
    summary is not counted again; a collection that cannot be read any more fails alone."""
    for names in plan:
        wave: list[LoadedCollection] = []
        for name in names:
            clock = time.perf_counter()
            try:
                loaded = load_collection(name, selected[name], config.pattern, config.chunked_dir)
            except Exception as error:  # per-collection boundary: record and go on
                log.debug("Loading %s again failed", name, exc_info=True)
                summary.failed_collections[name] = f"{type(error).__name__}: {error}"
                continue
            finally:
                phases["load chunks"] = phases.get("load chunks", 0.0) + time.perf_counter() - clock
            if loaded.chunks:
                wave.append(loaded)
        if wave:
            yield wave


def embed_wave(
    wave: list[LoadedCollection],
    ensemble: Ensemble,
    sessions: list[ModelSession],
    cache: EmbeddingCache,
    config: RunConfig,
    work: RunWork,
) -> None:
    """Embed a wave's unique texts with each session's model; note per collection the texts it
    newly needed and its share of the embedding seconds (by those texts)."""
    digests = [{text_digest(c.text) for c in loaded.chunks} for loaded in wave]
    texts = {text_digest(c.text): c.text for loaded in wave for c in loaded.chunks}
    missing = {s.fingerprint: set(cache.missing(s.fingerprint, texts)) for s in sessions}
    check_wave_space(wave, ensemble.dims(cache), missing, config)
    for session in sessions:
        clock = time.perf_counter()
        telemetry = session.embed(texts)
        work.add_phase(f"embed {session.spec.name}", time.perf_counter() - clock)
        take_events(session, work)
        if session.telemetry is not None:
            ensemble.telemetry[session.spec.name] = session.telemetry
        pending = missing[session.fingerprint]
        spent = telemetry.embed_seconds + telemetry.load_seconds
        for loaded, wanted in zip(wave, digests):
            new = len(wanted & pending)
            work.embedded_now.setdefault(loaded.name, {})[session.spec.name] = new
            if pending:
                share = work.shares.get(loaded.name, 0.0) + spent * new / len(pending)
                work.shares[loaded.name] = share


def store_wave(
    wave: list[LoadedCollection],
    ensemble: Ensemble,
    cache: EmbeddingCache,
    store: Store | None,
    config: RunConfig,
    summary: RunSummary,
    progress: Progress | None,
    work: RunWork,
) -> None:
    """Combine and store each collection of a wave whose dense vectors are all cached."""
    if ensemble.sparse:
        clock = time.perf_counter()
        texts = {text_digest(c.text): c.text for loaded in wave for c in loaded.chunks}
        embed_sparse_pending(ensemble.sparse, texts, cache)
        work.add_phase("embed bm25", time.perf_counter() - clock)
    layout = ensemble.layout(cache)
    for loaded in wave:
        started = time.perf_counter()
        result = CollectionResult(name=loaded.name)
        exported = work.phases.get("export", 0.0)
        try:
            targets = Targets(ensemble, cache, store, config, work.lengths, work.phases)
            store_collection(loaded, targets, layout, result)
        except Exception as error:  # per-collection boundary: record and go on
            log.debug("Collection %s failed", loaded.name, exc_info=True)
            summary.failed_collections[loaded.name] = f"{error}"
            log.error("❌ Failed collection %s: %s", loaded.name, error)
            if stops_the_run(error):
                raise
            if progress is not None:
                progress.update(1, 0, time.perf_counter() - started)
            continue
        finally:  # the export's seconds are counted apart; the rest is the store's
            exported = work.phases.get("export", 0.0) - exported
            work.add_phase("store", time.perf_counter() - started - exported)
        for spec in ensemble.specs:
            result.embedded_now[spec.name] = work.embedded_now.get(loaded.name, {}).get(
                spec.name, 0
            )
        if any(result.embedded_now.values()) or result.status != "unchanged":
            result.status = "ok"
        share = work.shares.get(loaded.name, 0.0)
        result.processing_time = round(time.perf_counter() - started + share, 3)
        summary.results[loaded.name] = result
        # chunks drop_unembedded skipped (loading's skipped records are counted already)
        summary.extra.skipped_records += result.skipped_records - loaded.stats.skipped_records
        log_collection_completion(result)
        if progress is not None:
            progress.update(1, len(loaded.chunks), time.perf_counter() - started)
