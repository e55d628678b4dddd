"""Learning ensemble weights (`eval --tune-weights`) on generated BEIR sets built for the answer:
one informative model and one noise model, then two complementary models. The models are real
static models loaded through the normal path; their token vectors decide what each can find."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, search_run, write_beir

from embed_collections.engine.models.resolve import find_in_package
from embed_collections.engine.models.tiny import build_static_model, minilm_vocab_size
from embed_collections.engine.options import EngineOptions
from embed_collections.errors import UsageError
from embed_collections.evaluation.beir import evaluate_beir
from embed_collections.evaluation.tune_beir import tune_beir
from embed_collections.evaluation.tuning import (
    judge,
    ndcg_per_query,
    search_simplex,
    simplex_grid,
    tune_weights,
)
from embed_collections.record.config import RunConfig
from embed_collections.record.weights import (
    apply_weights_file,
    read_weights_file,
    write_weights_file,
)

TOPICS = 48
DIM = 64


def single_token_words(count: int) -> list[tuple[str, int]]:
    """Whole lowercase words that MiniLM's tokenizer keeps as one token: (word, token id)."""
    from tokenizers import Tokenizer

    path = find_in_package("sentence-transformers/all-MiniLM-L6-v2") / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    words = []
    for token_id in range(3000, 29000, 7):
        word = tokenizer.id_to_token(token_id)
        alpha = word.isalpha() and word.isascii() and len(word) >= 4
        if alpha and tokenizer.encode(word, add_special_tokens=False).ids == [token_id]:
            words.append((word, token_id))
        if len(words) == count:
            return words
    raise AssertionError("not enough single-token words")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A BEIR folder where query k asks with word A_k for documents written with word B_k, and
    three static models: `informative` maps A_k and B_k to one vector, `noise` does not, and
    `left` / `right` do it only for the first / second half of the topics."""
    root = tmp_path_factory.mktemp("tuning")
    words = single_token_words(3 * TOPICS + 40)
    asks, answers, fillers = words[:TOPICS], words[TOPICS : 2 * TOPICS], words[2 * TOPICS :]
    rng = np.random.default_rng(7)
    corpus, queries, qrels = [], [], {"train": [], "test": []}
    for k in range(TOPICS):
        for copy in range(2):
            filler = " ".join(fillers[i][0] for i in rng.choice(len(fillers), 4, replace=False))
            corpus.append({"_id": f"d{k}-{copy}", "text": f"{answers[k][0]} {filler}"})
        queries.append({"_id": f"q{k}", "text": asks[k][0]})
        split = "test" if k % 3 == 0 else "train"
        qrels[split] += [f"q{k}\td{k}-0\t1", f"q{k}\td{k}-1\t1"]
    folder = write_beir(root / "beir", corpus, queries, qrels)

    def model(name: str, seed: int, linked: range) -> Path:
        matrix = np.random.default_rng(seed).standard_normal((minilm_vocab_size(), DIM))
        for k in linked:
            matrix[answers[k][1]] *= 3  # the topic word outweighs the four fillers
            matrix[asks[k][1]] = matrix[answers[k][1]]
        return build_static_model(root / name, matrix.astype(np.float32))

    models = {
        "informative": model("informative", 1, range(TOPICS)),
        "noise": model("noise", 2, range(0)),
        "left": model("left", 3, range(0, TOPICS, 2)),
        "right": model("right", 4, range(1, TOPICS, 2)),
    }
    return folder, models


def config_for(tmp_path: Path, *models: Path) -> RunConfig:
    return RunConfig(
        chunked_dir=tmp_path,
        output_dir=tmp_path / "out",
        models=tuple(str(m) for m in models),
        engine=EngineOptions(device="cpu", show_progress=False, lease_dir=tmp_path).resolved(),
    )


# --- the search itself, on synthetic score arrays ------------------------------------------


def test_simplex_grid_sums_to_one_and_holds_the_vertices():
    grid = simplex_grid(3)
    assert len(grid) == 66
    assert all(abs(w.sum() - 1) < 1e-9 for w in grid)
    assert any(np.array_equal(w, [1, 0, 0]) for w in grid)


def test_search_simplex_finds_an_interior_optimum():
    target = np.array([0.62, 0.38])
    weights, value, _ = search_simplex(lambda w: -float(np.abs(w - target).sum()), 2)
    assert np.allclose(weights, target, atol=0.013)
    assert value > -0.03


def synthetic(informative_rows: np.ndarray, queries: int = 60, docs: int = 80) -> tuple:
    """Scores where model m ranks query q's relevant document first iff informative_rows[m, q]."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 0.5, size=(informative_rows.shape[0], queries, docs)).astype(np.float32)
    for m in range(scores.shape[0]):
        for q in range(queries):
            if informative_rows[m, q]:
                scores[m, q, q] = 0.9
    qrels = {f"q{q}": {f"d{q}": 1} for q in range(queries)}
    judged = judge(list(qrels), qrels, [f"d{d}" for d in range(docs)])
    return scores, judged


def test_noise_member_gets_no_weight_and_the_ensemble_is_the_informative_model():
    scores, judged = synthetic(np.array([[True] * 60, [False] * 60]))
    result = tune_weights(scores, judged, ["good", "noise"])
    assert result.weights == [1.0, 0.0]
    assert not result.ensemble_helps and result.best_member == "good"
    assert "use good alone" in result.message
    assert result.tuned_ndcg >= result.member_ndcg[0]


def test_complementary_members_are_both_kept():
    halves = np.array([[q % 2 == 0 for q in range(60)], [q % 2 == 1 for q in range(60)]])
    scores, judged = synthetic(halves)
    result = tune_weights(scores, judged, ["left", "right"])
    assert result.ensemble_helps
    assert min(result.weights) > 0.2
    assert result.tuned_ndcg > max(result.member_ndcg) + 0.3
    assert result.gain_mean > 3 * result.gain_stderr
    fused = ndcg_per_query(np.tensordot(np.array(result.weights), scores, axes=1), judged)
    assert fused.mean() == pytest.approx(result.tuned_ndcg)


# --- end to end through the real loading, embedding and cache --------------------------------


def test_tune_weights_puts_the_weight_on_the_informative_model(world, tmp_path):
    folder, models = world
    args = ["eval", "--beir", folder, "--models", f"{models['noise']},{models['informative']}"]
    args += ["--tune-weights", "--device", "cpu", "--output-dir", tmp_path / "out", "--json"]
    result = run_cli([*args, "--lease-dir", tmp_path], tmp_path)
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert [m["model"] for m in report["members"]] == [
        str(models["noise"]),
        str(models["informative"]),
    ]
    noise, informative = report["members"]
    assert informative["ndcg@10"] > 0.9 and noise["ndcg@10"] < 0.3
    assert report["weights"][1] >= 0.9
    assert report["ensemble"]["ndcg@10"] >= informative["ndcg@10"]
    assert set(report["ensemble"]) >= {"ndcg@10", "recall@100", "mrr@10"}
    assert report["tuning"]["split"] == "train" and report["tuning"]["folds"] == 5
    saved = read_weights_file(tmp_path / "out" / "weights.json")
    assert saved.weights[str(models["informative"])] == pytest.approx(report["weights"][1])

    # the weights file drives a run: the zero-weight member is left out
    chunks = tmp_path / "chunks" / "docs"
    chunks.mkdir(parents=True)
    (chunks / "a_chunks.json").write_text(
        json.dumps([{"text": "violin", "metadata": {"chunk_id": "a"}}])
    )
    run = run_cli(
        [
            "run",
            "--chunked-dir",
            tmp_path / "chunks",
            "--output-dir",
            tmp_path / "run",
            "--device",
            "cpu",
            "--models",
            f"{models['noise']},{models['informative']}",
            "--weights-file",
            tmp_path / "out" / "weights.json",
            "--lease-dir",
            tmp_path,
            "--json",
        ],
        tmp_path,
    )
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    assert summary["ensemble_models"] == [str(models["informative"])]


def test_tuned_complementary_ensemble_beats_both_members(world, tmp_path):
    folder, models = world
    report = tune_beir(folder, config_for(tmp_path, models["left"], models["right"]))
    left, right = report.member_metrics
    assert report.result.ensemble_helps
    assert report.ensemble_metrics["ndcg@10"] > max(left["ndcg@10"], right["ndcg@10"]) + 0.2
    assert min(report.result.weights) > 0.2
    assert report.to_json()["weights"] == [round(w, 4) for w in report.result.weights]


# --- bad input ---------------------------------------------------------------------------------


def test_one_model_is_a_usage_error(world, tmp_path):
    folder, models = world
    with pytest.raises(UsageError, match="--tune-weights needs at least two models"):
        tune_beir(folder, config_for(tmp_path, models["left"]))


def test_missing_split_names_the_splits_that_exist(world, tmp_path):
    folder, models = world
    config = config_for(tmp_path, models["left"], models["right"])
    with pytest.raises(
        UsageError, match=r"--tune-split dev: .* no qrels/dev\.tsv; available splits: test, train"
    ):
        tune_beir(folder, config, tune_split="dev")
    with pytest.raises(UsageError, match=r"--split validation: .*available splits: test, train"):
        tune_beir(folder, config, split="validation")


def test_tuning_split_without_judgements(world, tmp_path):
    folder, models = world
    copy = tmp_path / "copy"
    (copy / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        (copy / name).write_text((folder / name).read_text())
    (copy / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1-0\t0\n")
    with pytest.raises(UsageError, match=r"qrels/train\.tsv of .* judges no query with a relevant"):
        tune_beir(copy, config_for(tmp_path, models["left"], models["right"]))


def test_weights_file_is_validated(tmp_path):
    path = tmp_path / "w.json"
    write_weights_file(path, ["a", "b"], [0.7, 0.3], {})
    assert apply_weights_file(path, ["a", "b"], None) == (("a", "b"), (0.7, 0.3))
    assert apply_weights_file(path, None, None) == (("a", "b"), (0.7, 0.3))
    with pytest.raises(UsageError, match=r"is for models a, b, but this run has a, c"):
        apply_weights_file(path, ["a", "c"], None)
    with pytest.raises(UsageError, match="Give --weights or --weights-file, not both"):
        apply_weights_file(path, ["a", "b"], [1.0, 1.0])
    for bad, message in (
        (
            {"models": [{"model": "a", "weight": -1}]},
            r'weight of "a" is -1; weights must be finite',
        ),
        ({"models": [{"model": "a", "weight": 0}]}, "all weights are 0"),
        ({"models": []}, 'has no "models" list'),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(UsageError, match=message):
            read_weights_file(path)
    path.write_text('{"models": [{"model": "a", "weight": NaN}]}')
    with pytest.raises(UsageError, match="weights must be finite"):
        read_weights_file(path)
    with pytest.raises(UsageError, match="does not exist"):
        read_weights_file(tmp_path / "absent.json")


# --- query-time weights for --combine named ----------------------------------------------------


def test_named_run_fuses_weights_at_query_time(world, tmp_path):
    folder, models = world
    config = replace(
        config_for(tmp_path, models["left"], models["right"]), combine="named", weights=(1.0, 1.0)
    )
    report = evaluate_beir(folder, config)
    fused, exact = report.modes["dense"].metrics, report.modes["dense-exact"].metrics
    assert exact["ndcg@10"] > 0.8  # each member alone scores about 0.5 here
    assert fused["ndcg@10"] == pytest.approx(exact["ndcg@10"], abs=0.02)

    # the same stored vectors, other weights: nothing is embedded, the ranking follows the weights
    query = json.loads((folder / "queries.jsonl").read_text().splitlines()[0])["text"]  # topic 0
    found = {
        weights: search_run(config.output_dir, report.collection, query, 2, weights=weights)
        for weights in ((1.0, 0.0), (0.0, 1.0))
    }
    assert {hit.chunk_id for hit in found[(1.0, 0.0)]} == {"d0-0", "d0-1"}  # left knows
    assert not {hit.chunk_id for hit in found[(0.0, 1.0)]} & {"d0-0", "d0-1"}
    with pytest.raises(UsageError, match=r"1 weights given for the run's 2 models"):
        search_run(config.output_dir, report.collection, query, weights=[1.0])


def test_tuning_on_the_split_it_is_scored_on_warns(tmp_path, caplog):
    config = RunConfig(chunked_dir=tmp_path, output_dir=tmp_path, models=("a", "b"))
    with pytest.raises(UsageError):  # no qrels here: the warning comes before that check
        tune_beir(tmp_path, config, tune_split="test", split="test")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "--tune-split and --split are both test: the weights are scored on the queries they "
        "were learned on, so the scores flatter them (use --tune-split train --split test)"
    ]
