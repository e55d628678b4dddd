"""The second stage on real parts: a tiny random cross-encoder loaded through the real loading
code reranks a real run's candidates, the same through the API, the CLI, HTTP and MCP; bad
arguments and a broken reranker fail with one line, `serve` before it answers anything."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import PACKAGE_ROOT, cli_env, quiet_cpu_options, run_cli, write_chunks

import embed_collections as ec
from embed_collections.engine import create_reranker
from embed_collections.errors import EmbedCollectionsError, ModelError, UsageError
from embed_collections.query.live import LiveRun
from embed_collections.query.mcp_tools import build_mcp
from embed_collections.query.server import BackgroundServer, create_app
from embed_collections.query.service import SearchService

TEXTS = {
    "Garden": [
        "Prune roses in late winter, just above an outward facing bud.",
        "Roses need six hours of sun and rich, well drained soil.",
        "Apple trees are pruned in winter while they are dormant.",
        "Water young trees deeply once a week in their first summer.",
        "Mulch keeps the roots of roses cool in a hot summer.",
    ],
    "Kitchen": [
        "Bake the bread at 220 degrees for thirty minutes until golden.",
        "Knead the dough for ten minutes, then let it rise for an hour.",
        "A sourdough starter needs flour, water and a warm kitchen.",
        "Roses make a fragrant syrup for summer drinks.",
    ],
}
QUERY = "how to care for roses in summer"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_models) -> Path:
    root = tmp_path_factory.mktemp("rerank")
    for name, texts in TEXTS.items():
        write_chunks(root / "Chunked" / name / f"{name.lower()}_chunks.json", texts)
    out = root / "out"
    ec.run(root / "Chunked", out, **quiet_cpu_options(root, tiny_models["tiny32"], "bm25"))
    return out


def keys(hits: list[Any]) -> list[tuple[str, str]]:
    return [(h["collection"], h["chunk_id"]) if isinstance(h, dict) else (h.collection, h.chunk_id)
            for h in hits]  # fmt: skip


def test_the_reranker_orders_candidates_by_the_cross_encoders_own_scores(
    run_dir, tiny_cross_encoder
):
    from sentence_transformers import CrossEncoder

    with ec.open(run_dir) as opened:
        first = opened.search(QUERY, None, 8, "hybrid")
        reranked = opened.search(
            QUERY, None, 4, "hybrid", rerank=str(tiny_cross_encoder), rerank_top_n=8
        )
    direct = CrossEncoder(str(tiny_cross_encoder), device="cpu").predict(
        [(QUERY, hit.text) for hit in first]
    )
    expected = [first[i] for i in np.argsort(-direct, kind="stable")[:4]]
    assert keys(reranked) == keys(expected)
    assert keys(reranked) != keys(first[:4])  # the second stage changed the order
    by_key = {(h.collection, h.chunk_id): h for h in first}
    for hit, score in zip(reranked, sorted(direct, reverse=True)):
        assert hit.rerank_score == pytest.approx(float(score), abs=1e-5)
        assert 0.0 < hit.rerank_score < 1.0  # the sigmoid activation
        assert hit.score == pytest.approx(by_key[(hit.collection, hit.chunk_id)].score)
        assert hit.to_json()["rerank_score"] == round(hit.rerank_score, 6)
    assert "rerank_score" not in first[0].to_json()


def test_batches_cut_by_a_token_budget_score_as_one_batch(tiny_cross_encoder):
    texts = [" ".join(["word"] * n) for n in (3, 40, 7, 90, 1, 25)]
    pairs = [(QUERY, text) for text in texts]
    whole = create_reranker(str(tiny_cross_encoder)).load("cpu").score(pairs)
    small = create_reranker(str(tiny_cross_encoder), max_tokens=64).load("cpu").score(pairs)
    np.testing.assert_allclose(small, whole, atol=1e-5)


def test_bad_rerank_arguments_are_one_line_usage_errors(run_dir, tiny_cross_encoder):
    with ec.open(run_dir, rerank=tiny_cross_encoder) as opened:
        for top_n, top_k, words in [
            (0, 1, "rerank_top_n is 0"),
            (1001, 10, "rerank_top_n is 1001"),
            (5, 10, "top_k 10 is above rerank_top_n 5"),
        ]:
            with pytest.raises(UsageError, match=words) as caught:
                opened.search(QUERY, top_k=top_k, rerank_top_n=top_n)
            assert "\n" not in str(caught.value)
        assert opened.search(QUERY, top_k=3, rerank=False)[0].rerank_score is None
        assert opened.search(QUERY, top_k=3)[0].rerank_score is not None  # open's reranker
    with ec.open(run_dir) as plain, pytest.raises(UsageError, match="no reranker is loaded"):
        plain.search(QUERY, rerank=True)


def test_a_reranker_that_cannot_load_fails_with_one_line(run_dir, tmp_path, tiny_models):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match='Reranker ".*broken" at .* could not be loaded'):
        ec.open(run_dir, rerank=broken)
    with pytest.raises(ModelError, match="is not a cross-encoder"):  # an embedding model
        create_reranker(str(tiny_models["tiny48"])).load("cpu")
    with pytest.raises(EmbedCollectionsError, match="does not exist"):
        ec.open(run_dir, rerank="./no/such/reranker")


def test_api_cli_http_and_mcp_give_the_same_reranked_order(run_dir, tiny_cross_encoder, tmp_path):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    with ec.open(run_dir, rerank=tiny_cross_encoder) as opened:
        expected = keys(opened.search(QUERY, None, 5, rerank_top_n=9))
    cli = run_cli(
        ["search", "all", QUERY, "--output-dir", run_dir, "--top-k", 5, "--json"]
        + ["--rerank", tiny_cross_encoder, "--rerank-top-n", 9],
        tmp_path,
    )
    assert cli.code == 0, cli.err
    assert keys(json.loads(cli.out)["hits"]) == expected

    reranker = create_reranker(str(tiny_cross_encoder)).load("cpu")
    service = SearchService(LiveRun(run_dir, poll_seconds=0.2).start(), reranker=reranker)
    try:
        with (
            BackgroundServer(create_app(service, build_mcp(service))) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            body = {"query": QUERY, "top_k": 5, "rerank_top_n": 9}
            assert keys(client.post("/search", json=body).json()["hits"]) == expected
            plain = client.post("/search", json={**body, "rerank": False}).json()["hits"]
            assert "rerank_score" not in plain[0]
            bad = client.post("/search", json={**body, "rerank_top_n": 0})
            assert bad.status_code == 400 and "rerank_top_n is 0" in bad.json()["error"]
            assert client.get("/healthz").json()["reranker"]["kind"] == "cross-encoder"

            async def talk() -> Any:
                async with (
                    streamable_http_client(server.url + "/mcp/") as streams,
                    ClientSession(streams[0], streams[1]) as session,
                ):
                    await session.initialize()
                    return await session.call_tool("search", body)

            found = asyncio.run(talk())
            assert keys(found.structured_content["hits"]) == expected
    finally:
        service.close()


def test_the_pairs_of_a_batch_of_searches_are_scored_in_one_call(run_dir, tiny_cross_encoder):
    """What `serve`'s micro-batcher does with concurrent requests (`search_many`)."""
    reranker = create_reranker(str(tiny_cross_encoder)).load("cpu")
    calls: list[int] = []
    score = reranker.score
    reranker.score = lambda pairs: (calls.append(len(pairs)), score(pairs))[1]  # type: ignore[method-assign]
    with ec.open(run_dir) as opened:
        queries = [f"{QUERY} {i}" for i in range(4)]
        prepared = [opened.prepare(q, None, 3, rerank=reranker, rerank_top_n=6) for q in queries]
        batched = opened.search_many(prepared)
        alone = [opened.search(q, None, 3, rerank=reranker, rerank_top_n=6) for q in queries]
    assert calls[0] == 4 * 6 and calls[1:] == [6] * 4
    assert [keys(hits) for hits in batched] == [keys(hits) for hits in alone]  # type: ignore[arg-type]


@pytest.mark.slow  # a child that loads torch
def test_serve_with_a_broken_reranker_fails_before_it_answers(run_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "num_labels": 1}')
    child = subprocess.run(
        [sys.executable, "-c", "from embed_collections.cli.main import main; main()"]
        + ["serve", "--output-dir", str(run_dir), "--port", "0", "--rerank", str(broken)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PACKAGE_ROOT,
        env=cli_env(),
    )
    assert child.returncode == 1, child.stderr
    assert "Serving" not in child.stdout
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "could not be loaded" in lines[0], child.stderr
    assert "Traceback" not in child.stderr


def test_max_length_cuts_each_pair_and_changes_the_scores(tiny_cross_encoder):
    pairs = [(QUERY, " ".join(["roses"] * n)) for n in (5, 40, 120)]
    full = create_reranker(str(tiny_cross_encoder)).load("cpu")
    short = create_reranker(str(tiny_cross_encoder), max_length=16).load("cpu")
    assert max(full.token_counts(pairs)) > 100 and max(short.token_counts(pairs)) == 16
    scores = short.score(pairs)
    assert scores[0] == pytest.approx(full.score(pairs)[0], abs=1e-5)  # short pair: uncut
    assert scores[2] != pytest.approx(full.score(pairs)[2], abs=1e-6)


def test_a_reranker_with_its_own_code_needs_the_users_flag(tmp_path, tiny_cross_encoder):
    import shutil

    folder = shutil.copytree(tiny_cross_encoder, tmp_path / "coded")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "acme/x--modeling.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="runs its own code .*--trust-remote-code"):
        create_reranker(str(folder)).load("cpu")
