"""The run record (`run_config.json`), a CLI that starts without torch, and progress off a terminal.

One real run of a tiny model through the CLI (stderr is not a terminal there, as in a notebook
cell); later commands, some in child processes, read its record back.
"""

from __future__ import annotations

import json
import logging

import pytest
from helpers import cosine, encode, invoke, run_cli, write_chunks

from embed_collections.errors import UsageError
from embed_collections.progress import Progress
from embed_collections.query.search import QueryEncoder
from embed_collections.record.run_record import (
    FORMAT_VERSION,
    RUN_RECORD_FILE,
    RunRecord,
    read_run_record,
)

TEXTS = [f"Record test paragraph {i}: converting documents for vector search." for i in range(40)]


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, tiny_models):
    """A finished run with --export: (workspace, output dir, the run's CLI result)."""
    root = tmp_path_factory.mktemp("record")
    write_chunks(root / "Chunked" / "docs" / "docs_chunks.json", TEXTS)
    args = [
        *("run", "--chunked-dir", root / "Chunked", "--output-dir", root / "out"),
        *("--models", tiny_models["tiny32"], "--device", "cpu", "--backend", "torch"),
        *("--batch-size", "4", "--lease-dir", root / "leases", "--no-index", "--export"),
    ]
    result = invoke(args)
    assert result.code == 0, result.err
    return root, root / "out", result, args


def test_run_writes_a_versioned_record_that_reads_back(exported_run, tiny_models):
    _, out, _, _ = exported_run
    data = json.loads((out / RUN_RECORD_FILE).read_text())
    assert data["format"] == FORMAT_VERSION
    record = read_run_record(out)
    assert RunRecord.from_json(record.to_json()) == record
    [model] = record.models
    assert (model.backend, model.dtype, model.dim) == ("torch", "float32", 32)
    assert model.path == str(tiny_models["tiny32"])
    assert record.layout is not None and record.layout.dense == {"": 32}
    assert record.store.path == "qdrant" and record.store.url is None  # relative to the record


def test_progress_lines_reach_stderr_off_a_terminal_and_the_log(exported_run):
    _, out, result, _ = exported_run
    line = "tiny32: 40/40 chunks (100%), "
    assert line in result.err
    assert "store: 1/1 collections (100%), " in result.err
    log = (out / "embedding_v6.log").read_text(encoding="utf-8")
    assert line in log and "chunks/s" in log
    assert "tiny32: backend torch (--backend torch)" in log


class Collect(logging.Handler):
    """Keeps the messages it is given (independent of the CLI's propagate setting)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_progress_off_a_terminal_logs_about_every_tenth():
    logger, collect = logging.getLogger("embed_collections.progress"), Collect()
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        with Progress(100, "model", "chunk", terminal=False, rate_unit="point") as bar:
            for _ in range(20):
                bar.update(5, 50, seconds=0.5)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(logging.NOTSET)
    lines = collect.messages
    assert len(lines) == 11  # the first batch at once, then every tenth
    assert lines[0] == "model: 5/100 chunks (5%), 100.0 points/s, ETA 10s"  # from its own time
    assert lines[1].startswith("model: 15/100 chunks (15%), 100.0 points/s, ETA ")
    assert lines[-1] == "model: 100/100 chunks (100%), 100.0 points/s"


def test_quiet_hides_progress(tmp_path):
    with Progress(10, "quiet", "chunk", enabled=False, terminal=False) as bar:
        bar.update(10)
    assert bar.bar is None and not bar.lines


def test_help_discover_unchanged_rerun_and_upload_never_import_torch(exported_run, tmp_path):
    root, out, _, args = exported_run
    env = {"EMBED_COLLECTIONS_CACHE_HOME": str(root / "home")}
    helped = run_cli(["--help"], tmp_path)
    assert helped.code == 0 and "torch" not in helped.modules
    discovered = run_cli(["discover", root / "Chunked", "--json"], tmp_path)
    assert discovered.code == 0 and json.loads(discovered.out)[0]["name"] == "docs"
    assert "torch" not in discovered.modules
    again = run_cli(args, root, env)
    assert again.code == 0, again.err
    assert "holds exactly this input" in again.err
    assert not again.modules, again.modules  # no torch, transformers or runtime
    uploaded = run_cli(["upload", out, "--qdrant-path", tmp_path / "q", "--json"], tmp_path)
    assert uploaded.code == 0, uploaded.err
    assert json.loads(uploaded.out) == {"docs": len(TEXTS)}
    assert not uploaded.modules


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda text: text[: len(text) // 2], "cannot be read"),
        (
            lambda text: json.dumps({**json.loads(text), "models": [{}]}),
            "missing 'ModelRecord.name'",
        ),
        (lambda text: json.dumps({"format": 2, "models": []}), "missing 'layout'"),
        (lambda text: "[]", "is not a run record"),
        (
            lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "format"}),
            "is run record format 1; this version reads format 2: re-run `embed-collections run`",
        ),
        (lambda text: json.dumps({**json.loads(text), "format": 9}), "upgrade embed-collections"),
    ],
)
def test_a_damaged_or_old_record_is_a_one_line_usage_error(
    exported_run, tmp_path, damage, expected
):
    _, out, _, _ = exported_run
    copy = tmp_path / "out"
    copy.mkdir()
    original = (out / RUN_RECORD_FILE).read_text()
    (copy / RUN_RECORD_FILE).write_text(damage(original))
    result = invoke(["search", "docs", "paragraph", "--output-dir", copy])
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    assert lines[0].startswith(f"Error: {copy / RUN_RECORD_FILE}") and expected in lines[0]


def test_a_truncated_record_is_one_line_in_a_child_process_too(exported_run, tmp_path):
    _, out, _, _ = exported_run
    (tmp_path / RUN_RECORD_FILE).write_text((out / RUN_RECORD_FILE).read_text()[:100])
    result = run_cli(["search", "docs", "paragraph", "--output-dir", tmp_path], tmp_path)
    assert result.code == 2 and "Traceback" not in result.err
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"Error: {tmp_path / RUN_RECORD_FILE} cannot be read (")
    assert line.endswith(
        "re-run `embed-collections run` with the same options to rewrite it "
        "(cached vectors are reused)"
    )


def test_search_finds_a_moved_model_through_the_saved_model_cache_dir(tmp_path, tiny_models):
    cache = tmp_path / "models"
    (cache / "org").mkdir(parents=True)
    (cache / "org" / "tiny").symlink_to(tiny_models["tiny32"], target_is_directory=True)
    model = {
        "name": "org/tiny",
        "path": str(tmp_path / "gone"),  # a snapshot the hub cache has since replaced
        "source": "model cache",
        "weight": 1.0,
        "dim": 32,
        "document_prefix": "",
        "query_prefix": "",
        "max_seq_length": None,
        "truncate_dim": None,
        "fingerprint": "f",
        "backend": "torch",
        "dtype": "float32",
    }
    record = RunRecord.from_json(
        {
            "format": FORMAT_VERSION,
            "chunked_dir": "Chunked",
            "models": [model],
            "combine": "concat",
            "layout": {"dense": {"": 32}, "sparse": []},
            "sparse": None,
            "store": {"url": None, "path": str(tmp_path / "q")},
            "cache": str(tmp_path / "cache.sqlite"),
            "model_cache_dir": str(cache),
            "trust_remote_code": False,
            "engine": {
                "device": "cpu",
                "dtype": "float32",
                "backend": "torch",
                "quantize": "",
                "batch_size": 4,
            },
        }
    )
    encoder = QueryEncoder.from_record(record, device="cpu", check_fingerprints=False)
    assert encoder.specs[0].path == cache / "org" / "tiny"
    (vector,) = encoder.dense(["a query"])[""]
    assert cosine(vector, encode(tiny_models["tiny32"], ["a query"], None)[0]) > 0.9999
    with pytest.raises(UsageError, match="incomplete or damaged"):
        RunRecord.from_json({**record.to_json(), "engine": None})
    assert RunRecord.from_json(record.to_json()) == record
    assert RunRecord.from_json({**record.to_json(), "combine": "named"}).combine == "named"


def test_queries_use_the_runs_backend_and_precision_where_the_device_allows():
    from embed_collections.query.search import QueryEncoder

    cpu_run = QueryEncoder([], "concat", [], None, "cpu", ["onnx", "torch"], ["float32"] * 2, "cpu")
    assert cpu_run.query_backend(0, "cpu") == ("onnx", "float32")
    assert cpu_run.query_backend(1, "cpu") == ("torch", "float32")
    gpu_run = QueryEncoder([], "concat", [], None, "", ["torch"], ["float16"], "cuda:0,cuda:1")
    assert gpu_run.query_backend(0, "cpu") == ("torch", "float32")  # searched from a laptop
    assert gpu_run.query_backend(0, "cuda:0") == ("torch", "float16")


def test_json_files_never_hold_bare_nan_or_infinity(tmp_path):
    from embed_collections.atomic import write_json_atomic

    path = tmp_path / "summary.json"
    write_json_atomic(path, {"weights": [1.0, float("inf")], "nested": {"score": float("nan")}})
    refuse = {"parse_constant": lambda name: pytest.fail(f"bare {name} in the JSON")}
    assert json.loads(path.read_text(encoding="utf-8"), **refuse) == {
        "weights": [1.0, None],
        "nested": {"score": None},
    }
