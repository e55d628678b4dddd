"""End-to-end `embed-collections run` and `search`: the real CLI over a generated corpus with two
tiny models, its output read back by a fresh reader of the store, the summary and the log."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import (
    cached_vectors,
    cli_run_args,
    invoke,
    read_points,
    read_summary,
    run_cli,
    unused_port,
    write_chunks,
)

from embed_collections.stores.edge import EdgeStore
from embed_collections.stores.open import point_id

SHARED = "Shared paragraph: both alpha and beta quote this sentence word for word."

# collection -> chunk files (path under the chunked root -> texts). beta sits two levels below
# the top; gamma has two files; SHARED appears in alpha and beta.
CORPUS: dict[str, dict[str, list[str]]] = {
    "alpha": {
        "alpha/alpha_notes_chunks.json": [
            *(f"Alpha note {i}: the quick brown fox jumps over dog number {i}." for i in range(6)),
            SHARED,
        ]
    },
    "beta": {
        "docs/v2/beta/beta_guide_chunks.json": [
            *(f"Beta guide step {i}: install the package and run command {i}." for i in range(8)),
            SHARED,
        ]
    },
    "gamma": {
        "gamma/install_chunks.json": [
            f"Gamma install {i}: pip install gamma=={i}.0" for i in range(5)
        ],
        "gamma/usage_chunks.json": [
            f"Gamma usage {i}: call gamma.run({i}) twice." for i in range(6)
        ],
    },
}
SUMMARY_KEYS = [
    "timestamp",
    "environment",
    "ensemble_models",
    "exclusive_ensemble_mode",
    "results",
    "failed_collections",
]
RESULT_KEYS = [
    "models_executed",
    "lease_events",
    "total_embeddings_generated",
    "qdrant_collection",
    "processing_time",
]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - (DEBUG|INFO|WARNING|ERROR) - .*$")


def write_corpus(root: Path, corpus: dict[str, dict[str, list[str]]] = CORPUS) -> Path:
    for files in corpus.values():
        for relative, texts in files.items():
            write_chunks(root / relative, texts)
    return root


def expected_points(collection: str) -> dict[str, dict[str, Any]]:
    """point id -> payload the run must store for every chunk of a CORPUS collection."""
    points = {}
    for relative, texts in CORPUS[collection].items():
        stem = Path(relative).stem
        for i, text in enumerate(texts):
            chunk_id = f"{stem}-{i:04d}"
            points[point_id(collection, chunk_id)] = {
                "text": text,
                "chunk_id": chunk_id,
                "doc_id": stem.removesuffix("_chunks"),
                "source_file": relative,
                "metadata": {"chunk_id": chunk_id},
                "content_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                "section": "",  # no section_path: outside any section
                "position": i,  # no chunk_index: the record's order in its file
            }
    return points


def store_counts(store_root: Path) -> dict[str, int]:
    with EdgeStore(store_root) as store:
        return {name: store.count(name) for name in store.collections()}


def model_args(tiny_models: dict[str, Path]) -> list[Any]:
    return ["--models", tiny_models["tiny32"], tiny_models["tiny48"]]


def run_args(chunked: Path, out: Path, tiny_models: dict[str, Path], *extra: Any) -> list[Any]:
    """A `run` command line with the two tiny models, private lease and output dirs, on the CPU."""
    return cli_run_args(chunked, out, [tiny_models["tiny32"], tiny_models["tiny48"]], *extra)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "Chunked")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, corpus, tiny_models) -> dict[str, Any]:
    """One full concat run, with what it left read back right after it finished."""
    out = tmp_path_factory.mktemp("first") / "out"
    result = invoke(run_args(corpus, out, tiny_models))
    return {
        "out": out,
        "result": result,
        "summary": read_summary(out),
        "log": (out / "embedding_v6.log").read_text(encoding="utf-8"),
        "counts": store_counts(out / "qdrant"),
        "points": {name: read_points(out / "qdrant", name) for name in CORPUS},
    }


def copy_run(first_run: dict[str, Any], corpus: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the corpus and the first run's output, to change and re-run."""
    chunked = shutil.copytree(corpus, tmp_path / "Chunked")
    out = shutil.copytree(first_run["out"], tmp_path / "out")
    return Path(chunked), Path(out)


def test_run_stores_one_collection_per_input_with_exact_points(first_run):
    assert first_run["result"].code == 0, first_run["result"].err
    assert first_run["counts"] == {name: len(expected_points(name)) for name in CORPUS}
    with EdgeStore(first_run["out"] / "qdrant") as store:
        assert {name: store.layout(name).dense for name in CORPUS} == {
            name: {"": 80} for name in CORPUS
        }
    for name in CORPUS:
        points = first_run["points"][name]
        assert {pid: payload for pid, (_, payload) in points.items()} == expected_points(name)
        for vector, _ in points.values():
            assert len(vector) == 32 + 48
            assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)


def test_concat_vector_is_the_weighted_join_of_both_models(first_run, tiny_models):
    from sentence_transformers import SentenceTransformer

    parts = []
    for key in ("tiny32", "tiny48"):
        model = SentenceTransformer(str(tiny_models[key]), device="cpu")
        vector = model.encode([SHARED], convert_to_numpy=True)[0]
        parts.append(vector / np.linalg.norm(vector) * np.sqrt(0.5))
    expected = np.concatenate(parts)
    shared = {
        name: next(v for v, p in first_run["points"][name].values() if p["text"] == SHARED)
        for name in ("alpha", "beta")
    }
    np.testing.assert_allclose(shared["alpha"], expected, atol=1e-5)
    np.testing.assert_allclose(shared["beta"], shared["alpha"], atol=1e-6)


def test_summary_keeps_the_v6_schema(first_run, tiny_models):
    summary = first_run["summary"]
    models = [str(tiny_models["tiny32"]), str(tiny_models["tiny48"])]
    assert list(summary)[: len(SUMMARY_KEYS)] == SUMMARY_KEYS
    datetime.fromisoformat(summary["timestamp"])
    assert summary["environment"] == "Local"
    assert summary["ensemble_models"] == models
    assert summary["exclusive_ensemble_mode"] is True
    assert summary["failed_collections"] == {}
    assert sorted(summary["results"]) == sorted(CORPUS)
    for name, result in summary["results"].items():
        assert list(result)[: len(RESULT_KEYS)] == RESULT_KEYS
        assert result["models_executed"] == models
        assert result["total_embeddings_generated"] == len(expected_points(name))
        assert result["qdrant_collection"] == name
        assert result["points_in_store"] == len(expected_points(name))
        assert result["processing_time"] > 0
    # SHARED is in two collections but each model embeds it once.
    unique = {text for files in CORPUS.values() for texts in files.values() for text in texts}
    for model in models:
        assert summary["models"][model]["chunks_embedded"] == len(unique)
        assert summary["models"][model]["loads"] == 1
    assert summary["cache_misses"] == 2 * len(unique)
    assert summary["dimension"] == {"": 80}


def test_lease_events_acquire_and_release_each_model_without_overlap(first_run, tiny_models):
    models = [str(tiny_models["tiny32"]), str(tiny_models["tiny48"])]
    events = first_run["summary"]["lease_events"]  # once per run, not per collection
    assert [(e["event_type"], e["model"]) for e in events] == [
        ("acquire", models[0]),
        ("release", models[0]),
        ("acquire", models[1]),
        ("release", models[1]),
    ]
    times = [datetime.fromisoformat(e["timestamp"]) for e in events]
    assert times == sorted(times)
    assert all(e["device"] == "cpu" for e in events)
    assert all(r["lease_events"] == [] for r in first_run["summary"]["results"].values())


def test_run_prints_a_table_of_collections(first_run):
    lines = first_run["result"].out.splitlines()
    assert lines[0].split() == ["collection", "chunks", "embedded", "now", "points", "status"]
    rows = {
        line.split()[0]: line.split()[1:] for line in lines[2:] if line.strip() and ": " not in line
    }
    assert rows == {name: [str(n), str(n), str(n), "ok"] for name, n in first_run["counts"].items()}
    assert lines[-2] == f"Summary: {first_run['out'] / 'embedding_summary_v6.json'}"
    assert lines[-1] == f"Report: {first_run['out'] / 'report.html'}"


def test_log_file_uses_the_v6_format(first_run):
    log = first_run["log"]
    lines = log.splitlines()
    assert lines
    assert [line for line in lines if not LOG_LINE.match(line)] == []
    messages = [line.split(" - ", 2)[2] for line in lines]
    assert "Ensemble mode: EXCLUSIVE (model-at-a-time GPU lease)" in messages
    assert "Found 1 chunk files in alpha" in messages
    assert "Found 1 chunk files in beta" in messages
    assert "Found 2 chunk files in gamma" in messages
    assert "PROCESSING COMPLETE" in messages
    assert "Succeeded: 3" in messages


def test_rerun_embeds_nothing_and_keeps_every_point(first_run, corpus, tiny_models, tmp_path):
    chunked, out = copy_run(first_run, corpus, tmp_path)
    result = invoke(run_args(chunked, out, tiny_models))
    assert result.code == 0, result.err
    summary = read_summary(out)
    assert summary["cache_misses"] == 0
    assert {m["loads"] for m in summary["models"].values()} == {0}
    assert all(r["lease_events"] == [] for r in summary["results"].values())
    assert summary["lease_events"] == []  # no model loaded: no lease, no lease block
    assert all(r["points_deleted"] == 0 for r in summary["results"].values())
    assert {r["status"] for r in summary["results"].values()} == {"unchanged"}
    rows = [line.split() for line in result.out.splitlines()[2:] if line and ": " not in line]
    assert {name: row for name, *row in rows} == {
        name: [str(n), "0", str(n), "unchanged"] for name, n in first_run["counts"].items()
    }
    log = (out / "embedding_v6.log").read_text(encoding="utf-8")
    assert "Lease events:" not in log.split("Environment: ")[-1]  # this run's part of the log
    assert "✅ Completed collection: alpha (unchanged: 7 points already stored" in log
    assert store_counts(out / "qdrant") == first_run["counts"]
    assert set(read_points(out / "qdrant", "gamma")) == set(first_run["points"]["gamma"])


def test_shrunk_document_loses_its_old_points_unless_keep_stale(
    first_run, corpus, tiny_models, tmp_path
):
    chunked, out = copy_run(first_run, corpus, tmp_path)
    usage = CORPUS["gamma"]["gamma/usage_chunks.json"]
    write_chunks(chunked / "gamma/usage_chunks.json", usage[:2])
    gone = {point_id("gamma", f"usage_chunks-{i:04d}") for i in range(2, len(usage))}
    before = first_run["counts"]["gamma"]

    kept = invoke(run_args(chunked, out, tiny_models, "--keep-stale"))
    assert kept.code == 0, kept.err
    assert store_counts(out / "qdrant")["gamma"] == before
    assert read_summary(out)["results"]["gamma"]["points_deleted"] == 0

    pruned = invoke(run_args(chunked, out, tiny_models))
    assert pruned.code == 0, pruned.err
    summary = read_summary(out)
    assert summary["results"]["gamma"]["points_deleted"] == len(gone)
    assert summary["results"]["gamma"]["points_in_store"] == before - len(gone)
    assert summary["cache_misses"] == 0
    counts = store_counts(out / "qdrant")
    assert counts == {**first_run["counts"], "gamma": before - len(gone)}
    assert not gone & set(read_points(out / "qdrant", "gamma"))


def test_corrupt_collection_fails_alone_with_exit_3(corpus, tiny_models, tmp_path):
    chunked = Path(shutil.copytree(corpus, tmp_path / "Chunked"))
    broken = chunked / "broken" / "broken_chunks.json"
    broken.parent.mkdir()
    broken.write_text('[{"text": "cut off', encoding="utf-8")
    out = tmp_path / "out"
    result = invoke(run_args(chunked, out, tiny_models))
    assert result.code == 3, result.err
    summary = read_summary(out)
    assert list(summary["failed_collections"]) == ["broken"]
    message = summary["failed_collections"]["broken"]
    assert "broken/broken_chunks.json" in message
    assert "not valid JSON" in message
    assert sorted(summary["results"]) == sorted(CORPUS)
    assert store_counts(out / "qdrant") == {name: len(expected_points(name)) for name in CORPUS}
    assert "broken" in [line.split()[0] for line in result.out.splitlines() if "failed" in line]


def test_unknown_collection_exits_2_listing_the_available_ones(corpus, tiny_models, tmp_path):
    result = invoke(run_args(corpus, tmp_path / "out", tiny_models, "--collections", "Alpah"))
    assert result.code == 2
    assert result.err.strip() == 'Error: Unknown collection "Alpah". Available: alpha, beta, gamma'
    assert cached_vectors(tmp_path / "out") == 0


def test_unreachable_qdrant_fails_in_preflight_before_any_model_loads(
    corpus, tiny_models, tmp_path
):
    out = tmp_path / "out"
    with unused_port() as port:  # held, not listening: connections are refused
        result = run_cli(
            run_args(corpus, out, tiny_models, "--qdrant-url", f"http://127.0.0.1:{port}"), tmp_path
        )
    assert result.code == 1
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"Error: Cannot reach Qdrant at http://127.0.0.1:{port}")
    log = (out / "embedding_v6.log").read_text(encoding="utf-8")
    assert "Total collections discovered: 3" in log
    assert not re.search(r"Lease: Acquired|embedding \d+ texts|loaded in", log)
    assert cached_vectors(out) == 0


@pytest.mark.parametrize("missing", ["/nonexistent/folder", "no-such-org/no-such-model"])
def test_unresolvable_model_fails_before_any_embedding(corpus, tiny_models, tmp_path, missing):
    out = tmp_path / "out"
    args = run_args(corpus, out, tiny_models)
    args[args.index("--models") + 2] = missing  # replaces the second model
    result = invoke(args)
    assert result.code == 1
    assert result.err.startswith(f'Error: Model folder "{missing}"') or result.err.startswith(
        f'Error: Model "{missing}" cannot be found'
    ), result.err
    assert len(result.err.strip().splitlines()) == 1
    assert cached_vectors(out) == 0
    assert not (out / "qdrant").exists()


def test_missing_model_folder_says_it_does_not_exist(corpus, tiny_models, tmp_path):
    args = run_args(corpus, tmp_path / "out", tiny_models)
    args[args.index("--models") + 1] = tmp_path / "no-model-here"
    result = invoke(args)
    assert result.code == 1
    # Saying the folder "has no modules.json" sends the user looking inside a folder that
    # is not there.
    assert re.search(r"does not exist|not found", result.err), result.err


def test_one_weight_for_two_models_is_a_usage_error(corpus, tiny_models, tmp_path):
    result = invoke(run_args(corpus, tmp_path / "out", tiny_models, "--weights", "1"))
    assert result.code == 2
    assert result.err.strip() == "Error: 1 weights given for 2 models; give one weight per model"


def test_average_of_different_dimensions_is_a_usage_error(corpus, tiny_models, tmp_path):
    result = invoke(run_args(corpus, tmp_path / "out", tiny_models, "--combine", "average"))
    assert result.code == 2
    assert result.err.startswith(
        "Error: --combine average needs models of one dimension, got "
        f"{tiny_models['tiny32']}=32, {tiny_models['tiny48']}=48. Use --combine concat"
    ), result.err
    assert "--combine named" in result.err
    assert cached_vectors(tmp_path / "out") == 0


def test_named_combine_stores_one_vector_per_model(corpus, tiny_models, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        run_args(corpus, out, tiny_models, "--combine", "named", "--collections", "beta")
    )
    assert result.code == 0, result.err
    with EdgeStore(out / "qdrant") as store:
        assert store.collections() == ["beta"]
        assert store.layout("beta").dense == {"tiny32": 32, "tiny48": 48}
    points = read_points(out / "qdrant", "beta")
    assert set(points) == set(expected_points("beta"))
    for vector, _ in points.values():
        assert {name: len(v) for name, v in vector.items()} == {"tiny32": 32, "tiny48": 48}
        assert np.linalg.norm(vector["tiny48"]) == pytest.approx(1.0, abs=1e-4)
    assert read_summary(out)["dimension"] == {"tiny32": 32, "tiny48": 48}
    wanted = CORPUS["beta"]["docs/v2/beta/beta_guide_chunks.json"][5]
    found = invoke(["search", "beta", wanted, "--output-dir", out, "--json", "--top-k", "2"])
    assert found.code == 0, found.err
    assert json.loads(found.out)["hits"][0]["chunk_id"] == "beta_guide_chunks-0005"


def test_rerun_with_another_layout_fails_before_embedding(first_run, corpus, tiny_models, tmp_path):
    chunked, out = copy_run(first_run, corpus, tmp_path)
    vectors = cached_vectors(out)
    result = invoke(run_args(chunked, out, tiny_models, "--combine", "named"))
    assert result.code == 1
    assert result.err.startswith("Error: Existing collections differ from this run's"), result.err
    assert "--recreate" in result.err
    assert cached_vectors(out) == vectors
    assert store_counts(out / "qdrant") == first_run["counts"]


def test_search_finds_the_exact_chunk_first(first_run):
    wanted = CORPUS["beta"]["docs/v2/beta/beta_guide_chunks.json"][3]
    result = invoke(
        ["search", "beta", wanted, "--output-dir", first_run["out"], "--json", "--top-k", "3"]
    )
    assert result.code == 0, result.err
    hits = json.loads(result.out)["hits"]
    assert len(hits) == 3
    assert hits[0]["text"] == wanted
    assert hits[0]["chunk_id"] == "beta_guide_chunks-0003"
    assert hits[0]["point_id"] == point_id("beta", "beta_guide_chunks-0003")
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["score"] > hits[1]["score"]


def test_search_of_an_unknown_collection_lists_the_available_ones(first_run):
    result = invoke(["search", "delta", "anything", "--output-dir", first_run["out"]])
    assert result.code == 2
    assert result.err.strip() == 'Error: Unknown collection "delta". Available: alpha, beta, gamma'


def test_original_spellings_still_work(corpus, tiny_models, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        [
            "run",
            "--chunked_dir",
            corpus,
            "--output_dir",
            out,
            "--ensemble_models",
            tiny_models["tiny32"],
            tiny_models["tiny48"],
            "--ensemble_weights",
            "0.7",
            "0.3",
            "--exclusive_ensemble",
            "--batch_size",
            "4",
            "--collections",
            "gamma",
            "--lease-dir",
            tmp_path / "leases",
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert result.code == 0, result.err
    summary = read_summary(out)
    assert summary["ensemble_models"] == [str(tiny_models["tiny32"]), str(tiny_models["tiny48"])]
    assert summary["weights"] == [0.7, 0.3]
    assert list(summary["results"]) == ["gamma"]
    chunks = len(expected_points("gamma"))
    assert {m["batches"] for m in summary["models"].values()} == {math.ceil(chunks / 4)}
    assert store_counts(out / "qdrant") == {"gamma": chunks}


def test_quiet_flag_after_a_list_option_is_not_taken_as_a_model(corpus, tiny_models, tmp_path):
    out = tmp_path / "out"
    args = [
        "run",
        "--chunked-dir",
        corpus,
        "--output-dir",
        out,
        "--lease-dir",
        tmp_path / "leases",
        "--device",
        "cpu",
        "--collections",
        "gamma",
        *model_args(tiny_models),
        "-q",
    ]
    result = invoke(args)
    assert result.code == 0, result.err
    assert "INFO" not in result.err
    assert read_summary(out)["ensemble_models"] == [
        str(tiny_models["tiny32"]),
        str(tiny_models["tiny48"]),
    ]


def test_no_upload_writes_the_summary_but_no_store(corpus, tiny_models, tmp_path):
    out = tmp_path / "out"
    result = invoke(
        run_args(corpus, out, tiny_models, "--no-upload", "--json", "--collections", "alpha")
    )
    assert result.code == 0, result.err
    summary = read_summary(out)
    assert json.loads(result.out) == summary
    assert summary["results"]["alpha"]["total_embeddings_generated"] == 7
    assert summary["results"]["alpha"]["points_in_store"] is None
    assert summary["store"] is None
    assert not (out / "qdrant").exists()


def test_unusable_output_dir_is_a_one_line_error(corpus, tiny_models, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    result = run_cli(run_args(corpus, blocker / "out", tiny_models), tmp_path)
    assert result.code == 1
    assert "Traceback" not in result.err, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.err
    assert str(blocker / "out") in lines[0]


@pytest.mark.skipif(Path("/kaggle/input").exists(), reason="this machine is a Kaggle kernel")
def test_kaggle_default_chunked_dir_is_kaggle_input(tiny_models, tmp_path):
    args = run_args(tmp_path, tmp_path / "out", tiny_models)
    del args[1:3]  # no --chunked-dir
    result = run_cli(args, tmp_path, {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"})
    assert result.code == 2
    assert result.err.strip() == "Error: Chunked directory not found: /kaggle/input"


def test_kaggle_environment_is_recorded(corpus, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    out = tmp_path / "out"
    result = invoke(run_args(corpus, out, tiny_models, "--no-upload", "--collections", "gamma"))
    assert result.code == 0, result.err
    assert read_summary(out)["environment"] == "Kaggle"
    assert "Environment: Kaggle" in (out / "embedding_v6.log").read_text(encoding="utf-8")


def test_chunks_without_a_finite_vector_are_skipped_and_the_rest_stored(
    tmp_path, tiny_models, monkeypatch
):
    chunked, out = tmp_path / "Chunked", tmp_path / "out"
    write_chunks(chunked / "docs" / "a_chunks.json", ["first text", "second text"])
    args = cli_run_args(chunked, out, [tiny_models["tiny32"]], "--no-index")
    assert invoke(args).code == 0
    write_chunks(chunked / "docs" / "b_chunks.json", ["a text that overflows"])
    monkeypatch.setenv("EMBED_COLLECTIONS_FAULT", "nan-always@*#0")  # NaN even in float32
    result = invoke(args)
    assert result.code == 0, result.err
    summary = read_summary(out)
    assert summary["results"]["docs"]["points_in_store"] == 2
    assert summary["results"]["docs"]["skipped_records"] == 1 and summary["skipped_records"] == 1
    model = next(iter(summary["models"].values()))
    assert model["non_finite_texts"] == ["a text that overflows"]
