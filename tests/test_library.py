"""Every command is one call of the library, and the library gives what the command prints
(the sqlite-utils shape: the command line is one client of the API)."""

from __future__ import annotations

import ast
import inspect
import json

import pytest
from helpers import cli_run_args, invoke, write_beir, write_chunks

import embed_collections as ec
from embed_collections.cli.main import cli

# command -> the library functions its body calls (`ec.NAME(...)`)
LIBRARY_CALLS = {
    "chunk": {"chunk"},
    "discover": {"discover"},
    "run": {"run", "watch"},
    "search": {"open"},
    "read": {"open"},
    "eval": {"evaluate", "tune_weights"},
    "upload": {"upload"},
    "serve": {"serve"},
    "report": {"write_report"},
    "status": {"status"},
}


def called_functions(command) -> set[str]:
    """The `ec.NAME` calls in a command's module that its callback can reach."""
    module = inspect.getmodule(command.callback)
    tree = ast.parse(inspect.getsource(module))
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "ec"
    }


def test_every_command_calls_its_library_function():
    assert set(cli.commands) == set(LIBRARY_CALLS)
    for name, command in cli.commands.items():
        assert LIBRARY_CALLS[name] <= called_functions(command), name
        assert all(callable(getattr(ec, f)) for f in LIBRARY_CALLS[name])
        assert LIBRARY_CALLS[name] <= set(ec.__all__)


def test_library_functions_take_their_options_by_keyword():
    for name in ("open", "evaluate", "tune_weights", "upload", "serve"):
        parameters = inspect.signature(getattr(ec, name)).parameters.values()
        where = {"beir_dir", "output_dir", "path"}  # what the command takes as arguments
        optional = [p for p in parameters if p.name not in where and p.kind is not p.VAR_KEYWORD]
        assert all(p.kind is p.KEYWORD_ONLY for p in optional), name


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("library")
    write_chunks(root / "Chunked" / "Garden" / "g_chunks.json", ["ripe tomatoes", "beans", "soil"])
    write_chunks(root / "Chunked" / "Kitchen" / "k_chunks.json", ["tomato soup", "knives"])
    out = root / "out"
    done = invoke(cli_run_args(root / "Chunked", out, [tiny_models["tiny32"]], "--export"))
    assert done.code == 0, done.err
    return out


def test_status_and_report_from_python_equal_the_commands(exported_run):
    found = ec.status(exported_run)
    printed = invoke(["status", exported_run, "--json"])
    assert printed.code == found.exit_code == 0
    assert json.loads(printed.out) == found.to_json()
    assert invoke(["status", exported_run]).out.strip() == str(found).strip()
    page = ec.write_report(exported_run, exported_run / "again.html")
    assert page.read_text().startswith("<!DOCTYPE html>") or "<html" in page.read_text()[:500]


def test_upload_from_python_equals_the_command(exported_run, tmp_path):
    counts = ec.upload(exported_run, qdrant_path=tmp_path / "from-python")
    printed = invoke(["upload", exported_run, "--qdrant-path", tmp_path / "from-cli", "--json"])
    assert printed.code == 0, printed.err
    assert json.loads(printed.out) == counts == {"Garden": 3, "Kitchen": 2}
    with pytest.raises(ec.UsageError, match="Give one target store"):
        ec.upload(exported_run)


def test_evaluate_from_python_equals_the_command(tmp_path, tiny_models):
    corpus = [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(
        ["red tomatoes ripen", "blue whales swim", "green beans climb", "yellow sun shines"]
    )]  # fmt: skip
    queries = [{"_id": "q1", "text": "tomatoes"}, {"_id": "q2", "text": "whales"}]
    beir = write_beir(tmp_path / "beir", corpus, queries, {"test": ["q1\td0\t1", "q2\td1\t1"]})
    model = str(tiny_models["tiny32"])
    options = {"models": [model], "device": "cpu", "lease_dir": tmp_path / "leases"}
    report = ec.evaluate(beir, tmp_path / "py", **options).to_json()
    printed = invoke(
        ["eval", "--beir", beir, "--models", model, "--device", "cpu", "--lease-dir",
         tmp_path / "leases", "--output-dir", tmp_path / "cli", "--json", "-q"]
    )  # fmt: skip
    assert printed.code == 0, printed.err
    from_cli = json.loads(printed.out)
    assert from_cli["modes"]["dense"]["ndcg@10"] == report["modes"]["dense"]["ndcg@10"]
    assert from_cli["query_count"] == report["query_count"] == 2
