"""Only finished, verified states are served: a real `run` child killed with SIGKILL while a
real served instance answers, then `ec.open` and a fresh server on what the dead run left; and
the store following the input (a collection whose folder is gone is deleted)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import cli_env, cli_run_args, read_summary, run_cli, write_chunks

import embed_collections as ec
from embed_collections.query.live import LiveRun
from embed_collections.query.server import BackgroundServer, create_app
from embed_collections.query.service import SearchService
from embed_collections.record.files import FINISHED_FILE

NAMES = [f"c{i}" for i in range(6)]


def write_tree(chunked: Path, generation: str, chunks: int = 60) -> None:
    """Every chunk's text names its generation, so a hit says which run stored it."""
    for name in NAMES:
        texts = [f"{generation} {name} chunk {i} about topic {i % 7}" for i in range(chunks)]
        write_chunks(chunked / name / f"{name}_chunks.json", texts)


def generations(hits: list[dict]) -> set[str]:
    return {hit["text"].split()[0] for hit in hits}


def start_run(chunked: Path, out: Path, model: Path) -> subprocess.Popen:
    args = cli_run_args(chunked, out, [model], "--no-index", "--backend", "torch")
    return subprocess.Popen(
        [sys.executable, "-m", "embed_collections", *map(str, args)],
        cwd=out.parent,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def store_written(out: Path, since: float) -> bool:
    """Whether a file of a shard changed after `since`: the run writes the store now."""
    for path in (out / "qdrant").glob("*/**/*"):
        try:
            if path.stat().st_mtime > since:
                return True
        except OSError:  # removed meanwhile: written too
            return True
    return False


def one_collection_loaded(out: Path, since: float) -> bool:
    """Whether the run finished loading a collection after `since` (the others still to go)."""
    for path in (out / "qdrant").glob("*.loaded.json"):
        try:
            if path.stat().st_mtime > since:
                return True
        except OSError:  # replaced meanwhile
            continue
    return False


def kill_while_writing(
    chunked: Path, out: Path, model: Path, ready=store_written, meanwhile=lambda: None
) -> None:
    """Start a run, wait until `ready(out, since)`, call `meanwhile`, SIGKILL it; it must not
    have finished (its marker is unchanged)."""
    before = (out / FINISHED_FILE).read_bytes()
    since = time.time()
    child = start_run(chunked, out, model)
    deadline = time.monotonic() + 120
    while not ready(out, since) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    meanwhile()
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert (out / FINISHED_FILE).read_bytes() == before  # killed part-way, not finished


def test_a_killed_run_leaves_the_last_finished_state_served(tmp_path, tiny_models):
    model = tiny_models["tiny32"]
    chunked, out = tmp_path / "Chunked", tmp_path / "out"
    write_tree(chunked, "old")
    assert run_cli(cli_run_args(chunked, out, [model], "--no-index"), tmp_path).code == 0
    assert (out / FINISHED_FILE).is_file()
    write_tree(chunked, "new")  # every text changes: the next run rewrites every collection

    service = SearchService(LiveRun(out, poll_seconds=0.05).start())
    answers, statuses, seen = 0, set(), set()
    try:
        with (
            BackgroundServer(create_app(service)) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            during = []
            check = lambda: during.append(client.get("/healthz").json()["newer_run"])  # noqa: E731
            # at its first write into a shard, then with one collection new and the rest old
            for ready in (store_written, one_collection_loaded):
                kill_while_writing(chunked, out, model, ready, check)
                for _ in range(20):
                    answer = client.post("/search", json={"query": "topic 3", "top_k": 1000})
                    statuses.add(answer.status_code)
                    seen |= generations(answer.json()["hits"])
                    answers += 1
            health = client.get("/healthz").json()
    finally:
        service.close()
    assert statuses == {200} and answers == 40
    assert seen == {"old"}  # never a text of the run that did not finish
    assert during == ["running", "running"]
    assert health["newer_run"] == "incomplete" and health["collections"] == len(NAMES)

    # Opened afresh on what the dead run left: only collections the finished run vouches for.
    with ec.open(out) as opened:
        hits = opened.search("topic 3", None, 1000)
        assert {hit.text.split()[0] for hit in hits} <= {"old"}
        left = set(NAMES) - set(opened.names)
    assert left and left != set(NAMES)  # the dead run's collections out, the others served
    fresh = SearchService(LiveRun(out, poll_seconds=0.05).start())
    try:
        assert fresh.health()["left_out"] == sorted(left)
        _, hits = fresh.search_now(query="topic 3", top_k=1000)
        assert {hit.text.split()[0] for hit in hits} <= {"old"}
    finally:
        fresh.close()

    assert run_cli(cli_run_args(chunked, out, [model], "--no-index"), tmp_path).code == 0
    with ec.open(out) as opened:
        assert opened.names == NAMES
        assert {hit.text.split()[0] for hit in opened.search("topic 3", None, 1000)} == {"new"}


@pytest.mark.slow
def test_twenty_kills_never_serve_a_mixed_answer(tmp_path, tiny_models):
    model = tiny_models["tiny32"]
    chunked, out = tmp_path / "Chunked", tmp_path / "out"
    write_tree(chunked, "g0")
    assert run_cli(cli_run_args(chunked, out, [model], "--no-index"), tmp_path).code == 0
    service = SearchService(LiveRun(out, poll_seconds=0.05).start())
    mixed = errors = 0
    seen: set[str] = set()
    try:
        with (
            BackgroundServer(create_app(service)) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            for kill in range(20):
                write_tree(chunked, f"g{kill + 1}")
                ready = random.choice([store_written, one_collection_loaded])
                kill_while_writing(chunked, out, model, ready)
                for _ in range(5):
                    answer = client.post("/search", json={"query": "topic 3", "top_k": 1000})
                    errors += answer.status_code >= 500
                    found = generations(answer.json().get("hits", []))
                    mixed += len(found) > 1
                    seen |= found
    finally:
        service.close()
    assert (mixed, errors, seen) == (0, 0, {"g0"})  # only the one run that finished


def test_a_collection_whose_folder_is_gone_leaves_the_store(tmp_path, tiny_models):
    model = tiny_models["tiny32"]
    chunked, out = tmp_path / "Chunked", tmp_path / "out"
    write_tree(chunked, "old", chunks=5)
    args = cli_run_args(chunked, out, [model], "--no-index")
    assert run_cli(args, tmp_path).code == 0
    for gone in ("c4", "c5"):
        for path in (chunked / gone).iterdir():
            path.unlink()
        (chunked / gone).rmdir()

    subset = run_cli([*args, "--collections", "c0"], tmp_path)  # not the whole tree: kept
    assert subset.code == 0 and read_summary(out)["removed"] == []
    kept = run_cli([*args, "--keep-missing"], tmp_path)
    assert kept.code == 0 and read_summary(out)["removed"] == []
    with ec.open(out) as opened:
        assert opened.names == NAMES

    removed = run_cli(args, tmp_path)
    assert removed.code == 0, removed.err
    summary = read_summary(out)
    assert summary["removed"] == ["c4", "c5"]
    assert list(summary).index("removed") > list(summary).index("failed_collections")
    assert not (out / "qdrant" / "c4").exists()
    with ec.open(out) as opened:
        assert opened.names == NAMES[:4]
        hits = opened.search("topic 3", None, 100)
        assert hits and {hit.collection for hit in hits} <= set(NAMES[:4])
    searched = run_cli(["search", "all", "topic 3", "--output-dir", out, "--json"], tmp_path)
    assert searched.code == 0 and '"c4"' not in searched.out and '"c0"' in searched.out


def test_the_marker_vouches_only_for_the_load_it_recorded():
    from embed_collections.record.finished import FinishedRun

    load = {"signature": "s1", "count": 3, "digest": "d1", "files": [["x", 1, 2, 3]]}
    finished = FinishedRun("t", 0.0, {"kept": load, "failed": None, "rewritten": load})
    markers = {
        "kept": {**load, "files": [["x", 9, 9, 9]]},  # a copy has other file stats: same load
        "failed": None,  # the finished run failed it and nothing wrote it since
        "rewritten": {**load, "signature": "s2"},  # a later run loaded it, did not finish
        "new": {"signature": "s3", "count": 1, "digest": "d3"},  # created by that later run
    }
    assert finished.split(markers, markers.get) == (["kept"], ["new", "rewritten"])
    server = FinishedRun("t", 0.0, {"a": None}, markers=False)  # a server keeps no markers
    assert server.split(["a", "b"], lambda name: None) == (["a", "b"], [])
