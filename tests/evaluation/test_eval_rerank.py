"""`eval --rerank`: every mode scored again with its candidates reordered by a tiny random
cross-encoder, beside the first stage, on the same data."""

from __future__ import annotations

import json

import pytest
from helpers import quiet_cpu_options, write_beir

import embed_collections as ec
from embed_collections.errors import UsageError
from embed_collections.evaluation.beir import load_beir
from embed_collections.record.files import EVAL_FILE

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]


def toy_beir(folder):
    """Query qI names document dI's two unique words: BM25 finds each at rank 1."""
    corpus, queries, qrels = [], [], []
    for i in range(12):
        a, b = f"{WORDS[i % 8]}{i}x", f"{WORDS[(i * 3) % 8]}{i}y"
        corpus.append({"_id": f"d{i}", "title": "", "text": f"The {a} method uses {b} today."})
        queries.append({"_id": f"q{i}", "text": f"{a} {b}"})
        qrels.append(f"q{i}\td{i}\t1")
    return write_beir(folder, corpus, queries, {"test": qrels})


def test_eval_scores_each_mode_first_stage_and_reranked(tmp_path, tiny_models, tiny_cross_encoder):
    folder = toy_beir(tmp_path / "toy")
    report = ec.evaluate(
        folder,
        tmp_path / "out",
        rerank=str(tiny_cross_encoder),
        rerank_top_n=[3, 8],
        **quiet_cpu_options(tmp_path, tiny_models["tiny32"], "bm25"),
    )
    modes = list(report.modes)
    suffixes = ("", "+rerank@3", "+rerank@8")
    assert modes == [f"{m}{s}" for m in ("dense", "sparse", "hybrid") for s in suffixes]
    sparse = report.modes["sparse"].metrics
    assert sparse["ndcg@10"] == 1.0
    for top_n in (3, 8):
        reranked = report.modes[f"sparse+rerank@{top_n}"]
        # The reranker reorders only the first top_n; what follows keeps its place.
        assert reranked.metrics["recall@100"] == sparse["recall@100"]
        assert reranked.rerank_seconds and reranked.search_seconds > reranked.rerank_seconds
    # Dense mode returns every document: the (random) reranker reorders its candidates.
    dense, reranked = report.modes["dense"].metrics, report.modes["dense+rerank@8"].metrics
    assert reranked["mrr@10"] != dense["mrr@10"]
    assert reranked["recall@100"] == dense["recall@100"]
    written = json.loads((tmp_path / "out" / EVAL_FILE).read_text())
    assert written["reranker"]["kind"] == "cross-encoder"
    assert written["modes"]["hybrid+rerank@3"]["ms_per_query"] > 0
    assert "rerank_seconds" not in written["modes"]["hybrid"]


def test_eval_checks_rerank_arguments_before_indexing(tmp_path, tiny_models, tiny_cross_encoder):
    folder = toy_beir(tmp_path / "toy")
    with pytest.raises(UsageError, match="rerank_top_n is 0"):
        ec.evaluate(folder, tmp_path / "out", rerank=str(tiny_cross_encoder), rerank_top_n=[0])
    assert not (tmp_path / "out" / "beir").exists()
    assert load_beir(folder).queries  # the folder itself was fine


def test_eval_puts_a_learned_sparse_hybrid_beside_its_reranked_rows(
    tmp_path, tiny_models, tiny_splade, tiny_cross_encoder
):
    report = ec.evaluate(
        toy_beir(tmp_path / "toy"),
        tmp_path / "out",
        modes=["dense", "hybrid"],
        rerank=str(tiny_cross_encoder),
        rerank_top_n=[5],
        **quiet_cpu_options(tmp_path, tiny_models["tiny32"], tiny_splade),
    )
    assert report.sparse == "splade"
    assert list(report.modes) == ["dense", "dense+rerank@5", "hybrid", "hybrid+rerank@5"]
    assert all(0.0 <= mode.metrics["ndcg@10"] <= 1.0 for mode in report.modes.values())
