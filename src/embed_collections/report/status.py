"""The run at a glance: the facts `status` prints and the report's header shows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embed_collections.record.files import REPORT_FILE
from embed_collections.report.data import RunView


def overview(view: RunView) -> dict[str, Any]:
    """Counts, failures, truncation, models and store of a run, JSON-ready (`status --json`)."""
    rows = view.rows()
    summary, extras = view.summary, view.extras
    models = view.models
    record_models = {m.get("name"): m for m in view.record.get("models") or []}
    return {
        "output_dir": str(view.output_dir),
        "when": summary.get("timestamp"),
        "environment": summary.get("environment"),
        "executor": extras.executor,
        "store": extras.store,
        "total_seconds": extras.total_seconds,
        "collections": len(rows),
        "ok": sum(1 for r in rows if r.status == "ok"),
        "unchanged": sum(1 for r in rows if r.status == "unchanged"),
        "failed": sum(1 for r in rows if r.status == "failed"),
        "failures": {r.name: r.error for r in rows if r.status == "failed"},
        "chunks": sum(r.chunks for r in rows),
        "points": sum(r.points or 0 for r in rows),
        "embedded_now": sum(int(t.get("chunks_embedded") or 0) for t in models.values()),
        "cache_hits": sum(int(t.get("cache_hits") or 0) for t in models.values()),
        "models": [
            {
                "model": name,
                "backend": t.get("backend"),
                "device": t.get("device"),
                "dim": t.get("dim"),
                "max_seq_length": t.get("max_seq_length"),
                "weight": (record_models.get(name) or {}).get("weight"),
                "truncated_chunks": (view.token_lengths.get(name) or {}).get("truncated_chunks"),
                "dropped_share": (view.token_lengths.get(name) or {}).get("dropped_share"),
            }
            for name, t in models.items()
        ],
        "report": str(view.output_dir / REPORT_FILE)
        if (view.output_dir / REPORT_FILE).exists()
        else None,
        "eval": bool(view.eval),
    }


def truncation_lines(view: RunView) -> list[str]:
    """One line per model that cut chunks, with the fix."""
    lines = []
    for model, lengths in view.token_lengths.items():
        cut, total = int(lengths.get("truncated_chunks") or 0), int(lengths.get("chunks") or 0)
        share = float(lengths.get("dropped_share") or 0.0)
        if cut:
            lines.append(
                f"{model}: {cut:,} of {total:,} chunks are longer than its "
                f"{lengths.get('max_seq_length')}-token window ({share:.1%}"
                " of tokens not embedded): raise --max-seq-length if the model allows it, or add "
                "a model with a longer window"
            )
    return lines


def render_status(view: RunView) -> str:
    """The run at a glance for a terminal."""
    facts = overview(view)
    lines = [
        f"Run in {facts['output_dir']} ({facts['when']}, {facts['environment']}, "
        f"executor {facts['executor']}, {facts['total_seconds']} s)",
        f"Collections: {facts['collections']} ({facts['ok']} ok, {facts['unchanged']} unchanged, "
        f"{facts['failed']} failed)",
        f"Chunks: {facts['chunks']:,}; points in store: {facts['points']:,}; embedded now: "
        f"{facts['embedded_now']:,}; from cache: {facts['cache_hits']:,}",
        f"Store: {facts['store'] or 'none (--no-upload)'}",
        "Models:",
    ]
    for model in facts["models"]:
        cut = model["truncated_chunks"]
        lines.append(
            f"  {model['model']}: {model['backend']} on {model['device']}, dim {model['dim']}, "
            f"window {model['max_seq_length']}" + (f", {cut:,} chunks truncated" if cut else "")
        )
    for name, error in facts["failures"].items():
        lines.append(f"FAILED {name}: {error}")
    lines += [f"Warning: {line}" for line in truncation_lines(view)]
    if facts["report"]:
        lines.append(f"Report: {facts['report']}")
    return "\n".join(lines)


@dataclass(frozen=True)
class RunStatus:
    """A finished run at a glance: `str()` is what `status` prints, `to_json()` its `--json`."""

    view: RunView

    def to_json(self) -> dict[str, Any]:
        return overview(self.view)

    def __str__(self) -> str:
        return render_status(self.view)

    @property
    def exit_code(self) -> int:
        """0 when every collection is stored, 3 when some failed (as `status` exits)."""
        return 3 if self.to_json()["failed"] else 0
