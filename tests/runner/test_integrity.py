"""The store is the truth: after any corruption a re-run ends with the store equal to the input.

Each test damages a copy of one finished run the way a killed run, another tool or a disk would
(orphan points, a foreign upload, a deleted segment file), re-runs the real CLI and reads the
points back from the shard.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import Result, cli_run_args, invoke, read_points, read_summary, run_cli, write_chunks
from qdrant_edge import EdgeShard, Point, UpdateOperation

from embed_collections.stores import PointBatch, edge_files
from embed_collections.stores.edge import EdgeStore
from embed_collections.stores.open import point_id

TEXTS = {
    "alpha": [f"Alpha page {i}: the quick brown fox jumps over dog {i}." for i in range(9)],
    "beta": [f"Beta step {i}: install the package and run command {i}." for i in range(7)],
}


def expected_ids(collection: str) -> set[str]:
    return {
        point_id(collection, f"{collection}_chunks-{i:04d}") for i in range(len(TEXTS[collection]))
    }


def read_vectors(store_root: Path, collection: str) -> dict[str, Any]:
    """point id -> vector, read straight from the shard on disk."""
    return {pid: vector for pid, (vector, _) in read_points(store_root, collection).items()}


def run_args(chunked: Path, out: Path, model: Path, *extra: Any) -> list[Any]:
    return cli_run_args(chunked, out, [model], "--no-index", *extra)


def assert_store_equals_input(out: Path, reference: dict[str, dict[str, list[float]]]) -> None:
    for collection in TEXTS:
        points = read_vectors(out / "qdrant", collection)
        assert set(points) == expected_ids(collection)
        for pid, vector in points.items():
            np.testing.assert_allclose(vector, reference[collection][pid], rtol=1e-5, atol=1e-6)
        result = read_summary(out)["results"][collection]
        assert result["points_in_store"] == len(TEXTS[collection])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_models) -> dict[str, Any]:
    """One complete run over two collections, and the vectors it stored."""
    root = tmp_path_factory.mktemp("integrity")
    chunked = root / "Chunked"
    for name, texts in TEXTS.items():
        write_chunks(chunked / name / f"{name}_chunks.json", texts)
    out = root / "out"
    result = invoke(run_args(chunked, out, tiny_models["tiny32"]))
    assert result.code == 0, result.err
    vectors = {name: read_vectors(out / "qdrant", name) for name in TEXTS}
    return {"chunked": chunked, "out": out, "vectors": vectors}


def copy_out(finished: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the finished run whose markers vouch for the copied files, as a run leaves
    them (a copy has new inodes and ctimes: unmarked, it would be read back whatever happens)."""
    out = tmp_path / "out"  # a sparse copy: the shards' 32 MB files are mostly holes
    subprocess.run(["cp", "-a", "--sparse=always", str(finished["out"]), str(out)], check=True)
    with EdgeStore(out / "qdrant") as store:
        for name in TEXTS:
            marker = store.loaded_marker(name)
            assert marker is not None
            store.mark_loaded(name, marker["signature"], marker["count"], marker["digest"])
            assert store.unchanged_since_marked(name)
    return out


def shard_stats(out: Path) -> dict[str, list[list[Any]]]:
    return {name: edge_files.file_stats(out / "qdrant" / name) for name in TEXTS}


def rerun(finished: dict[str, Any], out: Path, model: Path, *extra: Any) -> Result:
    return invoke(run_args(finished["chunked"], out, model, *extra))


def test_complete_run_leaves_a_marker_with_the_count(finished):
    with EdgeStore(finished["out"] / "qdrant") as store:
        marker = store.loaded_marker("alpha")
    assert marker is not None and marker["count"] == len(TEXTS["alpha"])


def test_an_unchanged_rerun_trusts_unchanged_files_and_opens_no_shard(
    finished, tiny_models, tmp_path
):
    out = copy_out(finished, tmp_path)
    before = shard_stats(out)

    result = rerun(finished, out, tiny_models["tiny32"])

    assert result.code == 0, result.err
    log = (out / "embedding_v6.log").read_text(encoding="utf-8")
    assert log.count("files unchanged since its last load") == len(TEXTS)
    # opening a shard rewrites some of its files: none was opened
    assert shard_stats(out) == before
    assert {r["status"] for r in read_summary(out)["results"].values()} == {"unchanged"}


def test_verify_full_reads_every_collection_back_and_marks_it_again(
    finished, tiny_models, tmp_path
):
    out = copy_out(finished, tmp_path)

    result = rerun(finished, out, tiny_models["tiny32"], "--verify-full")

    assert result.code == 0, result.err
    log = (out / "embedding_v6.log").read_text(encoding="utf-8")
    assert log.count("points, read back); store left as it is") == len(TEXTS)
    with EdgeStore(out / "qdrant") as store:  # the read changed files: their new stats are kept
        assert all(store.unchanged_since_marked(name) for name in TEXTS)
    assert_store_equals_input(out, finished["vectors"])  # (opening the shards changes them)


def test_a_rewrite_that_restores_size_and_mtime_is_still_found(finished, tiny_models, tmp_path):
    out = copy_out(finished, tmp_path)
    path = vector_file(out, "alpha")
    info = path.stat()
    damage_random_bytes(out)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))  # the ctime moves all the same

    result = rerun(finished, out, tiny_models["tiny32"])

    assert result.code == 0, result.err
    assert_store_equals_input(out, finished["vectors"])
    assert read_summary(out)["results"]["alpha"]["store_repaired"]
    assert read_summary(out)["results"]["beta"]["store_repaired"] is None


def test_orphan_points_written_by_another_tool_are_removed(finished, tiny_models, tmp_path):
    out = copy_out(finished, tmp_path)
    shard = EdgeShard.load(str(out / "qdrant" / "alpha"))
    orphans = [Point(str(uuid.uuid4()), {"": [0.1] * 32}, {"text": "orphan"}) for _ in range(3)]
    shard.update(UpdateOperation.upsert_points(orphans))
    shard.flush()
    shard.close()

    result = rerun(finished, out, tiny_models["tiny32"])

    assert result.code == 0, result.err
    assert_store_equals_input(out, finished["vectors"])
    # the marker vouched for the old content: the collection is rebuilt and the damage named
    assert "3 are foreign" in read_summary(out)["results"]["alpha"]["store_repaired"]
    assert read_summary(out)["cache_misses"] == 0


def test_foreign_upload_of_other_vectors_is_replaced(finished, tiny_models, tmp_path):
    out = copy_out(finished, tmp_path)
    ids = sorted(expected_ids("beta"))
    foreign = np.full((len(ids), 32), 0.5, dtype=np.float32)
    with EdgeStore(out / "qdrant") as store:  # the very path `upload` writes through
        store.upsert("beta", PointBatch(ids=ids, dense={"": foreign}, payloads=[{}] * len(ids)))
        store.finish("beta", build_index=False)

    result = rerun(finished, out, tiny_models["tiny32"])

    assert result.code == 0, result.err
    assert_store_equals_input(out, finished["vectors"])


def test_shard_with_a_deleted_segment_file_is_rebuilt_from_the_cache(
    finished, tiny_models, tmp_path
):
    out = copy_out(finished, tmp_path)
    (segment,) = (out / "qdrant" / "alpha" / "segments").iterdir()
    (segment / "segment.json").unlink()

    result = rerun(finished, out, tiny_models["tiny32"])

    assert result.code == 0, result.err
    assert "rebuilding it from the embedding cache" in result.err
    assert_store_equals_input(out, finished["vectors"])
    assert read_summary(out)["cache_misses"] == 0


def test_recreate_replaces_a_shard_that_no_longer_opens(finished, tiny_models, tmp_path):
    out = copy_out(finished, tmp_path)
    (segment,) = (out / "qdrant" / "beta" / "segments").iterdir()
    (segment / "segment.json").unlink()

    result = rerun(finished, out, tiny_models["tiny32"], "--recreate")

    assert result.code == 0, result.err
    assert_store_equals_input(out, finished["vectors"])


@pytest.mark.slow
def test_kill_and_corrupt_loop_never_leaves_a_store_unequal_to_its_input(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import integrity

    assert integrity.main(["--kills", "2", "--seed", "3", "--workdir", str(tmp_path)]) == 0


def vector_file(out: Path, collection: str) -> Path:
    (segment,) = (out / "qdrant" / collection / "segments").iterdir()
    return segment / "vector_storage" / "vectors" / "chunk_0.mmap"


def damage_truncate_vectors(out: Path) -> None:
    vector_file(out, "alpha").write_bytes(b"")


def damage_random_bytes(out: Path) -> None:
    with vector_file(out, "alpha").open("r+b") as handle:
        handle.seek(0)
        handle.write(np.random.default_rng(7).bytes(2048))


def damage_truncate_payloads(out: Path) -> None:
    (segment,) = (out / "qdrant" / "alpha" / "segments").iterdir()
    (segment / "payload_storage" / "page_0.dat").write_bytes(b"")


def damage_delete_one_add_one(out: Path) -> None:
    shard = EdgeShard.load(str(out / "qdrant" / "alpha"))
    shard.update(UpdateOperation.delete_points([sorted(expected_ids("alpha"))[0]]))
    foreign = Point(str(uuid.uuid4()), {"": [0.1] * 32}, {"text": "foreign"})
    shard.update(UpdateOperation.upsert_points([foreign]))
    shard.flush()
    shard.close()


@pytest.mark.parametrize(
    "damage",
    [
        damage_truncate_vectors,
        pytest.param(damage_random_bytes, marks=pytest.mark.slow),
        pytest.param(damage_truncate_payloads, marks=pytest.mark.slow),
        damage_delete_one_add_one,
    ],
)
def test_damage_that_keeps_the_count_is_found_and_rebuilt(finished, tiny_models, tmp_path, damage):
    out = copy_out(finished, tmp_path)
    damage(out)

    result = run_cli(run_args(finished["chunked"], out, tiny_models["tiny32"]), tmp_path)

    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    assert_store_equals_input(out, finished["vectors"])
    assert read_summary(out)["results"]["alpha"]["store_repaired"]
    assert read_summary(out)["results"]["beta"]["store_repaired"] is None
    assert read_summary(out)["cache_misses"] == 0
