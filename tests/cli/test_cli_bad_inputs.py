"""Every bad input of issue 12 is a one-line message with the documented exit code, never a
traceback: the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Result,
    cli_run_args,
    nested_dict,
    nobody_command,
    read_summary,
    run_cli,
    write_chunks,
)

from embed_collections.engine.models.tiny import build_tiny_model
from embed_collections.runner.dirlock import output_lock
from embed_collections.stores.edge import EdgeStore


def assert_message(result: Result, code: int, *texts: str) -> None:
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err
    for text in texts:
        assert text in result.err, result.err


def base_args(chunked: Path, out: Path, model: Path, *extra: Any) -> list[Any]:
    return cli_run_args(chunked, out, [model], "--no-index", *extra)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad") / "Chunked"
    write_chunks(root / "alpha" / "alpha_chunks.json", [f"alpha {i} text" for i in range(5)])
    return root


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (["--batch-size", "-5"], "--batch-size"),
        (["--max-seq-length", "-4"], "--max-seq-length"),
        (["--wave-size", "0"], "--wave-size"),
        (["--qdrant-port", "0"], "--qdrant-port"),
        (["--truncate-dim", "0"], "--truncate-dim"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(chunked, tiny_models, tmp_path, extra, option):
    result = run_cli(base_args(chunked, tmp_path / "out", tiny_models["tiny32"], *extra), tmp_path)
    assert_message(result, 2, f"Invalid value for '{option}'")
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 3 and lines[-1].startswith("Error: ")  # usage line, hint, the error


def test_search_top_k_below_one_is_a_usage_error(tmp_path):
    result = run_cli(["search", "alpha", "query", "--top-k", "-1"], tmp_path)
    assert_message(result, 2, "Invalid value for '--top-k'")


def test_non_finite_weight_is_a_usage_error(chunked, tiny_models, tmp_path):
    args = base_args(chunked, tmp_path / "out", tiny_models["tiny32"], "--weights", "inf")
    assert_message(run_cli(args, tmp_path), 2, "weights must be finite numbers")


def test_model_limits_are_usage_errors_naming_the_range(chunked, tiny_models, tmp_path):
    model = tiny_models["tiny32"]
    too_long = run_cli(
        base_args(chunked, tmp_path / "o1", model, "--max-seq-length", "1024"), tmp_path
    )
    assert_message(too_long, 2, "--max-seq-length 1024 is longer than", "512 positions")
    too_wide = run_cli(base_args(chunked, tmp_path / "o2", model, "--truncate-dim", "64"), tmp_path)
    assert_message(too_wide, 2, "--truncate-dim 64 is larger than", "from 1 to 32")
    assert "cache" not in too_wide.err


def test_cache_dir_that_cannot_be_created(chunked, tiny_models, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = base_args(chunked, tmp_path / "out", tiny_models["tiny32"], "--cache-dir", blocker / "c")
    assert_message(run_cli(args, tmp_path), 1, "cannot be created", "choose another --cache-dir")


def test_damaged_cache_names_the_fix(chunked, tiny_models, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "embeddings.sqlite").write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    args = base_args(chunked, tmp_path / "out", tiny_models["tiny32"], "--cache-dir", cache)
    assert_message(run_cli(args, tmp_path), 1, "is damaged or unreadable", "delete it")


def test_second_run_with_no_wait_names_the_holder(chunked, tiny_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out):
        args = base_args(chunked, out, tiny_models["tiny32"], "--no-wait")
        result = run_cli(args, tmp_path)
    assert_message(result, 1, f"is in use by another run (pid {os.getpid()})")


def test_two_concurrent_recreates_take_turns_and_leave_the_input(chunked, tiny_models, tmp_path):
    out = tmp_path / "out"
    args = base_args(chunked, out, tiny_models["tiny32"], "--recreate")
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: run_cli(args, tmp_path), range(2)))
    for result in results:
        assert result.code == 0, result.err
        assert "Traceback" not in result.err and "Error" not in result.err
    with EdgeStore(out / "qdrant") as store:
        assert store.count("alpha") == 5
    # each run logs from taking the output directory's lock to releasing it: the log holds one
    # whole run, then the other, never their lines interleaved
    lines = (out / "embedding_v6.log").read_text(encoding="utf-8").splitlines()
    marks = [
        "start" if "Environment: " in line else "end"
        for line in lines
        if "Environment: " in line or "Failed: " in line
    ]
    assert marks == ["start", "end", "start", "end"]


def test_partly_loaded_collection_with_poison_exits_3(tiny_models, tmp_path):
    chunked = tmp_path / "Chunked"
    nested = nested_dict(300)
    records = [{"text": f"good {i}"} for i in range(4)] + [{"text": "deep", "metadata": nested}]
    (chunked / "mixed").mkdir(parents=True)
    (chunked / "mixed" / "a_chunks.json").write_text(json.dumps(records), encoding="utf-8")
    (chunked / "mixed" / "b_chunks.json").write_text("{broken", encoding="utf-8")
    out = tmp_path / "out"
    result = run_cli(base_args(chunked, out, tiny_models["tiny32"]), tmp_path)
    assert_message(result, 3, "nested deeper than 32 levels", "not valid JSON")
    summary = read_summary(out)
    assert summary["file_errors"] == 1 and summary["skipped_records"] == 1
    assert "mixed" in summary["failed_collections"]
    with EdgeStore(out / "qdrant") as store:
        assert store.count("mixed") == 4  # the shard still opens: poison never reached it


def as_nobody(args: list[Any], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI as uid 65534, without root's permission override."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(
            str(Path(p).resolve())
            for p in os.environ.get("PYTHONPATH", "src").split(os.pathsep)
            if p
        ),
    }
    env["EMBED_COLLECTIONS_CACHE_HOME"] = str(cwd / "home")
    env["EMBED_COLLECTIONS_EXPORT_DIR"] = str(cwd / "home" / "exported")
    env["HOME"] = str(cwd / "home")
    command = [*nobody_command(), sys.executable, "-m", "embed_collections"]
    return subprocess.run(
        [*command, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def world(tmp_path_factory):
    """A directory every user may use, with a tiny model readable by all."""
    nobody_command()  # skips, or fails in CI, where no child can run as nobody
    root = Path(tempfile.mkdtemp(prefix="ec-world-"))
    root.chmod(0o777)
    build_tiny_model(root / "model", 32, seed=1)
    (root / "home").mkdir(mode=0o777)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_unreadable_collection_directory_fails_in_the_summary(world):
    chunked = world / "Chunked"
    write_chunks(chunked / "alpha" / "alpha_chunks.json", ["alpha one", "alpha two"])
    write_chunks(chunked / "secret" / "secret_chunks.json", ["hidden"])
    for path in [chunked, *chunked.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    (chunked / "secret").chmod(0o000)
    out = world / "out"
    result = as_nobody(base_args(chunked, out, world / "model"), world)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    summary = read_summary(out)
    assert "Permission denied" in summary["failed_collections"]["secret"]
    assert summary["results"]["alpha"]["points_in_store"] == 2


def test_read_only_output_directory_is_one_line(world, chunked):
    out = world / "readonly"
    out.mkdir(mode=0o555)
    out.chmod(0o555)
    result = as_nobody(base_args(chunked, out, world / "model"), world)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "not writable" in result.stderr and "--output-dir" in result.stderr


def test_one_bad_record_costs_one_record(tiny_models, tmp_path):
    chunked = tmp_path / "Chunked"
    (chunked / "mixed").mkdir(parents=True)
    huge = "9" * 5000
    # written by hand: a lone surrogate escape and a 5000-digit integer are valid JSON text
    (chunked / "mixed" / "a_chunks.json").write_text(
        '[{"text": "good 0"}, {"text": "bad \\ud800 text"}, '
        f'{{"text": "big", "metadata": {{"n": {huge}}}}}, '
        '{"text": "good 3", "metadata": {"k": "\\udfff"}}, {"text": "good 4"}]',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    result = run_cli(base_args(chunked, out, tiny_models["tiny32"]), tmp_path)
    name = (chunked / "mixed" / "a_chunks.json").as_posix()
    assert_message(
        result,
        0,
        f"{name} record 1: text holds a lone surrogate",
        f"{name} record 2: metadata holds a 5000-digit integer (record skipped)",
        f"{name} record 3: metadata holds a string with a lone surrogate",
    )
    summary = json.loads((out / "embedding_summary_v6.json").read_text(encoding="utf-8"))
    assert summary["skipped_records"] == 3 and summary["file_errors"] == 0
    with EdgeStore(out / "qdrant") as store:
        assert store.count("mixed") == 2


def test_huge_equal_weights_are_one_to_one(chunked, tiny_models, tmp_path):
    out = tmp_path / "out"
    models = [tiny_models["tiny32"], tiny_models["tiny48"]]
    args = cli_run_args(chunked, out, models, "--no-index", "--weights", "1e308", "1e308")
    result = run_cli(args, tmp_path)
    assert_message(result, 0)
    with EdgeStore(out / "qdrant") as store:
        scan = store.scan("alpha")
    assert len(scan.ids) == 5 and not scan.unusable  # no zero, no NaN vector was stored
    found = run_cli(["search", "alpha", "alpha 1 text", "--output-dir", out, "--json"], tmp_path)
    assert found.code == 0, found.err
    assert "alpha 1 text" in found.out


@pytest.mark.parametrize(
    ("url", "problem"),
    [("ftp://example.com", 'scheme "ftp" is not http or https'), ("::garbage", "has no scheme")],
)
def test_qdrant_url_that_is_not_http_is_a_usage_error(chunked, tiny_models, tmp_path, url, problem):
    args = base_args(chunked, tmp_path / "out", tiny_models["tiny32"], "--qdrant-url", url)
    assert_message(run_cli(args, tmp_path), 2, problem, "use http(s)://HOST[:PORT]")


def test_unusable_lease_dir_is_one_line(chunked, tiny_models, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = [*base_args(chunked, tmp_path / "out", tiny_models["tiny32"]), "--lease-dir", blocker]
    assert_message(run_cli(args, tmp_path), 1, f"Lease directory {blocker} cannot be used")


def test_too_long_collection_name_fails_alone(chunked, tiny_models, tmp_path):
    tree = Path(shutil.copytree(chunked, tmp_path / "Chunked"))
    write_chunks(tree / ("L" * 250) / "x_chunks.json", ["long name"])
    out = tmp_path / "out"
    result = run_cli(base_args(tree, out, tiny_models["tiny32"]), tmp_path)
    assert_message(result, 3, "is 250 bytes", "rename its folder")
    summary = json.loads((out / "embedding_summary_v6.json").read_text(encoding="utf-8"))
    assert summary["results"]["alpha"]["points_in_store"] == 5


def test_qrels_that_are_not_utf8_are_one_line(tiny_models, tmp_path):
    folder = tmp_path / "toy"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "one"}\n', encoding="utf-8")
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "one"}\n', encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\nq1\td\xff\xfe1\t1\n")
    args = ["eval", "--beir", folder, "--models", tiny_models["tiny32"], "--device", "cpu"]
    args += ["--output-dir", tmp_path / "out", "--lease-dir", tmp_path / "leases"]
    assert_message(run_cli(args, tmp_path), 2, "test.tsv: not UTF-8 text", "convert the file")


def test_two_runs_on_one_qdrant_path_are_one_writer_at_a_time(chunked, tiny_models, tmp_path):
    shared = tmp_path / "shared-qdrant"
    with EdgeStore(shared) as holder:
        holder.check_writable()  # this process is the store's writer now
        args = base_args(chunked, tmp_path / "out", tiny_models["tiny32"], "--qdrant-path", shared)
        result = run_cli(args, tmp_path)
    assert_message(result, 1, f"is being written by another process (pid {os.getpid()})")
    assert_message(run_cli(args, tmp_path), 0)  # released with the holder
