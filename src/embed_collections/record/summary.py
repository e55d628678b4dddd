"""The run summary (the V6.1 `embedding_summary_v6.json` schema of the original
`embed_collections_v6` script, plus measured extras) and the V6.1 completion log lines."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any

log = logging.getLogger("embed_collections.record.summary")

ENSEMBLE_MODE_LABEL = "EXCLUSIVE (model-at-a-time GPU lease)"


@dataclass
class CollectionResult:
    """What happened to one collection: the V6.1 keys first, then what the engine measured."""

    name: str
    models_executed: list[str] = field(default_factory=list)
    lease_events: list[dict[str, Any]] = field(default_factory=list)
    total_embeddings_generated: int = 0
    qdrant_collection: str | None = None
    processing_time: float = 0.0
    files: int = 0
    records: int = 0
    skipped_records: int = 0
    duplicate_ids: int = 0
    file_errors: list[str] = field(default_factory=list)
    unique_texts: int = 0
    embedded_now: dict[str, int] = field(default_factory=dict)
    points_deleted: int = 0
    points_in_store: int | None = None
    truncated_chunks: dict[str, int] = field(default_factory=dict)
    export_dir: str | None = None
    store_repaired: str | None = None  # what was wrong with the store's copy, rebuilt this run

    status: str = "ok"  # ok, or unchanged: nothing embedded now and the store already held it

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "name"}


OPTIONAL = {"omitted": True}  # a key written only when it has a value


@dataclass
class RunExtras:
    """What the summary adds after the V6.1 keys, in file order: how the wave size was chosen,
    what was skipped, why the run stopped, what ran where, the measurements (per model, per
    phase) and the export. Keys marked OPTIONAL are left out of the file while they are None."""

    chunking: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)  # run --docs
    wave_size: int | None = field(default=None, metadata=OPTIONAL)
    wave_size_from: str | None = field(default=None, metadata=OPTIONAL)
    memory_available_bytes: int | None = field(default=None, metadata=OPTIONAL)
    memory_total_bytes: int | None = field(default=None, metadata=OPTIONAL)
    wave_budget_bytes: int | None = field(default=None, metadata=OPTIONAL)
    file_errors: int = 0
    skipped_records: int = 0
    removed: list[str] = field(default_factory=list)  # collections whose folder is gone
    stopped: str | None = field(default=None, metadata=OPTIONAL)
    interrupted: bool | None = field(default=None, metadata=OPTIONAL)
    executor: str | None = None
    ray: dict[str, Any] | None = None  # the cluster, with the Ray executor
    combine: str | None = None
    weights: list[float] = field(default_factory=list)
    dimension: int | None = None
    sparse: str | None = None
    store: str | None = None
    chunked_dir: str | None = None
    total_seconds: float = 0.0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # telemetry per model
    cache_hits: int = 0
    cache_misses: int = 0
    lease_events: list[dict[str, Any]] = field(default_factory=list)
    waves: int = 0
    token_lengths: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model
    phases: dict[str, float] = field(default_factory=dict)  # seconds, in run order
    export: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not (f.metadata.get("omitted") and getattr(self, f.name) is None)
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunExtras:
        """The extras of a summary file (keys a file lacks keep their defaults; older runs)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})


@dataclass
class RunSummary:
    """The whole run; `to_json` gives the V6.1 schema with extra keys after it."""

    timestamp: str
    environment: str
    ensemble_models: list[str]
    results: dict[str, CollectionResult] = field(default_factory=dict)
    failed_collections: dict[str, str] = field(default_factory=dict)
    extra: RunExtras = field(default_factory=RunExtras)

    @property
    def succeeded(self) -> list[str]:
        return [name for name in self.results if name not in self.failed_collections]

    @property
    def ok(self) -> bool:
        """Every collection was embedded and stored."""
        return not self.failed_collections

    @property
    def collections(self) -> dict[str, CollectionResult]:
        """Every collection the run saw, failed ones too (`failed_collections` has their errors)."""
        found = dict(self.results)
        for name in self.failed_collections:
            found.setdefault(name, CollectionResult(name=name))
        return found

    @property
    def exit_code(self) -> int:
        """0 all succeeded, 3 some failed or loaded partly, 1 nothing was stored at all."""
        if not self.failed_collections:
            return 0
        return 3 if self.results else 1

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "timestamp": self.timestamp,
            "environment": self.environment,
            "ensemble_models": self.ensemble_models,
            "exclusive_ensemble_mode": True,
            "results": {name: r.to_dict() for name, r in self.results.items()},
            "failed_collections": dict(self.failed_collections),
        }
        data.update(self.extra.to_json())
        return data


def log_collection_header(name: str, chunk_files: int) -> None:
    """The V6.1 per-collection header."""
    log.info("=" * 80)
    log.info("Processing collection: %s", name)
    log.info("=" * 80)
    log.info("Found %d chunk files in %s", chunk_files, name)


def log_collection_completion(result: CollectionResult) -> None:
    """The V6.1 completion block (lease events are logged once per run: `log_lease_events`)."""
    if result.status == "unchanged":
        log.info(
            "✅ Completed collection: %s (unchanged: %s points already stored, nothing embedded)",
            result.name,
            result.points_in_store,
        )
        return
    log.info("✅ Completed collection: %s", result.name)
    log.info("   Models executed: %s", result.models_executed)
    log.info("   Total embeddings: %d", result.total_embeddings_generated)


def log_lease_events(events: list[dict[str, Any]]) -> None:
    """The run's device lease events, once per run and only where a lease was taken."""
    if not events:
        return
    log.info("Lease events:")
    for event in events:
        log.info(
            "   - %s: %s on %s @ %s (waited %.1fs)",
            event["event_type"], event["model"], event["device"], event["timestamp"],
            event.get("wait_seconds") or 0.0,
        )  # fmt: skip


def log_processing_summary(summary: RunSummary) -> None:
    """The V6.1 final PROCESSING COMPLETE block."""
    total = len(set(summary.results) | set(summary.failed_collections))
    log.info("=" * 80)
    log.info("PROCESSING COMPLETE")
    log.info("=" * 80)
    log.info("Total collections: %d", total)
    log.info("Succeeded: %d", len(summary.succeeded))
    log.info("Failed: %d", len(summary.failed_collections))
    for name, message in summary.failed_collections.items():
        log.error("   ❌ %s: %s", name, message)
