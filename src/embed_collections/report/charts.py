"""The report's charts as plotly figure specs (drawn by plotly.js, inlined once in the page).

Figures are plain dicts in plotly's JSON schema: building `plotly.graph_objects` figures costs
about half a second of validation per run, which every `run` would pay.
"""

from __future__ import annotations

from typing import Any

from embed_collections.report.data import CollectionRow, RunView

Figure = dict[str, Any]
MAX_BARS = 40  # collections drawn in the per-collection chart (the table lists them all)
AXIS = {"gridcolor": "#eee", "zerolinecolor": "#ccc", "automargin": True}
LAYOUT: dict[str, Any] = {
    "paper_bgcolor": "white",
    "plot_bgcolor": "white",
    "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
    "height": 340,
    "font": {"size": 12},
    "xaxis": AXIS,
    "yaxis": AXIS,
}


def figure(title: str, **layout: Any) -> Figure:
    """An empty figure in the report's style (axis settings merge with the style's)."""
    merged = {**LAYOUT, "title": {"text": title}, **layout}
    for axis in ("xaxis", "yaxis"):
        merged[axis] = {**AXIS, **layout.get(axis, {})}
    return {"data": [], "layout": merged}


def collections_chart(rows: list[CollectionRow]) -> Figure | None:
    """Unique texts per collection: embedded by this run, taken from the cache (largest first)."""
    shown = sorted((r for r in rows if r.status != "failed"), key=lambda r: -r.unique)[:MAX_BARS]
    if not shown:
        return None
    names = [r.name for r in shown][::-1]
    title = "Unique texts per collection: embedded now / from the cache"
    if len(rows) > len(shown):
        title += f" ({len(shown)} largest of {len(rows)})"
    height = max(260, 22 * len(shown) + 110)
    legend = {"orientation": "h", "y": -0.1}
    fig = figure(title, barmode="stack", height=height, margin={**LAYOUT["margin"], "l": 220},
                 legend=legend)  # fmt: skip
    fig["data"] = [
        {"type": "bar", "orientation": "h", "y": names, "x": [r.embedded_now for r in shown][::-1],
         "name": "embedded now", "marker": {"color": "#e4572e"}},
        {"type": "bar", "orientation": "h", "y": names, "x": [r.from_cache for r in shown][::-1],
         "name": "from cache", "marker": {"color": "#76b041"}},
    ]  # fmt: skip
    return fig


def token_chart(model: str, lengths: dict[str, Any]) -> Figure | None:
    """A model's token-length histogram with its window (max_seq_length) marked."""
    bins = {int(start): count for start, count in (lengths.get("bins") or {}).items()}
    if not bins:
        return None
    width = int(lengths.get("bin_tokens") or 32)
    limit = int(lengths.get("max_seq_length") or 0)
    cut, total = lengths.get("truncated_chunks", 0), lengths.get("chunks", 0)
    title = f"{short(model)}: tokens per chunk (window {limit}; {cut:,} of {total:,} chunks cut"
    title += f", {lengths.get('dropped_share', 0):.1%} of tokens dropped)"
    fig = figure(title, bargap=0.05, xaxis={"title": {"text": "tokens"}, "rangemode": "tozero"},
                 yaxis={"title": {"text": "chunks"}}, showlegend=False)  # fmt: skip
    starts = sorted(bins)
    colors = ["#e4572e" if limit and start + width > limit else "#2e86ab" for start in starts]
    fig["data"] = [
        {"type": "bar", "x": [s + width / 2 for s in starts], "y": [bins[s] for s in starts],
         "width": width, "marker": {"color": colors}, "name": "chunks"}
    ]  # fmt: skip
    if limit:
        fig["layout"]["shapes"] = [
            {"type": "line", "x0": limit, "x1": limit, "y0": 0, "y1": 1, "yref": "paper",
             "line": {"dash": "dash", "color": "#333"}}
        ]  # fmt: skip
        fig["layout"]["annotations"] = [
            {"x": limit, "y": 1, "yref": "paper", "text": f"max_seq_length {limit}",
             "showarrow": False, "xanchor": "left", "yanchor": "bottom"}
        ]  # fmt: skip
    return fig


def throughput_chart(models: dict[str, dict[str, Any]]) -> Figure | None:
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
                fig["data"].append(
                    {"type": "scatter", "x": times, "y": rates, "mode": "lines",
                     "name": f"{short(model)} on {device.get('device')}"}
                )  # fmt: skip
                drawn += 1
    return fig if drawn else None


def phases_chart(phases: dict[str, float], total: float | None) -> Figure | None:
    """Where the run's wall time went."""
    if not phases:
        return None
    names = list(phases)
    title = "Where the wall time went (seconds)"
    if total:
        title += f"; run total {total:.1f} s"
    fig = figure(title, showlegend=False, height=max(240, 30 * len(names) + 110),
                 margin={**LAYOUT["margin"], "l": 200})  # fmt: skip
    fig["data"] = [
        {"type": "bar", "orientation": "h", "y": [short(n) for n in names][::-1],
         "x": [phases[n] for n in names][::-1], "marker": {"color": "#2e86ab"},
         "text": [f"{phases[n]:.2f} s" for n in names][::-1], "textposition": "auto"}
    ]  # fmt: skip
    return fig


def lease_chart(events: list[dict[str, Any]]) -> Figure | None:
    """Seconds each model waited for its device lease."""
    waits = [e for e in events if e.get("event_type") == "acquire"]
    if not waits:
        return None
    labels = [f"{short(e.get('model', '?'))} on {e.get('device')}" for e in waits]
    seconds = [float(e.get("wait_seconds") or 0.0) for e in waits]
    top = max(1.0, max(seconds) * 1.2)  # a wait of none reads as none
    fig = figure("Lease waits (seconds before each model got its device)", showlegend=False,
                 yaxis={"range": [0, top]}, height=260)  # fmt: skip
    fig["data"] = [
        {"type": "bar", "x": labels, "y": seconds, "marker": {"color": "#f0a202"},
         "text": [f"{s:.1f} s" for s in seconds], "textposition": "outside"}
    ]  # fmt: skip
    return fig


def short(name: str) -> str:
    """A model path's last two parts (charts have little room)."""
    parts = name.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 2 else name


def run_charts(view: RunView) -> list[tuple[str, Figure]]:
    """Every chart the run has data for, with its section id."""
    charts: list[tuple[str, Figure | None]] = [
        ("time", phases_chart(view.phases, view.extras.total_seconds))
    ]
    for model, lengths in view.token_lengths.items():
        charts.append(("tokens", token_chart(model, lengths)))
    charts.append(("throughput", throughput_chart(view.models)))
    charts.append(("leases", lease_chart(view.lease_events)))
    charts.append(("collections", collections_chart(view.rows())))
    return [(section, fig) for section, fig in charts if fig is not None]
