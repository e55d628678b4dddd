"""What a report shows, read from a run's output directory: the summary, the run record and, when
present, the results of `eval` and of weight tuning. Only files are read: nothing is imported from
the query wing, and nothing is recomputed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from embed_collections.errors import EmbedCollectionsError
from embed_collections.record.files import (
    EVAL_FILE,
    LOG_FILE,
    RUN_RECORD_FILE,
    SUMMARY_FILE,
    TUNING_FILE,
)
from embed_collections.record.summary import RunExtras


class ReportError(EmbedCollectionsError):
    """A run's output directory cannot be reported on."""


@dataclass(frozen=True)
class CollectionRow:
    """One line of the collections table."""

    name: str
    status: str  # failed, unchanged or ok
    chunks: int
    unique: int
    embedded_now: int
    from_cache: int
    points: int | None
    seconds: float
    truncated: int
    error: str = ""


@dataclass(frozen=True)
class RunView:
    """A finished run as the report and `status` see it."""

    output_dir: Path
    summary: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    tuning: dict[str, Any] | None = None

    @cached_property
    def extras(self) -> RunExtras:
        """The summary's measurements after the V6.1 keys, typed (read once per view)."""
        return RunExtras.from_json(self.summary)

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        """Per-model telemetry (backend, device, throughput, load and lease times)."""
        return self.extras.models

    @property
    def token_lengths(self) -> dict[str, dict[str, Any]]:
        return self.extras.token_lengths

    @property
    def phases(self) -> dict[str, float]:
        """Where the wall time went, in run order."""
        return self.extras.phases

    @property
    def lease_events(self) -> list[dict[str, Any]]:
        """The run's lease events (older summaries kept them per collection: first one seen)."""
        if "lease_events" in self.summary:
            return self.extras.lease_events
        for result in (self.summary.get("results") or {}).values():
            if result.get("lease_events"):
                return list(result["lease_events"])
        return []

    def rows(self) -> list[CollectionRow]:
        """Every collection, failed ones first (with their errors), then by name."""
        results = self.summary.get("results") or {}
        failed = self.summary.get("failed_collections") or {}
        rows = []
        for name in sorted(set(results) | set(failed)):
            result = results.get(name, {})
            chunks = int(result.get("total_embeddings_generated") or 0)
            unique = int(result.get("unique_texts") or 0)
            embedded = max((result.get("embedded_now") or {}).values(), default=0)
            status = "failed" if name in failed else result.get("status") or "ok"
            rows.append(
                CollectionRow(
                    name=name,
                    status=status,
                    chunks=chunks,
                    unique=unique,
                    embedded_now=int(embedded),
                    from_cache=max(0, unique - int(embedded)),
                    points=result.get("points_in_store"),
                    seconds=float(result.get("processing_time") or 0.0),
                    truncated=max((result.get("truncated_chunks") or {}).values(), default=0),
                    error=str(failed.get(name, "")),
                )
            )
        rows.sort(key=lambda row: (row.status != "failed", row.name))
        return rows


def read_json(path: Path) -> Any:
    """A JSON file of the run, or a ReportError naming it and the fix."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(
            f"{path} cannot be read ({error}); re-run `embed-collections run` to write it again"
        ) from error


def read_optional(path: Path) -> dict[str, Any] | None:
    """A results file that may be absent (eval, tuning, run record)."""
    if not path.is_file():
        return None
    data = read_json(path)
    return data if isinstance(data, dict) else None


def load_run(output_dir: Path) -> RunView:
    """Read a run's output directory (`eval` results beside it or in its eval/ folder)."""
    output_dir = Path(output_dir)
    summary_path = output_dir / SUMMARY_FILE
    if not summary_path.is_file():
        hint = (
            " (the run started but wrote no summary yet)"
            if (output_dir / LOG_FILE).exists()
            else ""
        )
        raise ReportError(
            f"No run in {output_dir}: {SUMMARY_FILE} is missing{hint} (pass the --output-dir of "
            "a finished `embed-collections run`)"
        )
    summary = read_json(summary_path)
    if not isinstance(summary, dict) or "results" not in summary:
        raise ReportError(
            f'{summary_path} is not a run summary (no "results"); pass a run\'s output directory'
        )
    found = {}
    for name in (EVAL_FILE, TUNING_FILE):
        for folder in (output_dir, output_dir / "eval"):
            data = read_optional(folder / name)
            if data is not None:
                found[name] = data
                break
    return RunView(
        output_dir=output_dir,
        summary=summary,
        record=read_optional(output_dir / RUN_RECORD_FILE) or {},
        eval=found.get(EVAL_FILE),
        tuning=found.get(TUNING_FILE),
    )
