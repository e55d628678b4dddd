"""Learned sparse members (`--sparse MODEL`): a tiny random SPLADE model, loaded through the real
loading code, encodes documents and queries; the store holds its vectors in the named sparse
vector without IDF, so a sparse search scores the model's own dot products."""

from __future__ import annotations

import json

import pytest
from helpers import cached_vectors, invoke, quiet_cpu_options, write_chunks

import embed_collections as ec
from embed_collections.engine import create_sparse_encoder
from embed_collections.errors import StoreError, UsageError

TEXTS = [
    "Prune roses in late winter, just above an outward facing bud.",
    "Bake the bread at 220 degrees for thirty minutes until golden.",
    "Apple trees are pruned in winter while they are dormant.",
    "Roses need six hours of sun and rich, well drained soil.",
]


def learned_run(tmp_path, model, sparse, name="out", **options):
    chunked = tmp_path / "Chunked"
    if not chunked.exists():
        write_chunks(chunked / "Garden" / "garden_chunks.json", TEXTS)
    out = tmp_path / name
    ec.run(chunked, out, **quiet_cpu_options(tmp_path, model, sparse), **options)
    return out


def dot(a: tuple[list[int], list[float]], b: tuple[list[int], list[float]]) -> float:
    weights = dict(zip(*b))
    return sum(value * weights.get(index, 0.0) for index, value in zip(*a))


def test_sparse_search_scores_the_models_own_dot_products(tmp_path, tiny_models, tiny_splade):
    from sentence_transformers import SparseEncoder

    out = learned_run(tmp_path, tiny_models["tiny32"], tiny_splade)
    record = json.loads((out / "run_config.json").read_text())
    assert record["sparse"]["kind"] == "splade" and record["sparse"]["model"] == str(tiny_splade)
    assert record["layout"]["sparse_idf"] is False
    encoder = create_sparse_encoder(str(tiny_splade))
    query = "pruning roses in winter"
    with ec.open(out) as opened:
        hits = opened.search(query, top_k=4, mode="sparse")
    q = encoder.embed_query(query)
    expected = {text: dot(q, encoder.embed_document(text)) for text in TEXTS}
    assert [hit.text for hit in hits] == sorted(TEXTS, key=lambda t: -expected[t])
    for hit in hits:
        assert hit.fused_score == pytest.approx(expected[hit.text], rel=1e-4)
    # The encoder is sentence-transformers' own: the same terms as its encode_query.
    direct = SparseEncoder(str(tiny_splade), device="cpu").encode_query(query).coalesce()
    assert sorted(q[0]) == sorted(direct.indices()[0].tolist())


def test_learned_sparse_vectors_are_cached_and_hybrid_fuses_them(
    tmp_path, tiny_models, tiny_splade
):
    out = learned_run(tmp_path, tiny_models["tiny32"], tiny_splade)
    held = cached_vectors(out)
    assert held == 2 * len(TEXTS)  # dense and sparse vectors, one each per chunk
    learned_run(tmp_path, tiny_models["tiny32"], tiny_splade)  # again: nothing new to encode
    assert cached_vectors(out) == held
    with ec.open(out) as opened:
        assert opened.resolve_mode(None) == "hybrid"
        hybrid = opened.search("roses", top_k=4)
    assert len(hybrid) == 4 and all(hit.fused_score > 0 for hit in hybrid)
    printed = invoke(["search", "Garden", "roses", "--output-dir", out, "--json"])
    assert printed.code == 0, printed.err
    ranking = json.loads(printed.out)["ranking"]  # names the learned member, not BM25
    assert ranking.startswith("hybrid (dense + ") and "BM25" not in ranking


def test_switching_bm25_for_a_learned_model_is_a_new_layout(tmp_path, tiny_models, tiny_splade):
    out = learned_run(tmp_path, tiny_models["tiny32"], "bm25")
    with ec.open(out) as opened:
        bm25 = [h.fused_score for h in opened.search("roses", top_k=2, mode="sparse")]
    with pytest.raises(StoreError, match=r"sparse\[bm25 without IDF\].*--recreate"):
        learned_run(tmp_path, tiny_models["tiny32"], tiny_splade)
    learned_run(tmp_path, tiny_models["tiny32"], tiny_splade, recreate=True)
    with ec.open(out) as opened:
        learned = opened.search("roses", top_k=4, mode="sparse")
    assert len(learned) == 4 and [h.fused_score for h in learned[:2]] != bm25
    assert json.loads((out / "run_config.json").read_text())["sparse"]["kind"] == "splade"


def test_sparse_that_is_neither_bm25_nor_a_sparse_model_is_one_line(tmp_path, tiny_models):
    with pytest.raises(UsageError, match="is neither bm25 nor a sentence-transformers") as caught:
        create_sparse_encoder(str(tiny_models["tiny32"]))  # a dense model
    assert "\n" not in str(caught.value)
    write_chunks(tmp_path / "Chunked" / "A" / "a_chunks.json", TEXTS)
    result = invoke(
        ["run", "--chunked-dir", tmp_path / "Chunked", "--output-dir", tmp_path / "out"]
        + ["--models", tiny_models["tiny32"], "--sparse", tmp_path / "missing", "-q"]
    )
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1 and "--sparse" in result.err
