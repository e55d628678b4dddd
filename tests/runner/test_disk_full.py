"""A full disk is a clean stop: summary written, finished collections kept, exit 1 with the
filesystem and the space needed; a re-run with space finishes without re-embedding.

Uses a small tmpfs (the store memory-maps its files: writing one on a full tmpfs is SIGBUS), so
it needs root and `mount -t tmpfs`; skipped with the reason otherwise, a failure in CI."""

from __future__ import annotations

from conftest import mount_tmpfs, read_summary, run_cli, write_chunks

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
