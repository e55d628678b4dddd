"""Discovery on real directory trees in tmp_path: depth, names, nesting, and what gets warned."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import nobody_command, write_chunks

from embed_collections.corpus.discovery import (
    discover_collections,
    filter_collections,
    find_chunk_files,
)
from embed_collections.errors import DiscoveryError, UsageError

VALID_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")


def make_collection(directory: Path, files: int = 1) -> Path:
    """Give `directory` `files` chunk files, making it a collection."""
    for i in range(files):
        write_chunks(directory / f"doc{i}_chunks.json", [f"text {i}"])
    return directory


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "Chunked"


def test_find_chunk_files_lists_matching_files_only(root: Path):
    make_collection(root, files=3)
    (root / "notes.json").write_text("[]")
    (root / "dir_chunks.json").mkdir()  # a directory matching the pattern is not a file
    make_collection(root / "nested")
    found = find_chunk_files(root)
    assert [p.name for p in found] == ["doc0_chunks.json", "doc1_chunks.json", "doc2_chunks.json"]


def test_corpus_layout_and_log_lines(root: Path, caplog: pytest.LogCaptureFixture):
    make_collection(root / "Docling", files=2)
    make_collection(root / "FAST_DOCS" / "fastapi" / "fastapi")
    make_collection(root / "Other" / "fastapi")
    caplog.set_level(logging.INFO, logger="embed_collections")
    found = discover_collections(root)
    assert found == {
        "Docling": root / "Docling",
        "fastapi": root / "FAST_DOCS" / "fastapi" / "fastapi",
        "Other_fastapi": root / "Other" / "fastapi",
    }
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:2] == [f"Scanning for collections in: {root}", "Max recursion depth: 5"]
    assert "Discovered collection 'Docling' with 2 chunk files" in messages
    assert messages[-1] == "Total collections discovered: 3"


def test_depth_five_found_and_deeper_warned(root: Path, caplog: pytest.LogCaptureFixture):
    depth5 = make_collection(root / "1" / "2" / "3" / "4" / "five")
    depth6 = make_collection(depth5 / "six")
    depth8 = make_collection(depth6 / "7" / "eight")
    found = discover_collections(root)
    assert found == {"five": depth5}
    warned = warnings_of(caplog)
    assert any(str(depth6) in m and "depth 6" in m for m in warned)
    assert any(str(depth8) in m and "depth 8" in m for m in warned)
    assert discover_collections(root, max_depth=6) == {"five": depth5, "six": depth6}


def test_only_too_deep_collections_is_an_error_naming_depth_and_pattern(root: Path):
    make_collection(root / "a" / "b" / "c")
    with pytest.raises(DiscoveryError) as error:
        discover_collections(root, max_depth=2)
    message = str(error.value)
    assert "within depth 2" in message
    assert '"*_chunks.json"' in message
    assert "1 deeper directories" in message
    assert "\n" not in message


def test_empty_tree_is_an_error(root: Path):
    (root / "empty" / "also_empty").mkdir(parents=True)
    with pytest.raises(DiscoveryError, match=r"No collections found in .*Chunked"):
        discover_collections(root)


def test_missing_or_file_root_is_a_usage_error(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(
        UsageError, match=f"^Chunked directory not found: {re.escape(str(missing))}$"
    ):
        discover_collections(missing)
    a_file = tmp_path / "file.json"
    a_file.write_text("[]")
    with pytest.raises(UsageError, match="is not a directory"):
        discover_collections(a_file)
    with pytest.raises(UsageError, match="Max depth"):
        discover_collections(tmp_path, max_depth=-1)


def test_root_holding_chunk_files_is_a_collection(root: Path):
    make_collection(root)
    make_collection(root / "Chunked")  # same name as the root: collides with it
    found = discover_collections(root)
    assert list(found.values()) == [root, root / "Chunked"]
    assert list(found)[0] == "Chunked"
    assert re.fullmatch(r"Chunked_[0-9a-f]{8}", list(found)[1])
    assert discover_collections(root, max_depth=0) == {"Chunked": root}


def test_collection_inside_collection(root: Path):
    outer = make_collection(root / "Docling", files=2)
    inner = make_collection(outer / "api")
    same_name = make_collection(outer / "Docling")
    found = discover_collections(root)
    assert found == {"Docling": outer, "api": inner, "Docling_Docling": same_name}


def test_collisions_at_several_levels(root: Path):
    first = make_collection(root / "a" / "x")
    literal = make_collection(root / "a_x")
    top = make_collection(root / "x")
    deep = make_collection(root / "b" / "c" / "a_x")
    found = discover_collections(root)
    names = {path: name for name, path in found.items()}
    assert names[first] == "x"  # first in sorted traversal keeps the short name
    assert names[literal] == "a_x"
    assert names[deep] == "b_c_a_x"
    # "x" and "x" (relative path) are both taken, so a sha256 suffix decides.
    assert names[top] == "x_2d711642"  # sha256("x")[:8], the same on every machine
    assert list(found) == ["x", "a_x", "b_c_a_x", "x_2d711642"]


def test_names_do_not_depend_on_creation_order(tmp_path: Path):
    layout = ["m/docs", "a/docs", "z/q/docs", "docs", "a/b/docs"]
    first, second = tmp_path / "one" / "Chunked", tmp_path / "two" / "Chunked"
    for relative in layout:
        make_collection(first / relative)
    for relative in reversed(layout):
        make_collection(second / relative)
    names_one = {n: p.relative_to(first) for n, p in discover_collections(first).items()}
    names_two = {n: p.relative_to(second) for n, p in discover_collections(second).items()}
    assert list(names_one.items()) == list(names_two.items())
    again = {n: p.relative_to(first) for n, p in discover_collections(first).items()}
    assert list(again.items()) == list(names_one.items())
    assert names_one["docs"] == Path("a/b/docs")


def test_invalid_characters_are_replaced(root: Path):
    make_collection(root / "my docs (v2)")
    make_collection(root / "café")
    make_collection(root / "ok.name-1_x")
    found = discover_collections(root)
    assert set(found) == {"my_docs__v2_", "caf_", "ok.name-1_x"}
    assert all(VALID_NAME.fullmatch(name) for name in found)


def test_long_names_are_cut_and_stay_unique(root: Path):
    leaf = "x" * 200
    parent = root / ("p" * 250)
    paths = [make_collection(parent / branch / leaf) for branch in ("q", "r", "s")]
    found = discover_collections(root)
    names = {path: name for name, path in found.items()}
    assert names[paths[0]] == leaf
    for path in paths[1:]:
        assert len(names[path]) == 255
        assert names[path].startswith("p" * 246)
        assert VALID_NAME.fullmatch(names[path])
    assert len(set(found)) == 3


def test_symlink_loop_is_warned_and_not_followed(root: Path, caplog: pytest.LogCaptureFixture):
    docs = make_collection(root / "docs")
    (docs / "back_to_root").symlink_to(root, target_is_directory=True)
    (docs / "itself").symlink_to(docs, target_is_directory=True)
    found = discover_collections(root)
    assert found == {"docs": docs}
    warned = warnings_of(caplog)
    assert any(str(docs / "back_to_root") in m and "symlink loop" in m for m in warned)
    assert any(str(docs / "itself") in m for m in warned)


def test_symlinked_directory_is_followed(tmp_path: Path, root: Path):
    outside = make_collection(tmp_path / "elsewhere" / "linked")
    make_collection(root / "local")
    (root / "shortcut").symlink_to(outside, target_is_directory=True)
    found = discover_collections(root)
    assert found == {"local": root / "local", "shortcut": root / "shortcut"}


# Discovers under argv[1] and prints the collections found; warnings go to stderr.
DISCOVER = """
import json, logging, sys
from pathlib import Path
from embed_collections.corpus.discovery import discover_collections
logging.basicConfig(level=logging.WARNING)
found = discover_collections(Path(sys.argv[1]))
print(json.dumps({name: str(path) for name, path in found.items()}))
"""


def test_unreadable_directory_is_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # root reads a chmod 000 directory: there, discovery runs as user nobody in a child
    root = Path(tempfile.mkdtemp(prefix="ec-discovery-"))
    try:
        root.chmod(0o755)
        make_collection(root / "readable")
        locked = make_collection(root / "locked")
        for path in root.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        locked.chmod(0)
        if os.access(locked, os.R_OK):
            done = subprocess.run(
                [*nobody_command(), sys.executable, "-c", DISCOVER, str(root)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            found = {name: Path(p) for name, p in json.loads(done.stdout).items()}
            messages = done.stderr.splitlines()
        else:
            found = discover_collections(root)
            messages = warnings_of(caplog)
        assert found == {"readable": root / "readable"}
        assert any(str(locked) in m and "Cannot read" in m for m in messages)
    finally:
        (root / "locked").chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def test_filter_collections(root: Path):
    collections = {"b": root / "b", "Docling": root / "d", "FAST": root / "f"}
    assert filter_collections(collections, None) == collections
    assert filter_collections(collections, []) == collections
    assert list(filter_collections(collections, ["FAST", "b"])) == ["b", "FAST"]
    with pytest.raises(UsageError) as error:
        filter_collections(collections, ["Doclin", "b"])
    assert str(error.value) == 'Unknown collection "Doclin". Available: Docling, FAST, b'
    with pytest.raises(UsageError, match=r'^Unknown collections "x", "y"\. Available: '):
        filter_collections(collections, ["x", "b", "y", "x"])
