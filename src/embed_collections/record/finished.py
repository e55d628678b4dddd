"""The finished marker (`run_finished.json`): what the last run that ran to its end left in the
store, written last, after every collection was stored and verified. A run killed part-way
never writes it, so readers (`serve`, `ec.open`, `search`) trust only the collections whose
store state is the one this marker vouches for, whatever a later run left on disk meanwhile.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embed_collections.atomic import write_json_atomic
from embed_collections.record.files import FINISHED_FILE, SUMMARY_FILE

log = logging.getLogger(__name__)

MARKER_KEYS = ("signature", "count", "digest")  # what identifies one complete load


def marker_identity(marker: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """The part of a store's loaded marker that names its load (file stats left out: a copy of
    the store has other mtimes)."""
    if not marker:
        return None
    return tuple(marker.get(key) for key in MARKER_KEYS)


@dataclass(frozen=True)
class FinishedRun:
    """The marker's content: the run's summary timestamp and each collection's loaded marker
    (None for one the run failed); `markers` is False for a store that keeps none (a server)."""

    timestamp: str
    finished_at: float
    collections: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    markers: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp,
            "finished_at": self.finished_at,
            "markers": self.markers,
            "collections": self.collections,
        }

    def vouches_for(self, name: str, marker: dict[str, Any] | None) -> bool:
        """Whether a collection whose store holds `marker` is in the state this run left."""
        if not self.markers:
            return True  # nothing to compare: a server's collections are trusted as they are
        recorded = marker_identity(self.collections.get(name))
        return recorded is not None and recorded == marker_identity(marker)

    def split(
        self, names: Iterable[str], marker_of: Callable[[str], dict[str, Any] | None]
    ) -> tuple[list[str], list[str]]:
        """(the collections to serve, those a later, unfinished run changed). A collection this
        run failed (recorded without a marker, still without one) is in neither: it is left out
        quietly, as the finished run left it."""
        served, changed = [], []
        for name in sorted(names):
            marker = marker_of(name)
            if self.vouches_for(name, marker):
                served.append(name)
            elif not (name in self.collections and self.collections[name] is None and not marker):
                changed.append(name)
        return served, changed


def write_finished(
    output_dir: Path, timestamp: str, collections: dict[str, dict[str, Any] | None], markers: bool
) -> None:
    """Write the marker (atomically): the last file a run that ran to its end writes."""
    finished = FinishedRun(timestamp, time.time(), collections, markers)
    write_json_atomic(Path(output_dir) / FINISHED_FILE, finished.to_json())


def read_finished(output_dir: Path) -> FinishedRun | None:
    """The marker of the last run that finished in `output_dir`, or None (no run has finished
    since this marker exists, or it cannot be read)."""
    try:
        data = json.loads((Path(output_dir) / FINISHED_FILE).read_text(encoding="utf-8"))
        return FinishedRun(
            timestamp=str(data["timestamp"]),
            finished_at=float(data["finished_at"]),
            collections=dict(data.get("collections") or {}),
            markers=bool(data.get("markers", True)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("Ignoring the unreadable %s in %s: %s", FINISHED_FILE, output_dir, error)
        return None


def started_after(output_dir: Path, finished: FinishedRun | None) -> bool:
    """Whether a run started after the finished one (its summary is "running", or of another
    run) and did not finish: running now, or killed."""
    try:
        summary = json.loads((Path(output_dir) / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict):
        return False
    if summary.get("running"):
        return True
    return finished is not None and summary.get("timestamp") != finished.timestamp
