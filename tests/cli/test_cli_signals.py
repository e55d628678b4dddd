"""SIGTERM and SIGINT stop a run cleanly: the summary says `interrupted`, the message says how to
resume, the exit code is 128 + the signal, and a re-run finishes without losing work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli_run_args, run_cli, write_chunks

from embed_collections.stores.edge import EdgeStore


def wait_for(predicate, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("stop", "code"),
    [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
)
def test_signal_stops_cleanly_and_a_rerun_resumes(tiny_models, tmp_path, stop, code):
    chunked = tmp_path / "Chunked"
    for name in ("a", "b", "c"):
        write_chunks(
            chunked / name / f"{name}_chunks.json", [f"{name} {i} text" for i in range(600)]
        )
    out = tmp_path / "out"
    args = cli_run_args(chunked, out, [tiny_models["tiny32"]], "--no-index", "--wave-size", "600")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen(
        [sys.executable, "-m", "embed_collections", *map(str, args)],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    summary_file = out / "embedding_summary_v6.json"
    wait_for(summary_file.exists)  # reserved once the run is past its preflight
    child.send_signal(stop)
    err = child.communicate(timeout=300)[1]

    assert child.returncode == code, err
    assert "Traceback" not in err
    assert f"Interrupted ({stop.name})" in err and "re-run the same command to resume" in err
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    assert summary["interrupted"] is True and "running" not in summary

    resumed = run_cli(args, tmp_path)
    assert resumed.code == 0, resumed.err
    with EdgeStore(out / "qdrant") as store:
        assert [store.count(name) for name in ("a", "b", "c")] == [600, 600, 600]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a container's init to reap it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_store_process_exits_with_a_killed_run_and_frees_its_locks(tiny_models, tmp_path):
    chunked = tmp_path / "Chunked"
    write_chunks(chunked / "a" / "a_chunks.json", [f"a {i} text" for i in range(3000)])
    out = tmp_path / "out"
    args = cli_run_args(chunked, out, [tiny_models["tiny32"]], "--no-index")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen(
        [sys.executable, "-m", "embed_collections", *map(str, args)], cwd=tmp_path, env=env
    )
    wait_for(lambda: bool(children_of(child.pid)) or child.poll() is not None)
    store_processes = children_of(child.pid)
    child.kill()  # kill -9: no cleanup in the run itself
    child.wait()

    for pid in store_processes:  # the store child notices and exits, releasing what it held
        wait_for(lambda pid=pid: not alive(pid), seconds=30)
    resumed = run_cli([*args, "--no-wait"], tmp_path)  # the output directory is free at once
    assert resumed.code == 0, resumed.err
    with EdgeStore(out / "qdrant") as store:
        assert store.count("a") == 3000
