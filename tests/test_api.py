"""The public Python API, used as a notebook user would: a fresh interpreter, `import
embed_collections as ec`, discover, run, open, search; and the CLI giving the same results."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from helpers import cli_run_args, run_cli, write_chunks

import embed_collections as ec

QUERY = "ripe tomatoes in the garden"

# Each API call in a fresh interpreter; prints what a notebook user would look at, as JSON.
SCRIPT = """
import json, sys
from pathlib import Path
import embed_collections as ec

chunked, out, model, leases = map(Path, sys.argv[1:5])
found = ec.discover(chunked)
summary = ec.run(chunked, out, models=[str(model)], device="cpu", lease_dir=leases, quiet=True)
with ec.open(out) as cols:
    hits = cols.search(sys.argv[5], top_k=4)
    one = cols.search(sys.argv[5], collections=["Garden"], top_k=2)
    names, models = cols.names, [m.name for m in cols.models]
try:
    ec.open(out / "missing")
    error = None
except ec.EmbedCollectionsError as caught:
    error = [type(caught).__name__, str(caught), caught.exit_code]
print(json.dumps({
    "found": {name: str(path) for name, path in found.items()},
    "ok": summary.ok, "exit_code": summary.exit_code,
    "summary_type": type(summary).__name__,
    "collections": {
        n: [type(r).__name__, r.points_in_store] for n, r in summary.collections.items()
    },
    "names": names, "models": models,
    "hits": [[h.collection, h.chunk_id, h.score, h.text, h.metadata] for h in hits],
    "one": [h.collection for h in one],
    "error": error,
}))
"""


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api") / "Chunked"
    write_chunks(root / "Garden" / "g_chunks.json", ["ripe tomatoes", "watering beans", "compost"])
    write_chunks(root / "Kitchen" / "k_chunks.json", ["tomato soup recipe", "sharp knives"])
    return root


@pytest.fixture(scope="module")
def api_result(chunked, tiny_models) -> dict:
    out = chunked.parent / "api-out"
    args = [chunked, out, tiny_models["tiny32"], chunked.parent / "leases", QUERY]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_each_call_works_from_a_fresh_interpreter(api_result, chunked):
    assert api_result["found"] == {
        "Garden": str(chunked / "Garden"),
        "Kitchen": str(chunked / "Kitchen"),
    }
    assert api_result["ok"] is True and api_result["exit_code"] == 0
    assert api_result["summary_type"] == "RunSummary"
    assert api_result["collections"] == {
        "Garden": ["CollectionResult", 3],
        "Kitchen": ["CollectionResult", 2],
    }
    assert api_result["names"] == ["Garden", "Kitchen"]
    assert len(api_result["models"]) == 1
    hits = api_result["hits"]
    assert len(hits) == 4 and {h[0] for h in hits} == {"Garden", "Kitchen"}
    assert [h[2] for h in hits] == sorted((h[2] for h in hits), reverse=True)
    assert all(h[1] and h[3] and isinstance(h[4], dict) for h in hits)
    assert api_result["one"] == ["Garden", "Garden"]


def test_expected_failures_raise_the_family_with_the_clis_message(api_result, chunked, tmp_path):
    kind, message, exit_code = api_result["error"]
    assert kind == "UsageError" and exit_code == 2
    missing = chunked.parent / "api-out" / "missing"
    cli = run_cli(["search", "Garden", QUERY, "--output-dir", missing], tmp_path)
    assert cli.code == 2
    assert cli.err.strip().splitlines()[-1] == f"Error: {message}"


def test_the_cli_gives_the_same_results_as_the_api(api_result, chunked, tiny_models, tmp_path):
    out = tmp_path / "cli-out"
    done = run_cli(cli_run_args(chunked, out, [tiny_models["tiny32"]], "--json"), tmp_path)
    assert done.code == 0, done.err
    summary = json.loads(done.out)
    assert {n: r["points_in_store"] for n, r in summary["results"].items()} == {
        n: points for n, (_, points) in api_result["collections"].items()
    }
    searched = run_cli(
        ["search", "Garden,Kitchen", QUERY, "--output-dir", out, "--top-k", 4, "--json"], tmp_path
    )
    assert searched.code == 0, searched.err
    hits = json.loads(searched.out)["hits"]
    assert [(h["collection"], h["chunk_id"]) for h in hits] == [
        (h[0], h[1]) for h in api_result["hits"]
    ]
    assert [h["score"] for h in hits] == pytest.approx([h[2] for h in api_result["hits"]])


def test_unknown_run_keyword_is_a_usage_error_naming_it(tmp_path):
    with pytest.raises(ec.UsageError, match=r"Unknown run option bogus_option"):
        ec.run(tmp_path, tmp_path / "out", bogus_option=1)  # type: ignore[call-arg]


def test_the_top_level_exposes_only_the_api():
    public = {
        name
        for name in dir(ec)
        if not name.startswith("_") and not isinstance(getattr(ec, name), types.ModuleType)
    }
    assert public <= set(ec.__all__) | {"annotations", "TYPE_CHECKING", "Any", "Path"}
    for name in ec.__all__:
        assert getattr(ec, name) is not None
    assert issubclass(ec.StoreError, ec.EmbedCollectionsError)


def test_every_run_option_of_the_cli_is_a_keyword_of_the_api():
    from embed_collections.cli.commands import run as run_command
    from embed_collections.record.config import RUN_OPTIONS

    cli_only = {"chunked_dir", "output_dir", "verbose", "as_json", "exclusive_ensemble"}
    cli_only |= {"watch"}  # `run --watch` is `ec.watch` with the same keywords
    names = {param.name for param in run_command.params} - cli_only
    assert names == set(RUN_OPTIONS)
