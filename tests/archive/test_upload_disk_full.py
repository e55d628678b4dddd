"""`upload` into an embedded store on a full disk is a clean stop (one line, exit 1, no SIGBUS),
and the same command finishes once there is space, replacing a shard a cut-short write left
unopenable: the real CLI in a child process, a real tmpfs (needs root and `mount -t tmpfs`;
skipped with the reason otherwise, a failure in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import mount_tmpfs, run_cli, write_chunks

from embed_collections.engine.options import EngineOptions
from embed_collections.record.config import RunConfig
from embed_collections.runner.pipeline import run
from embed_collections.stores.edge import EdgeStore

SMALL = {"alpha": 12, "beta": 8}
LARGE = {"alpha": 300, "beta": 200}  # chunks of ~1.5 KB: more than a 3 MB disk holds


def export(tiny_models, root: Path, sizes: dict[str, int]) -> Path:
    """An export (`run --export`, no store) of collections of `sizes` chunks."""
    for name, size in sizes.items():
        texts = [f"{name} chunk {i}: " + "lorem ipsum dolor sit amet " * 55 for i in range(size)]
        write_chunks(root / "Chunked" / name / f"{name}_chunks.json", texts)
    output = root / "output"
    engine = EngineOptions(device="cpu", show_progress=False, lease_dir=root / "leases")
    config = RunConfig(
        chunked_dir=root / "Chunked",
        output_dir=output,
        models=(str(tiny_models["tiny32"]),),
        engine=engine.resolved(),
        export=True,
        upload=False,
    )
    summary = run(config)
    assert summary.exit_code == 0, summary.failed_collections
    return output


@pytest.fixture(scope="module")
def small_export(tiny_models, tmp_path_factory) -> Path:
    return export(tiny_models, tmp_path_factory.mktemp("upload-small"), SMALL)


@pytest.fixture(scope="module")
def large_export(tiny_models, tmp_path_factory) -> Path:
    return export(tiny_models, tmp_path_factory.mktemp("upload-large"), LARGE)


def exported_ids(export_dir: Path, name: str) -> set[str]:
    metadata = json.loads((export_dir / name / f"{name}_metadata.json").read_text("utf-8"))
    return {m["point_id"] for m in metadata}


def check_stop_then_resume(export_dir: Path, sizes: dict[str, int], disk: Path, cwd: Path) -> None:
    store = disk / "qdrant"
    args = ["upload", export_dir, "--qdrant-path", store, "--json", "-q"]

    stopped = run_cli(args, cwd)

    assert stopped.code == 1, (stopped.code, stopped.err)  # not 135 (SIGBUS) or a traceback
    assert stopped.err.startswith("Error: ") and stopped.err.count("\n") == 1, stopped.err
    assert str(store) in stopped.err and "free space" in stopped.err

    mount_tmpfs(disk, 128, remount=True)
    resumed = run_cli(args, cwd)

    assert resumed.code == 0, resumed.err
    assert json.loads(resumed.out) == sizes
    with EdgeStore(store) as edge:
        for name in sizes:
            assert edge.point_ids(name) == exported_ids(export_dir, name)


def test_upload_on_a_disk_too_small_for_a_shard_stops_cleanly_and_resumes(
    small_export, small_disk, tmp_path
):
    mount_tmpfs(small_disk, 1, remount=True)  # the engine's first files do not fit
    check_stop_then_resume(small_export, SMALL, small_disk, tmp_path)


@pytest.mark.slow
def test_upload_filling_the_disk_while_writing_points_stops_cleanly_and_resumes(
    large_export, small_disk, tmp_path
):
    mount_tmpfs(small_disk, 3, remount=True)  # full while points are written (SIGBUS there)
    check_stop_then_resume(large_export, LARGE, small_disk, tmp_path)


def test_upload_replaces_a_shard_left_unopenable(small_export, tmp_path):
    store = tmp_path / "qdrant"
    args = ["upload", small_export, "--qdrant-path", store, "--json", "-q"]
    assert run_cli(args, tmp_path).code == 0
    (segment,) = (store / "alpha" / "segments").iterdir()
    (segment / "segment.json").unlink()  # as a write cut short can leave it

    again = run_cli(args, tmp_path)

    assert again.code == 0, again.err
    assert "replacing it with the export's points" in again.err
    with EdgeStore(store) as edge:
        assert edge.point_ids("alpha") == exported_ids(small_export, "alpha")
