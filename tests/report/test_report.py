"""report.html and `status` over a real run (tiny model, embedded store), read back as a user
would: the page's tables, the summary's new records, the terminal lines and the JSON; and the page
rendered by a real headless Chromium (Debian's `chromium` package): no console errors, every chart
drew, a screenshot kept as a test artifact."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import cli_run_args, invoke, write_chunks
from plotly.offline import get_plotlyjs

LONG = " ".join(f"word{i}" for i in range(400))  # well over the tiny models' 128-token window


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, tiny_models) -> dict:
    """alpha (short texts), beta (two long ones), broken (unreadable: a failed collection)."""
    root = tmp_path_factory.mktemp("report")
    chunked = root / "Chunked"
    write_chunks(chunked / "alpha" / "a_chunks.json", [f"alpha text {i}" for i in range(5)])
    write_chunks(chunked / "beta" / "b_chunks.json", ["beta short", LONG, LONG + " more"])
    (chunked / "broken").mkdir(parents=True)
    (chunked / "broken" / "x_chunks.json").write_text("{oops", encoding="utf-8")
    out = root / "out"
    model = tiny_models["tiny32"]
    result = invoke(cli_run_args(chunked, out, [model], "--backend", "torch"))
    return {"root": root, "chunked": chunked, "out": out, "model": str(model), "result": result}


def summary_of(out: Path) -> dict:
    return json.loads((out / "embedding_summary_v6.json").read_text(encoding="utf-8"))


def test_run_writes_a_self_contained_report(reported_run):
    assert reported_run["result"].code == 3, reported_run["result"].err  # broken failed
    page = (reported_run["out"] / "report.html").read_text(encoding="utf-8")
    assert len(page.encode()) < 5_000_000
    assert page.count(get_plotlyjs()) == 1  # plotly.js inline, once
    page = page.replace(get_plotlyjs(), "")
    assert re.findall(r"""(?:src|href)=["']?(?:https?:)?//""", page) == []  # nothing to fetch
    table = page[page.index("<h2>Collections</h2>") : page.index("<h2>Charts</h2>")]
    # failed first, with its error, then the others by name
    assert table.index(">broken<") < table.index(">alpha<") < table.index(">beta<")
    assert "x_chunks.json: not valid JSON" in table
    assert "1 of 3 collections failed" in page
    assert page.count('class="chart"') >= 4  # collections, time, tokens, throughput, leases


def test_summary_records_token_lengths_phases_and_leases_once(reported_run):
    summary = summary_of(reported_run["out"])
    lengths = summary["token_lengths"][reported_run["model"]]
    assert lengths["chunks"] == 8
    assert (
        lengths["truncated_chunks"]
        == 2
        == summary["results"]["beta"]["truncated_chunks"][reported_run["model"]]
    )
    assert lengths["truncated_tokens"] > 2 * 200
    assert sum(lengths["bins"].values()) == 8
    assert {"discover", "preflight", "load chunks", "store"} <= set(summary["phases"])
    assert f"embed {reported_run['model']}" in summary["phases"]
    assert sum(summary["phases"].values()) <= summary["total_seconds"] + 0.01
    # one lease per model per run, at the top of the summary, not repeated per collection
    assert [e["event_type"] for e in summary["lease_events"]] == ["acquire", "release"]
    assert all(r["lease_events"] == [] for r in summary["results"].values())
    device = summary["models"][reported_run["model"]]["devices"][0]
    assert device["timeline"] and device["timeline"][-1][1] == device["chunks"]


def test_truncation_is_a_warning_with_count_share_and_fix(reported_run):
    err = reported_run["result"].err
    (line,) = [line for line in err.splitlines() if "longer than its" in line]
    assert line.startswith("WARNING - ")
    assert "2 of 8 chunks (25%) are longer than its 128-token window" in line
    assert "% ) " not in line and "tokens (" in line and "--max-seq-length" in line
    log = (reported_run["out"] / "embedding_v6.log").read_text(encoding="utf-8")
    assert "2 of 8 chunks (25%) are longer than its 128-token window" in log
    assert log.count("Lease events:") == 1 and "GPU Lease Events" not in log


def test_status_shows_the_run_at_a_glance(reported_run):
    result = invoke(["status", reported_run["out"]])
    assert result.code == 3  # a collection failed
    lines = result.out.splitlines()
    assert lines[1] == "Collections: 3 (2 ok, 0 unchanged, 1 failed)"
    assert "Chunks: 8; points in store: 8; embedded now: 8; from cache: 0" in lines
    assert any(line.startswith("FAILED broken: ") for line in lines)
    assert any(line.startswith("Warning: ") and "2 of 8 chunks" in line for line in lines)
    assert f"  {reported_run['model']}: torch on cpu, dim 32, window 128, 2 chunks truncated" in (
        lines
    )
    data = json.loads(invoke(["status", reported_run["out"], "--json"]).out)
    assert (data["collections"], data["ok"], data["failed"]) == (3, 2, 1)
    assert data["models"][0]["truncated_chunks"] == 2
    assert data["report"].endswith("report.html")


def test_report_command_adds_the_eval_table(reported_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reported_run["out"], out, ignore=shutil.ignore_patterns("qdrant", "cache"))
    modes = {"dense": {"ndcg@10": 0.61234, "recall@100": 0.9, "search_seconds": 0.2, "queries": 5}}
    evaluation = {"dataset": "scifact", "split": "test", "query_count": 5, "corpus_size": 8,
                  "models": [reported_run["model"]], "modes": modes}  # fmt: skip
    (out / "eval_results.json").write_text(json.dumps(evaluation), encoding="utf-8")
    target = tmp_path / "page.html"
    result = invoke(["report", out, "-o", target, "-q"])
    assert result.code == 0, result.err
    assert result.out.strip() == str(target)
    page = target.read_text(encoding="utf-8")
    evaluation_part = page[page.index("<h2>Evaluation</h2>") :]
    assert "scifact" in evaluation_part and "0.61234" in evaluation_part
    assert "ndcg@10" in evaluation_part


def test_report_and_status_without_a_run_say_so_in_one_line(tmp_path):
    for command in ("report", "status"):
        result = invoke([command, tmp_path])
        assert result.code == 1
        assert result.err.strip() == (
            f"Error: No run in {tmp_path}: embedding_summary_v6.json is missing (pass the "
            "--output-dir of a finished `embed-collections run`)"
        )


ARTIFACTS = Path(
    os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--window-size=1400,2400",
]  # fmt: skip
CONSOLE = re.compile(r':INFO:CONSOLE:\d+\] "(.*)", source: ')


def find_chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("CI") == "true":
        pytest.fail(
            "chromium is not installed; CI must render the report (apt-get install chromium)"
        )
    return found


def test_report_renders_in_headless_chromium(reported_run, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); CI installs it")
    page = reported_run["out"] / "report.html"
    charts = page.read_text(encoding="utf-8").count('class="chart"')
    screenshot = tmp_path / "report.png"
    done = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    messages = CONSOLE.findall(done.stderr)
    assert done.returncode == 0, done.stderr[-2000:]
    # the page logs one line once drawn; anything else on the console is an error
    assert len(messages) == 1, messages
    pattern = rf"embed-collections report: {charts} of {charts} charts drawn in \d+ ms"
    assert re.fullmatch(pattern, messages[0]), messages
    assert charts >= 4
    assert screenshot.stat().st_size > 20_000  # a drawn page, not a blank one
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / "report.png")
