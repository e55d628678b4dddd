"""README promises of `run` and `search` proven end to end: --truncate-dim, --max-batch-tokens,
--sparse-language, search --fusion/--rrf-k/--weights, a second run waiting for the first,
--verbose tracebacks, the Kaggle defaults, and the Qdrant server options and variables."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    cli_run_args,
    cosine,
    invoke,
    read_points,
    read_summary,
    write_chunks,
)

import embed_collections
from embed_collections.engine import create_sparse_encoder as create_encoder
from embed_collections.record.config import build_run_config

GERMAN = [
    "Die Katzen laufen schnell über die Straßen der Stadt.",
    "Der Hund schläft im Garten unter dem großen Baum.",
    "Wir kaufen Brot und Käse auf dem Markt am Samstag.",
    "Die Kinder spielen im Park, bis es dunkel wird.",
]
MAX_BATCH_TOKENS = 32


@pytest.fixture(scope="module")
def named_run(tmp_path_factory, tiny_models) -> Path:
    """Both tiny models cut to 16 dimensions, one named vector each, German BM25, small batches."""
    root = tmp_path_factory.mktemp("promises")
    write_chunks(root / "Chunked" / "notes" / "notes_chunks.json", GERMAN)
    out = root / "out"
    args = cli_run_args(
        root / "Chunked", out, [tiny_models["tiny32"], tiny_models["tiny48"]],
        "--backend", "torch", "--combine", "named", "--truncate-dim", "16",
        "--sparse", "bm25", "--sparse-language", "german",
        "--max-batch-tokens", MAX_BATCH_TOKENS, "--no-index",
    )  # fmt: skip
    result = invoke(args)
    assert result.code == 0, result.err
    return out


def stored(out: Path) -> dict[str, dict]:
    """text -> the point's vectors (name -> vector)."""
    return {
        payload["text"]: vector for vector, payload in read_points(out / "qdrant", "notes").values()
    }


def vector_names(out: Path) -> dict[str, str]:
    record = json.loads((out / "run_config.json").read_text())
    return {Path(m["name"]).name: m["vector_name"] for m in record["models"]}


def full_vectors(model: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model), device="cpu").encode(texts)


def test_truncate_dim_cuts_every_stored_vector_to_the_model_s_first_dimensions(
    named_run, tiny_models
):
    names = vector_names(named_run)
    points = stored(named_run)
    for model in ("tiny32", "tiny48"):
        got = np.array([points[t][names[model]] for t in GERMAN])
        assert got.shape == (len(GERMAN), 16)
        assert cosine(got, full_vectors(tiny_models[model], GERMAN)[:, :16]).min() > 0.9999
    record = json.loads((named_run / "run_config.json").read_text())
    assert [(m["dim"], m["truncate_dim"]) for m in record["models"]] == [(16, 16), (16, 16)]


def test_max_batch_tokens_caps_the_padded_tokens_of_every_batch(named_run, tiny_models):
    for model in ("tiny32", "tiny48"):
        telemetry = read_summary(named_run)["models"][str(tiny_models[model])]
        assert telemetry["chunks_embedded"] == len(GERMAN)
        assert telemetry["batches"] >= 2  # the default budget holds all four texts in one
        assert telemetry["padded_tokens"] <= MAX_BATCH_TOKENS * telemetry["batches"]


def test_sparse_language_stems_and_stops_in_that_language(named_run):
    record = json.loads((named_run / "run_config.json").read_text())
    assert record["sparse"]["language"] == "german"
    german, english = create_encoder("bm25", "german"), create_encoder("bm25", "english")
    points = stored(named_run)
    for text in GERMAN:
        vector = points[text]["bm25"]
        assert list(vector.indices) == german.embed_document(text)[0]
        assert list(vector.indices) != english.embed_document(text)[0]


def search(out: Path, *extra) -> list[dict]:
    """The hits of `search --json`; `fused_score` is the store's score behind each ranking."""
    result = invoke(
        ["search", "notes", "Katzen auf den Straßen", "--output-dir", out, "--json", *extra]
    )
    assert result.code == 0, result.err
    return json.loads(result.out)["hits"]


def test_search_rrf_k_and_dbsf_fusion_from_the_command_line(named_run):
    lists = 3  # two named dense vectors and bm25, fused
    default = search(named_run, "--mode", "hybrid")
    assert max(h["fused_score"] for h in default) <= lists / 60 + 1e-6  # sum 1/(k + rank)
    sharp = search(named_run, "--mode", "hybrid", "--rrf-k", "1")
    assert max(h["fused_score"] for h in sharp) > lists / 60
    dbsf = search(named_run, "--mode", "hybrid", "--fusion", "dbsf")
    assert (
        max(h["fused_score"] for h in dbsf) > 0.5
    )  # normalised scores summed, not reciprocal ranks
    assert {h["text"] for h in dbsf} == set(GERMAN)


def test_search_weights_from_the_command_line_fuse_the_named_cosines(named_run, tiny_models):
    names = vector_names(named_run)
    points = stored(named_run)
    query = ["Katzen auf den Straßen"]
    for weights, model in (("1,0", "tiny32"), ("0,1", "tiny48")):
        hits = search(named_run, "--mode", "dense", "--weights", weights)
        expected = full_vectors(tiny_models[model], query)[:, :16]
        for hit in hits:
            assert hit["fused_score"] == pytest.approx(
                float(cosine(expected[0], points[hit["text"]][names[model]])), abs=1e-4
            )


# Holds the output directory's lock until its stdin closes: the first run, as another process.
HOLDER = """
import sys
from embed_collections.runner.dirlock import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_waits_naming_the_holder_s_pid_then_takes_its_turn(
    tmp_path, tiny_models, caplog
):
    chunked, out = tmp_path / "Chunked", tmp_path / "out"
    write_chunks(chunked / "notes" / "notes_chunks.json", GERMAN[:2])
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    done = threading.Event()
    summaries = []

    def second_run() -> None:
        summaries.append(
            embed_collections.run(
                chunked,
                out,
                models=[str(tiny_models["tiny32"])],
                device="cpu",
                backend="torch",
                lease_dir=tmp_path / "leases",
                no_index=True,
                quiet=True,
            )  # fmt: skip
        )
        done.set()

    caplog.set_level(logging.WARNING, logger="embed_collections")
    threading.Thread(target=second_run, daemon=True).start()
    deadline = time.monotonic() + 60
    while not any("is in use by another run" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the second run never reported waiting"
        assert not done.wait(0.05), "the second run did not wait for the first"
    (waiting,) = {r.getMessage() for r in caplog.records if "is in use" in r.getMessage()}
    assert f"(pid {holder.pid}); waiting for it" in waiting
    assert not (out / "embedding_summary_v6.json").exists()
    holder.stdin.close()  # the first run ends
    assert holder.wait(timeout=30) == 0
    assert done.wait(timeout=120)  # then the second takes its turn
    assert summaries[0].exit_code == 0
    assert read_summary(out)["models"][str(tiny_models["tiny32"])]["chunks_embedded"] == 2


def test_verbose_shows_the_traceback_of_an_expected_failure(tmp_path):
    write_chunks(tmp_path / "Chunked" / "notes" / "notes_chunks.json", GERMAN[:1])
    args = cli_run_args(tmp_path / "Chunked", tmp_path / "out", ["./no/such/model"])
    quiet = invoke(args)
    verbose = invoke([*args, "--verbose"])
    assert quiet.code == verbose.code == 1
    assert "Traceback" not in quiet.err and len(quiet.err.strip().splitlines()) == 1
    assert "Traceback (most recent call last)" in verbose.err
    assert "ModelError" in verbose.err and "does not exist" in verbose.err


def test_kaggle_defaults_are_its_input_and_working_folders(monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    config = build_run_config()
    assert (config.environment, config.chunked_dir, config.output_dir) == (
        "Kaggle", Path("/kaggle/input"), Path("/kaggle/working"),
    )  # fmt: skip
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    config = build_run_config()
    assert (config.environment, config.chunked_dir, config.output_dir) == (
        "Local", Path("Chunked"), Path("output"),
    )  # fmt: skip


class Recorder(BaseHTTPRequestHandler):
    """A loopback HTTP server that refuses every request and remembers its headers."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        Recorder.seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": {"error": "recorded"}}')

    do_POST = do_PUT = do_GET  # noqa: N815

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recorder():
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)  # the server picks its port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("spelling", ["env", "host-port"])
def test_qdrant_server_from_variables_or_the_original_host_and_port(
    spelling, recorder, tmp_path, tiny_models, monkeypatch
):
    write_chunks(tmp_path / "Chunked" / "notes" / "notes_chunks.json", GERMAN[:1])
    monkeypatch.setenv("QDRANT_API_KEY", "key-from-env")
    extra: list = []
    if spelling == "env":
        monkeypatch.setenv("QDRANT_URL", f"http://127.0.0.1:{recorder}")
    else:
        extra = ["--qdrant_host", "127.0.0.1", "--qdrant_port", recorder]
    args = cli_run_args(tmp_path / "Chunked", tmp_path / "out", [tiny_models["tiny32"]], *extra)
    result = invoke(args)
    assert result.code == 1
    assert f"127.0.0.1:{recorder}" in result.err  # the failure names the server it tried
    assert Recorder.seen and all(h.get("api-key") == "key-from-env" for h in Recorder.seen)
