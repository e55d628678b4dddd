"""A full disk is a clean stop: summary written, finished collections kept, exit 1 with the
filesystem and the space needed; a re-run with space finishes without re-embedding.

Uses a small tmpfs (the store memory-maps its files: writing one on a full tmpfs is SIGBUS), so
it needs root and `mount -t tmpfs`; skipped with the reason otherwise, a failure in CI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import mount_tmpfs, read_summary, run_cli, write_chunks

from embed_collections.stores.edge import EdgeStore


def test_full_disk_stops_cleanly_and_a_rerun_with_space_finishes(small_disk, tiny_models, tmp_path):
    chunked = tmp_path / "Chunked"
    write_chunks(chunked / "a_small" / "small_chunks.json", [f"small {i}" for i in range(10)])
    write_chunks(chunked / "b_large" / "large_chunks.json", [f"b {i}" for i in range(12_000)])
    out = small_disk / "out"
    args = [
        "run",
        "--chunked-dir",
        chunked,
        "--output-dir",
        out,
        "--lease-dir",
        tmp_path / "leases",
        "--models",
        tiny_models["tiny32"],
        "--device",
        "cpu",
        "--no-index",
        "--wave-size",
        "10",
        "-q",
    ]

    stopped = run_cli(args, tmp_path)

    assert stopped.code == 1, stopped.err
    assert "Traceback" not in stopped.err
    assert f"the filesystem of {out}" in stopped.err and "MB are needed" in stopped.err
    summary = read_summary(out)
    assert summary["results"]["a_small"]["points_in_store"] == 10
    assert "MB are needed" in summary["stopped"]

    mount_tmpfs(small_disk, 96, remount=True)
    resumed = run_cli(args, tmp_path)

    assert resumed.code == 0, resumed.err
    summary = read_summary(out)
    assert summary["cache_misses"] == 12_000  # the small collection was not embedded again
    with EdgeStore(out / "qdrant") as store:
        assert store.count("a_small") == 10 and store.count("b_large") == 12_000


def fill(directory: Path) -> None:
    """Write zeros into `directory` until its filesystem refuses (ENOSPC)."""
    with (directory / "filler").open("wb") as handle:
        block = b"\0" * (256 * 1024)
        try:
            while True:
                handle.write(block)
                handle.flush()
        except OSError:
            pass


@pytest.mark.slow
def test_disk_filled_during_the_run_is_a_clean_stop_never_sigbus(tiny_models, tmp_path):
    target = tmp_path / "disk30"
    target.mkdir()
    mount_tmpfs(target, 30)
    try:
        chunked = tmp_path / "Chunked"
        for name in ("a", "b", "c"):
            texts = [f"{name} {i} " + "text " * 40 for i in range(2000)]
            write_chunks(chunked / name / f"{name}_chunks.json", texts)
        out = target / "out"
        args = [
            sys.executable, "-m", "embed_collections", "run", "--chunked-dir", chunked,
            "--output-dir", out, "--cache-dir", tmp_path / "cache", "--lease-dir",
            tmp_path / "leases", "--models", tiny_models["tiny32"], "--device", "cpu",
            "--no-index", "--wave-size", "2000", "-q",
        ]  # fmt: skip
        child = subprocess.Popen(list(map(str, args)), stderr=subprocess.PIPE, text=True)
        summary_file = out / "embedding_summary_v6.json"
        deadline = time.monotonic() + 120
        while not (out / "qdrant" / "a").exists() and child.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        fill(target)  # the disk fills while the store is being written
        err = child.communicate(timeout=300)[1]

        assert child.returncode in (0, 1), (child.returncode, err)  # never SIGBUS (-7 / 135)
        assert "Traceback" not in err and "Logging error" not in err, err
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        assert "running" not in summary
        if child.returncode == 1:
            assert summary["stopped"] and "re-run resumes" in err
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)
