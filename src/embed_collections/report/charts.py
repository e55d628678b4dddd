"""The report's charts as plotly figures (drawn by plotly.js inlined once in the page)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from embed_collections.report.data import CollectionRow, RunView

MAX_BARS = 40  # collections drawn in the per-collection chart (the table lists them all)
LAYOUT: dict[str, Any] = {
    "template": "plotly_white",
    "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
    "height": 340,
    "font": {"size": 12},
}


def figure(title: str, **layout: Any) -> go.Figure:
    """An empty figure in the report's style."""
    return go.Figure(layout={**LAYOUT, "title": {"text": title}, **layout})


def collections_chart(rows: list[CollectionRow]) -> go.Figure | None:
    """Unique texts per collection: embedded by this run, taken from the cache (largest first)."""
    shown = sorted((r for r in rows if r.status != "failed"), key=lambda r: -r.unique)[:MAX_BARS]
    if not shown:
        return None
    names = [r.name for r in shown][::-1]
    title = "Unique texts per collection: embedded now / from the cache"
    if len(rows) > len(shown):
        title += f" ({len(shown)} largest of {len(rows)})"
    fig = figure(title, barmode="stack", height=max(260, 22 * len(shown) + 110))
    fig.add_bar(y=names, x=[r.embedded_now for r in shown][::-1], name="embedded now",
                orientation="h", marker_color="#e4572e")  # fmt: skip
    fig.add_bar(y=names, x=[r.from_cache for r in shown][::-1], name="from cache",
                orientation="h", marker_color="#76b041")  # fmt: skip
    fig.update_layout(margin={**LAYOUT["margin"], "l": 220}, legend={"orientation": "h", "y": -0.1})
    return fig


def token_chart(model: str, lengths: dict[str, Any]) -> go.Figure | None:
    """A model's token-length histogram with its window (max_seq_length) marked."""
    bins = {int(start): count for start, count in (lengths.get("bins") or {}).items()}
    if not bins:
        return None
    width = int(lengths.get("bin_tokens") or 32)
    limit = int(lengths.get("max_seq_length") or 0)
    cut, total = lengths.get("truncated_chunks", 0), lengths.get("chunks", 0)
    title = f"{model}: tokens per chunk (window {limit}; {cut:,} of {total:,} chunks cut"
    title += f", {lengths.get('dropped_share', 0):.1%} of tokens dropped)"
    fig = figure(title, bargap=0.05, xaxis={"title": {"text": "tokens"}},
                 yaxis={"title": {"text": "chunks"}}, showlegend=False)  # fmt: skip
    starts = sorted(bins)
    colors = ["#e4572e" if limit and start + width > limit else "#2e86ab" for start in starts]
    fig.add_bar(x=[s + width / 2 for s in starts], y=[bins[s] for s in starts], width=width,
                marker_color=colors, name="chunks")  # fmt: skip
    if limit:
        fig.add_vline(x=limit, line_dash="dash", line_color="#333",
                      annotation_text=f"max_seq_length {limit}")  # fmt: skip
    return fig


def throughput_chart(models: dict[str, dict[str, Any]]) -> go.Figure | None:
    """Chunks per second over the embedding time, one line per model and device."""
    fig = figure("Throughput over time (chunks/s, per model and device)",
                 xaxis={"title": {"text": "seconds into the model's embedding"}},
                 yaxis={"title": {"text": "chunks/s"}})  # fmt: skip
    drawn = 0
    for model, telemetry in models.items():
        for device in telemetry.get("devices") or []:
            points = device.get("timeline") or []
            times, rates = [], []
            previous = (0.0, 0)
            for seconds, chunks in points:  # each batch's rate held over its interval
                if seconds > previous[0]:
                    rate = (chunks - previous[1]) / (seconds - previous[0])
                    times += [previous[0], seconds]
                    rates += [rate, rate]
                previous = (seconds, chunks)
            if times:
                fig.add_scatter(x=times, y=rates, mode="lines",
                                name=f"{short(model)} on {device.get('device')}")  # fmt: skip
                drawn += 1
    return fig if drawn else None


def phases_chart(phases: dict[str, float], total: float | None) -> go.Figure | None:
    """Where the run's wall time went."""
    if not phases:
        return None
    names = list(phases)
    title = "Where the wall time went (seconds)"
    if total:
        title += f"; run total {total:.1f} s"
    fig = figure(title, showlegend=False, height=max(240, 30 * len(names) + 110))
    fig.add_bar(y=[short(n) for n in names][::-1], x=[phases[n] for n in names][::-1],
                orientation="h", marker_color="#2e86ab",
                text=[f"{phases[n]:.2f} s" for n in names][::-1], textposition="auto")  # fmt: skip
    fig.update_layout(margin={**LAYOUT["margin"], "l": 200})
    return fig


def lease_chart(events: list[dict[str, Any]]) -> go.Figure | None:
    """Seconds each model waited for its device lease."""
    waits = [e for e in events if e.get("event_type") == "acquire"]
    if not waits:
        return None
    fig = figure("Lease waits (seconds before each model got its device)", showlegend=False)
    labels = [f"{short(e.get('model', '?'))} on {e.get('device')}" for e in waits]
    seconds = [float(e.get("wait_seconds") or 0.0) for e in waits]
    fig.add_bar(x=labels, y=seconds, marker_color="#f0a202",
                text=[f"{s:.1f} s" for s in seconds], textposition="outside")  # fmt: skip
    fig.update_yaxes(range=[0, max(1.0, max(seconds) * 1.2)])  # no wait reads as none
    return fig


def short(name: str) -> str:
    """A model path's last two parts (charts have little room)."""
    parts = name.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 2 else name


def run_charts(view: RunView) -> list[tuple[str, go.Figure]]:
    """Every chart the run has data for, with its section id."""
    charts: list[tuple[str, go.Figure | None]] = [
        ("collections", collections_chart(view.rows())),
        ("time", phases_chart(view.phases, view.summary.get("total_seconds"))),
    ]
    for model, lengths in view.token_lengths.items():
        charts.append(("tokens", token_chart(model, lengths)))
    charts.append(("throughput", throughput_chart(view.models)))
    charts.append(("leases", lease_chart(view.lease_events)))
    return [(section, fig) for section, fig in charts if fig is not None]
