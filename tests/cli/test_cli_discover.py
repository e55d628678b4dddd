"""End-to-end `embed-collections discover` in a subprocess, and help text for every command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import Result, run_cli, write_chunks

from embed_collections.cli.main import cli


def discover(*args: Any, cwd: Path) -> Result:
    """Run `python -m embed_collections discover ARGS` in a child process."""
    return run_cli(["discover", *args], cwd)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> Path:
    """alpha (1 file), beta two levels down (2 files), gamma with a bad record and a bad file."""
    root = tmp_path_factory.mktemp("discover") / "Chunked"
    write_chunks(root / "alpha" / "a_chunks.json", ["one", "two", "three"])
    write_chunks(root / "docs" / "v2" / "beta" / "b1_chunks.json", ["b one", "b two"])
    write_chunks(root / "docs" / "v2" / "beta" / "b2_chunks.json", ["b three"])
    (root / "docs" / "v2" / "beta" / "notes.txt").write_text("not a chunk file", encoding="utf-8")
    gamma = root / "gamma"
    write_chunks(gamma / "good_chunks.json", ["g one", "g two", "g three", "g four"])
    records = json.loads((gamma / "good_chunks.json").read_text(encoding="utf-8"))
    records.append({"text": "", "metadata": {"chunk_id": "empty"}})
    (gamma / "good_chunks.json").write_text(json.dumps(records), encoding="utf-8")
    (gamma / "bad_chunks.json").write_text("{oops", encoding="utf-8")
    return root


EXPECTED = {"alpha": ("alpha", 1), "beta": ("docs/v2/beta", 2), "gamma": ("gamma", 2)}


def test_discover_prints_a_table(chunked):
    result = discover(chunked, cwd=chunked.parent)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["name", "chunk_files", "path"]
    assert set(lines[1]) == {"-", " "}
    rows = [line.split() for line in lines[2:-2]]
    assert rows == [
        [name, str(files), str(chunked / relative)] for name, (relative, files) in EXPECTED.items()
    ]
    assert lines[-2:] == ["", f"3 collections, 5 chunk files under {chunked}"]
    assert result.err == ""  # quiet by default: no line per collection on stderr
    verbose = discover(chunked, "--verbose", cwd=chunked.parent)
    assert "Total collections discovered: 3" in verbose.err


def test_discover_json_has_name_chunk_files_and_path(chunked):
    result = discover(chunked, "--json", cwd=chunked.parent)
    assert result.code == 0, result.err
    assert json.loads(result.out) == [
        {"name": name, "chunk_files": files, "path": str(chunked / relative)}
        for name, (relative, files) in EXPECTED.items()
    ]


def test_discover_stats_counts_chunks_and_problems(chunked):
    result = discover(chunked, "--stats", "--json", cwd=chunked.parent)
    assert result.code == 0, result.err
    rows = {row["name"]: row for row in json.loads(result.out)}
    assert {name: row["chunks"] for name, row in rows.items()} == {
        "alpha": 3,
        "beta": 3,
        "gamma": 4,
    }
    assert rows["gamma"]["skipped_records"] == 1
    assert rows["alpha"]["skipped_records"] == 0
    assert rows["alpha"]["file_errors"] == [] and rows["beta"]["file_errors"] == []
    [error] = rows["gamma"]["file_errors"]
    assert error.startswith(f"{(chunked / 'gamma' / 'bad_chunks.json').as_posix()}: not valid JSON")
    assert "record 4" in result.err  # the skipped record is reported, on stderr

    table = discover(chunked, "--stats", cwd=chunked.parent)
    lines = table.out.splitlines()
    assert lines[0].split() == ["name", "chunk_files", "chunks", "skipped", "file_errors", "path"]
    assert lines[4].split() == ["gamma", "2", "4", "1", "1", str(chunked / "gamma")]


def test_discover_logs_go_to_stderr_not_stdout(chunked):
    result = discover(chunked, "--json", "--verbose", cwd=chunked.parent)
    assert result.code == 0
    for message in (
        f"Scanning for collections in: {chunked}",
        "Discovered collection 'alpha' with 1 chunk files",
        "Discovered collection 'beta' with 2 chunk files",
        "Total collections discovered: 3",
    ):
        assert message in result.err
        assert message not in result.out
    json.loads(result.out)  # nothing but the data on stdout


def test_discover_quiet_hides_info_logs(chunked):
    result = discover(chunked, "-q", cwd=chunked.parent)
    assert result.code == 0
    assert "Scanning for collections" not in result.err
    assert "alpha" in result.out


def test_missing_chunked_dir_exits_2_with_one_line(tmp_path):
    result = discover(tmp_path / "nowhere", cwd=tmp_path)
    assert result.code == 2
    assert result.out == ""
    assert result.err.strip() == f"Error: Chunked directory not found: {tmp_path / 'nowhere'}"


def test_default_chunked_dir_is_relative_chunked(tmp_path):
    result = discover(cwd=tmp_path)
    assert result.code == 2
    assert result.err.strip() == "Error: Chunked directory not found: Chunked"


def test_dir_without_collections_exits_1_naming_pattern_and_depth(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.json").write_text("[]", encoding="utf-8")
    result = discover(tmp_path / "empty", "-q", cwd=tmp_path)
    assert result.code == 1
    assert result.out == ""
    assert result.err.strip() == (
        f"Error: No collections found in {tmp_path / 'empty'}: no directory within depth 5 "
        'holds files matching "*_chunks.json"'
    )


def test_collections_below_max_depth_are_hinted(chunked):
    result = discover(
        chunked, "--max-depth", "1", "--pattern", "b?_chunks.json", "-q", cwd=chunked.parent
    )
    assert result.code == 1
    assert result.err.strip().splitlines()[-1] == (
        f"Error: No collections found in {chunked}: no directory within depth 1 holds files "
        'matching "b?_chunks.json"; 1 deeper directories do (raise the max depth)'
    )


@pytest.mark.parametrize("command", [None, *sorted(cli.commands)])
def test_every_command_has_help_with_an_example(command):
    args = ["--help"] if command is None else [command, "--help"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "Usage:" in result.output
