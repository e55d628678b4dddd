"""The README says where things are as the code and the Makefile put them, and documents shell
completion with the variable click really reads."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import run_cli

from embed_collections.record.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_cache_paths_match_the_code_and_the_demo():
    config = RunConfig(chunked_dir=Path("Chunked"), output_dir=Path("OUTPUT"))
    assert f"`{config.embedding_cache_path.as_posix()}" in README
    (demo,) = re.findall(r"demo:.*?--output-dir (\S+)", (ROOT / "Makefile").read_text(), re.S)
    demo_cache = RunConfig(chunked_dir=Path("c"), output_dir=Path(demo)).embedding_cache_path
    assert f"`{demo_cache.as_posix()}`" in README
    assert "`output/cache" not in README  # the demo's output is output/demo


def test_documented_shell_completion_works(tmp_path):
    (line,) = [line for line in README.splitlines() if "_COMPLETE=bash_source" in line]
    variable = re.search(r"(_[A-Z_]+_COMPLETE)=bash_source", line).group(1)
    result = run_cli([], tmp_path, env={variable: "bash_source"})
    assert result.code == 0
    assert "complete -o nosort -F _embed_collections_completion embed-collections" in result.out
