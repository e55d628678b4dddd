"""The spine of a run: discover, preflight, load chunks, embed model-major, combine, store.

Collections are processed in waves of about `wave_size` chunks so memory stays flat on huge
corpora (`waves.py`: one executor session per model for the whole run; a typical corpus is a
single wave).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from embed_collections.archive.export import finish_export
from embed_collections.atomic import write_bytes_atomic, write_json_atomic
from embed_collections.chunking import ChunkReport, Sizing, chunk_tree, sizing_for
from embed_collections.corpus.discovery import (
    discover_collections,
    filter_collections,
)
from embed_collections.engine import EmbeddingCache, default_lease_dir, executor_for
from embed_collections.errors import (
    DiskFullError,
    EmbedCollectionsError,
    StoreError,
    StoreInUseError,
)
from embed_collections.progress import Progress
from embed_collections.record.config import RunConfig
from embed_collections.record.files import LOG_FILE, SUMMARY_FILE
from embed_collections.record.run_record import (
    write_run_record,
)
from embed_collections.record.summary import (
    ENSEMBLE_MODE_LABEL,
    RunSummary,
    log_lease_events,
    log_processing_summary,
)
from embed_collections.record.token_lengths import warn_truncation
from embed_collections.runner.dirlock import output_lock
from embed_collections.runner.diskspace import (
    preflight_space,
    stops_the_run,
)
from embed_collections.runner.ensemble import Ensemble, prepare_ensemble, sample_texts
from embed_collections.runner.missing import record_finished, remove_missing, store_markers
from embed_collections.runner.waves import RunWork, run_waves
from embed_collections.runner.wavesize import decide_wave_size
from embed_collections.stores import Store, VectorLayout
from embed_collections.stores.open import open_store

log = logging.getLogger("embed_collections.runner.pipeline")


class RunLogHandler(logging.FileHandler):
    """The run's log file; a line the disk refuses is dropped (the console still shows it)
    instead of printing logging's own traceback on every later line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        return


@contextmanager
def file_log(path: Path) -> Iterator[None]:
    """Copy the package's log records into `embedding_v6.log` in the V6.1 format for the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RunLogHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("embed_collections")
    logger.addHandler(handler)
    previous = logger.level
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


def check_store_layouts(
    store: Store, names: list[str], layout: VectorLayout | None, recreate: bool
) -> None:
    """Fail before embedding if an existing collection was built with another configuration."""
    if layout is None or recreate:
        return
    clashes = []
    for name in names:
        try:
            existing = store.layout(name)
        except StoreInUseError:
            raise
        except StoreError:
            continue  # this collection fails alone, with its own message, when it is stored
        if existing is not None and not existing.matches(layout):
            clashes.append(f'"{name}" has {existing.describe()}')
    if clashes:
        raise StoreError(
            f"Existing collections differ from this run's {layout.describe()}: "
            + "; ".join(clashes)
            + " (use --recreate to replace them, or another --qdrant-path)"
        )


def run(config: RunConfig) -> RunSummary:
    """Run the whole job and return its summary (also written to the output directory)."""
    try:
        config.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EmbedCollectionsError(
            f"Cannot create output directory {config.output_dir}: {error.strerror or error} "
            "(choose another --output-dir)"
        ) from error
    started = time.perf_counter()  # Ray's start-up counts in the run's total_seconds
    phases: dict[str, float] = {}
    with (
        output_lock(config.output_dir, wait=config.wait),
        file_log(config.output_dir / LOG_FILE),
        ExitStack() as stack,
    ):
        executor = executor_for(config.executor)
        if executor.start:  # preflight: join the cluster and check its devices before any model
            ray_started = time.perf_counter()
            engine = stack.enter_context(executor.start(config.ray_address, config.engine))
            config = replace(config, engine=engine)
            phases[f"{executor.name} start-up"] = time.perf_counter() - ray_started
        summary = run_logged(config, started, phases)
    write_run_report(config.output_dir)
    return summary


def write_run_report(output_dir: Path) -> None:
    """report.html for the run just finished; a report that fails is logged, never fatal."""
    from embed_collections.report.html import write_report

    try:
        path = write_report(output_dir)
    except Exception as error:  # the report only describes the run: the run itself is done
        log.debug("The report failed", exc_info=True)
        log.warning("The run report could not be written: %s", error)
        return
    log.info("Report: %s", path)


def run_logged(
    config: RunConfig, started: float | None = None, phases: dict[str, float] | None = None
) -> RunSummary:
    """The run inside its lock and log; `started`/`phases` carry what came before (Ray)."""
    started = time.perf_counter() if started is None else started
    phases = {} if phases is None else phases
    clock = time.perf_counter()
    log.info("Environment: %s", config.environment)
    log.info("Ensemble mode: %s", ENSEMBLE_MODE_LABEL)
    chunking = chunk_documents(config)
    if chunking is not None:
        phases["chunk"] = time.perf_counter() - clock
    unreadable: list[tuple[Path, str]] = []
    found = discover_collections(config.chunked_dir, config.pattern, config.max_depth, unreadable)
    selected = filter_collections(found, list(config.collections) or None)
    check_lease_dir(config)
    phases["discover"] = time.perf_counter() - clock
    with EmbeddingCache(config.embedding_cache_path) as cache:
        clock = time.perf_counter()
        ensemble = prepare_ensemble(config, sample_texts(selected, config.pattern))
        for spec in ensemble.specs:
            log.info("Model %s from %s (weight %g)", spec.name, spec.source, spec.weight)
        preflight_space(config, selected, ensemble.dims(cache))
        summary = RunSummary(
            timestamp=datetime.now().isoformat(),
            environment=config.environment,
            ensemble_models=[spec.name for spec in ensemble.specs],
        )
        if chunking is not None:
            summary.extra.chunking = chunking.to_dict()
        for directory, reason in unreadable:
            summary.failed_collections[directory.name] = (
                f"Cannot read directory {directory}: {reason} (fix its permissions)"
            )
            summary.extra.file_errors += 1
        markers: dict = {}
        store: Store | None = None
        stopped: Exception | None = None
        interrupted = False
        work = RunWork(phases)
        try:
            store = open_run_store(config)
            if store is not None:
                check_store_layouts(store, list(selected), ensemble.layout(cache), config.recreate)
            # after the preflight: a run refused there leaves the last run's summary as it was
            reserve_summary(config.output_dir / SUMMARY_FILE, summary)
            phases["preflight"] = time.perf_counter() - clock
            wave_size, wave_note = decide_wave_size(config.wave_size)
            config = replace(config, wave_size=wave_size)
            summary.extra = replace(summary.extra, **wave_note)
            with Progress(
                len(selected), "store", "collection", config.engine.show_progress, "point"
            ) as progress:
                run_waves(selected, ensemble, cache, store, config, summary, progress, work)
            remove_missing(store, found, config, summary, unreadable)
            markers = store_markers(store, config, list(selected))
        except Exception as error:  # a full or read-only disk: keep what is done, then stop
            if not stops_the_run(error):
                raise
            stopped = error
            summary.extra.stopped = str(error)
            log.error("❌ Stopped: %s", error)
        except KeyboardInterrupt:  # SIGINT, or SIGTERM as the CLI maps it: stop, keep what is done
            interrupted = True
            summary.extra.interrupted = True
            log.error(
                "❌ Interrupted: finished collections are stored and embedded batches cached; "
                "re-run the same command to resume"
            )
        finally:
            if store is not None:
                store.close()
        layout = ensemble.layout(cache)
        try:
            write_run_record(config.output_dir, ensemble.record(config, layout))
        except OSError as error:  # a full disk: the summary below still has its reserved space
            log.error("❌ The run record could not be written: %s", error)
            if stopped is None and stops_the_run(error):
                stopped = error
                summary.extra.stopped = f"the run record could not be written: {error}"
    log_lease_events(work.lease_events)
    warn_truncation(work.lengths)
    summary.extra = replace(
        summary.extra,
        **run_extras(config, ensemble, layout, time.perf_counter() - started),
        lease_events=work.lease_events,
        waves=work.waves,
        token_lengths={name: t.to_dict() for name, t in work.lengths.items()},
        phases={name: round(seconds, 3) for name, seconds in phases.items()},
    )
    write_summary(config.output_dir / SUMMARY_FILE, summary)
    if interrupted:
        raise KeyboardInterrupt
    if stopped is not None:
        if isinstance(stopped, EmbedCollectionsError):
            raise stopped
        raise DiskFullError(f"The run stopped: {stopped}") from stopped
    if config.export:  # the manifest covers the summary
        finish_export(config, summary)
    record_finished(config, summary, markers)  # last: only a run that got here is served
    log_processing_summary(summary)
    return summary


def chunk_documents(config: RunConfig) -> ChunkReport | None:
    """With `--docs`: chunk the pages into the chunked directory, sized to this run's models
    (unchanged pages keep their files, so their collections stay unchanged)."""
    if config.docs_dir is None:
        return None
    report = chunk_tree(
        config.docs_dir, config.chunked_dir, run_sizing(config), None, config.keep_navigation
    )
    log.info(
        "Chunked %s: %d documents, %d chunks (tokens per chunk %s), %d skipped",
        config.docs_dir,
        report.files,
        report.chunks,
        report.tokens,
        len(report.skipped),
    )
    return report


def run_sizing(config: RunConfig) -> Sizing:
    """How a run's chunks are sized: its models, as resolved for the run, and its sizes."""
    return sizing_for(
        config.models,
        config.chunk_size,
        config.chunk_overlap,
        config.model_cache_dir,
        config.trust_remote_code,
        config.max_seq_length,
        config.document_prefix,
    )


def check_lease_dir(config: RunConfig) -> None:
    """Fail before any model loads when the device lease directory cannot hold a lock file."""
    if executor_for(config.executor).on_cluster:
        return  # the leases live on the cluster's nodes
    path = Path(config.engine.lease_dir or default_lease_dir())
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise EmbedCollectionsError(
            f"Lease directory {path} cannot be used: {error.strerror or error} "
            "(fix its permissions or choose another --lease-dir)"
        ) from error


SUMMARY_RESERVE = 256 * 1024  # bytes kept for the summary, so a full disk cannot lose it


def reserve_summary(path: Path, summary: RunSummary) -> None:
    """Write a first summary ("running") padded to SUMMARY_RESERVE bytes: its blocks are then
    the summary's own, and the final one can overwrite them in place on a full disk."""
    head = json.dumps({**summary.to_json(), "running": True}, indent=2).encode()
    try:
        write_bytes_atomic(path, head + b" " * max(0, SUMMARY_RESERVE - len(head)))
    except OSError as error:
        raise DiskFullError(
            f"Cannot write the run summary {path}: {error.strerror or error} (free space there "
            "or choose another --output-dir)"
        ) from error


def write_summary(path: Path, summary: RunSummary) -> None:
    """Replace the summary atomically; on a full disk, overwrite the reserved file in place
    (the per-collection results are dropped first if even that does not fit)."""
    data = summary.to_json()
    try:
        write_json_atomic(path, data)
        return
    except OSError as error:
        log.error(
            "The summary could not be replaced (%s); writing it into its reserved space", error
        )
    text = json.dumps(data, indent=2).encode()
    if len(text) > SUMMARY_RESERVE:
        data = {**data, "results": {}, "results_dropped": "the disk was full"}
        text = json.dumps(data).encode()[:SUMMARY_RESERVE]
    try:
        with path.open("r+b") as handle:
            handle.write(text)
            handle.truncate(len(text))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        log.error("The summary could not be written: %s", error)


def open_run_store(config: RunConfig) -> Store | None:
    """Open and probe the store (preflight), or None with --no-upload."""
    if not config.upload:
        return None
    store = open_store(config.qdrant_url, config.store_path, config.qdrant_api_key, isolated=True)
    try:
        store.check_writable()
    except BaseException:
        store.close()
        raise
    return store


def run_extras(
    config: RunConfig, ensemble: Ensemble, layout: VectorLayout | None, seconds: float
) -> dict:
    """What the run measured and used, for the summary's `RunExtras`."""
    describe = executor_for(config.executor).describe
    ray_cluster = describe() if describe else None
    return dict(
        executor=config.executor,
        ray=ray_cluster,
        combine=config.combine,
        weights=ensemble.weights,
        dimension=layout.dense if layout else None,
        sparse=config.sparse,
        store=config.qdrant_url or (None if not config.upload else str(config.store_path)),
        chunked_dir=str(config.chunked_dir),
        total_seconds=round(seconds, 3),
        models={name: t.to_dict() for name, t in ensemble.telemetry.items()},
        cache_hits=sum(t.cache_hits for t in ensemble.telemetry.values()),
        cache_misses=sum(t.cache_misses for t in ensemble.telemetry.values()),
    )
