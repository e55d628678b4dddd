"""report.html: a run on one self-contained page (tables, plotly charts with plotly.js inline),
viewable offline and printable."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from embed_collections.atomic import write_text_atomic
from embed_collections.record.files import REPORT_FILE
from embed_collections.report.charts import run_charts, short
from embed_collections.report.data import RunView, load_run
from embed_collections.report.status import overview, truncation_lines

log = logging.getLogger("embed_collections.report.html")

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1300px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555}.banner{padding:10px 14px;border-radius:6px;margin:12px 0;font-weight:600}
.ok{background:#e6f4ea;color:#1e6b34}.bad{background:#fde8e4;color:#9b2c14}
.warn{background:#fff4d6;color:#7a5200;font-weight:400}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #eee;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f6f6f6;position:sticky;top:0}th:first-child,td:first-child{text-align:left}
td.err{text-align:left;color:#9b2c14;max-width:520px;word-break:break-word}
tr.row-failed td{background:#fff1ee}.status-failed{color:#9b2c14;font-weight:600}
.status-unchanged{color:#666}.chart{break-inside:avoid;page-break-inside:avoid;margin:8px 0}
.scroll{max-height:520px;overflow:auto;border:1px solid #eee}
@media print{body{margin:0;max-width:none}th{position:static}.chart{width:100%}
.scroll{max-height:none;overflow:visible;border:0}}
"""


# One console line saying how many charts drew (tests and headless checks read it).
DRAWN_CHECK = """window.addEventListener("load", function () {
  var charts = document.querySelectorAll(".chart");
  var drawn = Array.prototype.filter.call(charts, function (c) {
    return c.querySelector("svg.main-svg") !== null; }).length;
  var ms = Math.round(performance.now());  // from the start of navigation: the opening time
  document.body.setAttribute("data-charts-drawn", drawn + "/" + charts.length);
  console.log("embed-collections report: " + drawn + " of " + charts.length +
              " charts drawn in " + ms + " ms");
});"""


def cell(value: Any, css: str = "") -> str:
    """One escaped table cell (integers with thousands separators, None as a dash)."""
    text = "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)
    return f'<td class="{css}">{html.escape(text)}</td>' if css else f"<td>{html.escape(text)}</td>"


def table(headers: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    """An HTML table of rendered cells."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        css = row_classes[i] if row_classes else ""
        body.append(f'<tr class="{css}">' + "".join(row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def collections_table(view: RunView) -> str:
    """Every collection, failed first with its error."""
    headers = ["collection", "status", "chunks", "unique", "embedded now", "from cache",
               "points", "time (s)", "truncated", "error"]  # fmt: skip
    rows, classes = [], []
    for r in view.rows():
        rows.append([
            cell(r.name), cell(r.status, f"status-{r.status}"), cell(r.chunks), cell(r.unique),
            cell(r.embedded_now), cell(r.from_cache), cell(r.points), cell(f"{r.seconds:.2f}"),
            cell(r.truncated), cell(r.error, "err"),
        ])  # fmt: skip
        classes.append(f"row-{r.status}")
    return table(headers, rows, classes)


def models_table(view: RunView) -> str:
    """One row per model: where it ran, what it did, what it cost, what it cut."""
    headers = ["model", "backend", "device", "dim", "max_seq_length", "embedded", "cached",
               "chunks/s", "load (s)", "lease wait (s)", "embed (s)", "truncated"]  # fmt: skip
    rows = []
    for name, t in view.models.items():
        rows.append([
            cell(short(name)), cell(t.get("backend")), cell(t.get("device")), cell(t.get("dim")),
            cell(t.get("max_seq_length")), cell(t.get("chunks_embedded")),
            cell(t.get("cache_hits")),
            cell(t.get("chunks_per_second")), cell(t.get("load_seconds")),
            cell(t.get("lease_wait_seconds")), cell(t.get("embed_seconds")),
            cell((view.token_lengths.get(name) or {}).get("truncated_chunks")),
        ])  # fmt: skip
    return table(headers, rows)


def eval_section(view: RunView) -> str:
    """The eval table (one row per search mode) and the tuned weights, when present."""
    parts = []
    if view.eval:
        data = view.eval
        modes = data.get("modes") or {}
        metrics = sorted({k for m in modes.values() for k in m if k not in ("search_seconds",)})
        rows = [
            [cell(mode)] + [cell(values.get(k)) for k in metrics] for mode, values in modes.items()
        ]
        parts.append(
            f"<p class=meta>{html.escape(str(data.get('dataset')))} "
            f"({html.escape(str(data.get('split')))}): {data.get('query_count')} queries over "
            f"{data.get('corpus_size')} documents; models "
            f"{html.escape(', '.join(map(short, data.get('models') or [])))}</p>"
        )
        parts.append(table(["mode", *metrics], rows))
    if view.tuning:
        data = view.tuning
        members = data.get("members") or []
        metrics = sorted({k for m in members for k in m if k != "model"})
        rows = [
            [cell(short(m.get("model", "?")))] + [cell(m.get(k)) for k in metrics] for m in members
        ]
        ensemble = data.get("ensemble") or {}
        rows.append([cell("ensemble (tuned)")] + [cell(ensemble.get(k)) for k in metrics])
        parts.append(
            f"<p class=meta>Weights {data.get('weights')} learned on "
            f"{html.escape(str(data.get('tune_split')))}, scored on "
            f"{html.escape(str(data.get('split')))}</p>"
        )
        parts.append(table(["model", *metrics], rows))
    return "".join(parts)


def chunking_section(view: RunView) -> str:
    """What `run --docs` chunked: documents, chunks, tokens per chunk, files skipped and why."""
    data = view.extras.chunking
    if not data:
        return ""
    tokens = data.get("tokens") or {}
    sizes = tokens.get("max")
    files = f"{data.get('written')} / {data.get('unchanged')} / {data.get('removed')}"
    rows = [
        [cell("documents"), cell(data.get("files"))],
        [cell("chunks"), cell(data.get("chunks"))],
        [cell("tokens per chunk (median / max)"), cell(f"{tokens.get('median')} / {sizes}")],
        [cell("chunk files written / unchanged / removed"), cell(files)],
        [cell("navigation chunks left out"), cell(data.get("navigation_dropped"))],
        [cell("files skipped"), cell(len(data.get("skipped") or []))],
    ]
    skipped = [[cell(s.get("path")), cell(s.get("reason"))] for s in data.get("skipped") or []]
    intro = f"<p class=meta>From {html.escape(str(data.get('source_dir')))}</p>"
    listed = table(["skipped file", "reason"], skipped[:100]) if skipped else ""
    return "<h2>Chunking</h2>" + intro + table(["", ""], rows) + listed


def render_report(view: RunView) -> str:
    """The whole page."""
    import plotly.io
    from plotly.offline import get_plotlyjs

    facts = overview(view)
    failed = facts["failed"]
    verdict = (
        f'<div class="banner bad">{failed} of {facts["collections"]} collections failed '
        "(listed first below, with their errors)</div>"
        if failed
        else f'<div class="banner ok">All {facts["collections"]} collections stored'
        + (f" ({facts['unchanged']} unchanged)" if facts["unchanged"] else "")
        + "</div>"
    )
    warnings = "".join(
        f'<div class="banner warn">{html.escape(line)}</div>' for line in truncation_lines(view)
    )
    cards = "".join(
        f"<div class=card><b>{html.escape(str(value))}</b>{html.escape(label)}</div>"
        for label, value in (
            ("collections", facts["collections"]),
            ("chunks", f"{facts['chunks']:,}"),
            ("points in store", f"{facts['points']:,}"),
            ("embedded now", f"{facts['embedded_now']:,}"),
            ("from cache", f"{facts['cache_hits']:,}"),
            ("seconds", facts["total_seconds"]),
        )
    )
    charts = []
    for index, (section, fig) in enumerate(run_charts(view)):
        body = plotly.io.to_html(
            fig,
            validate=False,
            full_html=False,
            include_plotlyjs=False,
            div_id=f"chart-{section}-{index}",
            config={"displaylogo": False, "responsive": True},
        )
        charts.append(f'<div class="chart" data-section="{section}">{body}</div>')
    evaluation = eval_section(view)
    title = f"embed-collections run: {view.output_dir.name or view.output_dir}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style>
<script>{get_plotlyjs()}</script></head><body>
<h1>{html.escape(title)}</h1>
<div class=meta>{html.escape(facts["when"] or "")} · {html.escape(facts["environment"] or "")} ·
executor {html.escape(str(facts["executor"]))} · store {html.escape(str(facts["store"]))}</div>
{verdict}{warnings}<div class=cards>{cards}</div>
{chunking_section(view)}<h2>Models</h2>{models_table(view)}
<h2>Collections</h2><div class="scroll">{collections_table(view)}</div>
<h2>Charts</h2>{"".join(charts) or "<p>No chart data in this summary.</p>"}
{"<h2>Evaluation</h2>" + evaluation if evaluation else ""}
<p class=meta>Written by embed-collections from {html.escape(str(view.output_dir))}.</p>
<script>{DRAWN_CHECK}</script>
</body></html>
"""


def write_report(output_dir: Path, target: Path | None = None) -> Path:
    """Write report.html for the run in `output_dir` (or to `target`); returns its path."""
    view = load_run(output_dir)
    path = Path(target) if target is not None else Path(output_dir) / REPORT_FILE
    write_text_atomic(path, render_report(view))
    return path
