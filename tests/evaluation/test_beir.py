"""Retrieval metrics on hand-computed examples, BEIR loading, and `eval` end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from helpers import Result, run_cli
from helpers import write_beir as write_beir_files

from embed_collections.engine.options import EngineOptions
from embed_collections.errors import UsageError
from embed_collections.evaluation.beir import (
    CORPUS_CHUNK_FILE,
    EVAL_FILE,
    evaluate_beir,
    load_beir,
    resolve_modes,
    write_corpus_chunks,
)
from embed_collections.evaluation.metrics import (
    dcg,
    evaluate_run,
    mrr_at_k,
    ndcg_at_k,
    query_ndcg,
    recall_at_k,
)
from embed_collections.record.config import RunConfig

CLI = [sys.executable, "-m", "embed_collections"]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"

# --- metrics ---------------------------------------------------------------------------------


def test_dcg_uses_log2_discount_from_rank_one():
    assert dcg([3, 2, 1]) == pytest.approx(3 + 2 / math.log2(3) + 1 / 2)


def test_binary_relevance_single_query():
    run = {"q": ["d3", "d1", "d2"]}
    qrels = {"q": {"d1": 1}}
    assert ndcg_at_k(run, qrels, 10) == pytest.approx(1 / math.log2(3))  # 0.6309
    assert mrr_at_k(run, qrels, 10) == pytest.approx(0.5)
    assert recall_at_k(run, qrels, 100) == 1.0
    assert recall_at_k(run, qrels, 1) == 0.0


def test_graded_relevance_uses_the_score_as_gain():
    run = {"q": ["b", "x", "a"]}
    qrels = {"q": {"a": 2, "b": 1, "n": 0}}
    # DCG = 1/log2(2) + 0 + 2/log2(4) = 2; ideal = 2/log2(2) + 1/log2(3) = 2.6309
    assert ndcg_at_k(run, qrels, 10) == pytest.approx(2 / (2 + 1 / math.log2(3)))  # 0.7602
    assert mrr_at_k(run, qrels, 10) == 1.0
    assert recall_at_k(run, qrels, 100) == 1.0
    assert recall_at_k(run, qrels, 2) == 0.5  # "n" is judged but not relevant


def test_ideal_dcg_comes_from_the_qrels_not_the_run():
    # Three relevant documents, only one retrieved: the ideal counts all three.
    qrels = {"q": {"a": 1, "b": 1, "c": 1}}
    ideal = 1 + 1 / math.log2(3) + 1 / 2
    assert ndcg_at_k({"q": ["a"]}, qrels) == pytest.approx(1 / ideal)
    assert recall_at_k({"q": ["a"]}, qrels) == pytest.approx(1 / 3)


def test_cutoffs_at_ten():
    ranked = [f"x{i}" for i in range(10)] + ["rel"]
    run, qrels = {"q": ranked}, {"q": {"rel": 1}}
    assert ndcg_at_k(run, qrels, 10) == 0.0
    assert mrr_at_k(run, qrels, 10) == 0.0
    assert recall_at_k(run, qrels, 100) == 1.0
    assert recall_at_k(run, qrels, 10) == 0.0


def test_query_without_hits_counts_zero_and_unjudged_queries_are_skipped():
    run = {"q1": ["a"], "q3": ["z"]}
    qrels = {
        "q1": {"a": 1},  # perfect
        "q2": {"b": 1},  # no hits at all: 0
        "q3": {"z": 0},  # nothing relevant: not averaged
    }
    assert ndcg_at_k(run, qrels) == 0.5
    assert mrr_at_k(run, qrels) == 0.5
    assert recall_at_k(run, qrels) == 0.5
    assert evaluate_run({}, {"q": {"a": 0}}) == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}


def test_two_queries_are_averaged():
    run = {"q1": ["a", "b"], "q2": ["x", "y", "c"]}
    qrels = {"q1": {"b": 1}, "q2": {"c": 1}}
    assert mrr_at_k(run, qrels) == pytest.approx((1 / 2 + 1 / 3) / 2)
    expected = (1 / math.log2(3) + 1 / math.log2(4)) / 2
    assert ndcg_at_k(run, qrels) == pytest.approx(expected)


def test_repeated_document_counts_once_at_its_best_rank():
    assert query_ndcg(["a", "a", "b"], {"a": 1, "b": 1}) == pytest.approx(1.0)


# --- BEIR files ------------------------------------------------------------------------------

TOPICS = [
    ("volcano", "Volcanic eruptions release lava, ash and gas from the mountain crater."),
    ("violin", "The violin is a string instrument played with a bow in orchestras."),
    ("bread", "Bakers knead dough with yeast and flour before baking bread in an oven."),
    ("satellite", "A satellite orbits the earth and relays radio signals to ground stations."),
    ("chess", "Chess players move pawns, knights and bishops to checkmate the king."),
    ("glacier", "Glaciers are slow rivers of ice that carve valleys in cold mountains."),
    ("bees", "Honey bees collect nectar from flowers and live in a hive with a queen."),
    ("tax", "Income tax returns must be filed with the revenue office every spring."),
    ("football", "The football team scored a goal in the final minute of the match."),
    ("vaccine", "A vaccine trains the immune system to recognise a virus."),
    ("sailing", "Sailors trim the sails and steer the boat against the wind."),
    ("coffee", "Roasted coffee beans are ground and brewed into a hot drink."),
    ("compiler", "A compiler translates source code into machine instructions."),
    ("desert", "Deserts receive little rain and camels cross the hot sand dunes."),
    ("wedding", "The bride and groom exchanged rings at the wedding ceremony."),
    ("earthquake", "Earthquakes shake the ground when tectonic plates slip along a fault."),
    ("painting", "The painter mixed oil colours on a palette before touching the canvas."),
    ("banking", "The bank approved the mortgage loan after checking the credit score."),
    ("dinosaur", "Fossils show that dinosaurs roamed the earth millions of years ago."),
    ("gardening", "Gardeners plant tomato seeds and water the vegetable beds."),
    ("railway", "The train left the railway station and crossed the long bridge."),
    ("piano", "The pianist practised scales on the keys of the grand piano."),
    ("surgery", "The surgeon operated on the patient's heart in the hospital theatre."),
    ("election", "Citizens voted in the election to choose a new parliament."),
    ("astronomy", "Astronomers observe distant galaxies through large telescopes."),
    ("cheese", "Cheese is made by curdling milk and ageing the curds in a cellar."),
    ("skiing", "Skiers glide down snowy slopes after riding the chair lift."),
    ("printer", "The printer jammed because the paper tray was overloaded."),
    ("whales", "Whales are huge marine mammals that sing songs in the ocean."),
    ("archery", "Archers draw the bowstring and release arrows at the target."),
]
SYLLABLES = ["zor", "blik", "quon", "vex", "trav", "mul", "pek", "snar", "dru", "fip", "yol", "gaz"]


def rare_word(i: int, j: int) -> str:
    """A made-up word unique to document i (two per document)."""
    return SYLLABLES[(i * 7 + j) % 12] + SYLLABLES[(i * 5 + j * 3 + 1) % 12] + f"{i}{j}x"


def write_beir(folder: Path, n: int = 30) -> Path:
    """A BEIR folder where query qI asks for document dI by its two rare words and its topic."""
    corpus, queries, qrels = [], [], []
    for i in range(n):
        topic, sentence = TOPICS[i % len(TOPICS)]
        first, second = rare_word(i, 1), rare_word(i, 2)
        text = f"{sentence} The {first} method relies on {second}."
        # Every fifth document has no title, as in several BEIR sets.
        corpus.append({"_id": f"d{i}", "title": "" if i % 5 == 0 else topic.title(), "text": text})
        queries.append({"_id": f"q{i}", "text": f"{first} {second} {topic}"})
        qrels.append(f"q{i}\td{i}\t1")
    queries.append({"_id": "unjudged", "text": "a query the split does not judge"})
    return write_beir_files(folder, corpus, queries, {"test": qrels})


def test_load_beir_reads_corpus_queries_and_qrels(tmp_path):
    folder = write_beir(tmp_path / "toy", 6)
    with (folder / "qrels" / "test.tsv").open("a") as handle:
        handle.write("q1\td2\t0\nmissing-query\td3\t1\n")
    dataset = load_beir(folder)
    assert dataset.name == "toy"
    assert len(dataset.corpus) == 6
    assert dataset.corpus["d0"][0] == "" and dataset.corpus["d1"][0] == "Violin"
    assert dataset.qrels["q1"] == {"d1": 1, "d2": 0}
    assert list(dataset.judged_queries()) == [f"q{i}" for i in range(6)]


def test_load_beir_names_the_missing_file(tmp_path):
    folder = write_beir(tmp_path / "toy", 3)
    (folder / "queries.jsonl").unlink()
    with pytest.raises(UsageError, match=r"has no queries\.jsonl$"):
        load_beir(folder)


def test_load_beir_missing_split_lists_the_splits(tmp_path):
    folder = write_beir(tmp_path / "toy", 3)
    with pytest.raises(UsageError, match=r"has no qrels/dev\.tsv; available splits: test"):
        load_beir(folder, split="dev")


def test_load_beir_reports_bad_lines(tmp_path):
    folder = write_beir(tmp_path / "toy", 3)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0 d0 1\n")
    with pytest.raises(UsageError, match=r"test\.tsv line 2: expected query-id, corpus-id"):
        load_beir(folder)
    (folder / "corpus.jsonl").write_text('{"_id": "d0", "text": "x"}\n{"text": "no id"}\n')
    with pytest.raises(UsageError, match=r'corpus\.jsonl line 2: "_id" is missing'):
        load_beir(folder)


def test_corpus_chunk_file_is_written_once(tmp_path):
    dataset = load_beir(write_beir(tmp_path / "toy", 6))
    path = tmp_path / "beir" / "toy" / CORPUS_CHUNK_FILE
    assert write_corpus_chunks(dataset, path) is True
    records = json.loads(path.read_text())
    assert records[0]["text"] == dataset.corpus["d0"][1]  # no title: the text alone
    assert records[1]["text"] == "Violin\n\n" + dataset.corpus["d1"][1]
    assert records[1]["metadata"] == {"chunk_id": "d1", "doc_id": "d1"}
    modified = path.stat().st_mtime_ns
    assert write_corpus_chunks(dataset, path) is False
    assert path.stat().st_mtime_ns == modified


def test_resolve_modes():
    assert resolve_modes(None, None) == ["dense"]
    assert resolve_modes(None, "bm25") == ["dense", "sparse", "hybrid"]
    assert resolve_modes(["hybrid", "hybrid", "dense"], "bm25") == ["hybrid", "dense"]
    with pytest.raises(UsageError, match="need sparse vectors: add --sparse bm25"):
        resolve_modes(["sparse"], None)
    with pytest.raises(UsageError, match='Unknown search mode "bm25"'):
        resolve_modes(["bm25"], "bm25")


# --- eval ------------------------------------------------------------------------------------


def run_eval(cwd: Path, *args: str) -> Result:
    return run_cli(["eval", *args], cwd)


def test_eval_cli_end_to_end_and_cached_rerun(tmp_path):
    folder = write_beir(tmp_path / "toy", 30)
    args = [
        "--beir",
        str(folder),
        "--models",
        MINILM,
        "--sparse",
        "bm25",
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path / "out"),
        "--lease-dir",
        str(tmp_path / "leases"),
    ]
    first = run_eval(tmp_path, *args, "--json")
    assert first.code == 0, first.err
    report = json.loads(first.out)
    assert (report["query_count"], report["corpus_size"]) == (30, 30)
    assert report["models"] == [MINILM] and report["sparse"] == "bm25"
    assert report["cache_misses"] == 30
    assert list(report["modes"]) == ["dense", "sparse", "hybrid"]
    assert report["modes"]["sparse"]["ndcg@10"] == 1.0
    assert report["modes"]["sparse"]["mrr@10"] == 1.0
    assert report["modes"]["dense"]["ndcg@10"] >= 0.9  # measured: 1.0
    assert report["modes"]["hybrid"]["ndcg@10"] >= 0.95
    for mode in report["modes"].values():
        assert mode["recall@100"] == 1.0
        assert mode["search_seconds"] > 0 and mode["queries_per_second"] > 0
    assert json.loads((tmp_path / "out" / EVAL_FILE).read_text()) == report

    second = run_eval(tmp_path, *args, "--modes", "sparse")
    assert second.code == 0, second.err
    lines = second.out.splitlines()
    headers = ["mode", "nDCG@10", "Recall@100", "MRR@10", "search_s", "queries/s", "ms/query"]
    assert lines[0].split() == headers
    assert lines[2].split()[:4] == ["sparse", "1.0000", "1.0000", "1.0000"]
    assert "30 queries, 30 documents" in second.out
    assert "(0 embedded, 30 cached)" in second.out
    rerun = json.loads((tmp_path / "out" / EVAL_FILE).read_text())
    assert (rerun["cache_misses"], rerun["cache_hits"]) == (0, 30)
    assert list(rerun["modes"]) == ["sparse"]


def test_eval_cli_missing_queries_file(tmp_path):
    folder = write_beir(tmp_path / "toy", 3)
    (folder / "queries.jsonl").unlink()
    result = run_eval(
        tmp_path, "--beir", str(folder), "--models", MINILM, "--output-dir", str(tmp_path)
    )
    assert result.code == 2
    assert result.out == ""
    message = f"Error: BEIR folder {folder} has no queries.jsonl"
    assert result.err.strip().splitlines() == [message]


def test_eval_cli_sparse_mode_needs_sparse_vectors(tmp_path):
    folder = write_beir(tmp_path / "toy", 3)
    result = run_eval(
        tmp_path, "--beir", str(folder), "--models", MINILM, "--modes", "dense,hybrid"
    )
    assert result.code == 2
    assert "Modes sparse and hybrid need sparse vectors: add --sparse bm25" in result.err


@pytest.mark.slow
def test_eval_searches_a_thousand_queries_in_seconds(tmp_path, tiny_models):
    folder = write_beir(tmp_path / "big", 1000)
    config = RunConfig(
        chunked_dir=tmp_path,
        output_dir=tmp_path / "out",
        models=(str(tiny_models["tiny32"]),),
        sparse="bm25",
        engine=EngineOptions(device="cpu", show_progress=False, lease_dir=tmp_path).resolved(),
    )
    report = evaluate_beir(folder, config)
    assert report.query_count == 1000
    assert report.modes["sparse"].metrics["ndcg@10"] == 1.0
    assert all(mode.search_seconds > 0 for mode in report.modes.values())
