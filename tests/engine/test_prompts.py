"""Prefixes from the model's own prompts, the known-model table or the user, reaching the model
in every executor and in search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import cosine, encode, read_points, write_chunks

import embed_collections
from embed_collections.engine.models.folders import model_fingerprint
from embed_collections.engine.models.prompts import read_model_prompts
from embed_collections.engine.models.resolve import resolve_ensemble, resolve_model
from embed_collections.engine.models.specs import BGE_QUERY_INSTRUCTION
from embed_collections.errors import ModelError, UsageError

TEXTS = [f"Passage {i} about foxes, dogs and a river crossing number {i}." for i in range(6)]


@pytest.fixture
def e5_model(prompt_model) -> Path:
    return prompt_model


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("prompts", "default", "expected"),
    [
        ({"query": "query: ", "passage": "passage: "}, None, ("passage: ", "query: ")),
        ({"document": "", "passage": "p: ", "corpus": "c: "}, None, ("p: ", None)),
        (
            {"search_query": "search_query: ", "search_document": "d: "},
            None,
            ("d: ", "search_query: "),
        ),
        ({"query": "", "document": ""}, None, (None, None)),  # sentence-transformers 6's blanks
        ({"retrieval": "Represent: ", "query": "q: "}, "retrieval", ("Represent: ", "q: ")),
    ],
)
def test_prompts_are_read_by_the_names_sentence_transformers_uses(
    tmp_path, prompts, default, expected
):
    folder = write_config(tmp_path, {"prompts": prompts, "default_prompt_name": default})
    assert read_model_prompts(folder) == expected


def test_a_broken_sentence_transformers_config_is_a_model_error(tmp_path):
    (tmp_path / "config_sentence_transformers.json").write_text("{not json")
    with pytest.raises(ModelError, match="config_sentence_transformers.json cannot be read"):
        read_model_prompts(tmp_path)


def test_model_prompts_come_first_then_the_table_and_the_option_overrides_both(
    e5_model, minilm_dir
):
    spec = resolve_model(str(e5_model))
    assert (spec.settings.document_prefix, spec.settings.query_prefix) == ("passage: ", "query: ")
    assert spec.settings.prefix_source == "model config"
    chosen = resolve_model(str(e5_model), document_prefix="", query_prefix="question: ")
    assert (chosen.settings.document_prefix, chosen.settings.query_prefix) == ("", "question: ")
    assert chosen.settings.prefix_source == "option"
    # the document prefix is part of the vectors' identity, so the cache never mixes them
    assert model_fingerprint(spec, "torch", "float32") != model_fingerprint(
        chosen, "torch", "float32"
    )
    plain = resolve_model("minilm")
    assert (plain.settings.document_prefix, plain.settings.query_prefix) == ("", "")
    assert plain.settings.prefix_source == "none"


def test_the_known_table_applies_when_the_model_declares_nothing(tmp_path, minilm_dir):
    # a bge-named model in a cache, with only blank prompts of its own
    import shutil

    folder = tmp_path / "BAAI" / "bge-small-en-v1.5"
    shutil.copytree(minilm_dir, folder)
    write_config(folder, {"prompts": {"query": "", "document": ""}})
    spec = resolve_model("bge-small", model_cache_dir=tmp_path)
    assert spec.settings.query_prefix == BGE_QUERY_INSTRUCTION
    assert spec.settings.prefix_source == "document: none, query: known model"


def test_a_prefix_for_a_model_outside_the_ensemble_is_a_usage_error(e5_model, tiny_models):
    names = [str(e5_model), str(tiny_models["tiny32"])]
    with pytest.raises(UsageError, match='--query-prefix names model "minilm"') as caught:
        resolve_ensemble(names, None, query_prefixes={"minilm": "q: "})
    assert str(e5_model) in str(caught.value)
    specs = resolve_ensemble(names, None, document_prefixes={str(tiny_models["tiny32"]): "doc: "})
    assert [s.settings.document_prefix for s in specs] == ["passage: ", "doc: "]


def test_model_with_prompts_is_embedded_and_queried_with_them(e5_model, tmp_path):
    chunked = tmp_path / "Chunked"
    write_chunks(chunked / "notes" / "notes_chunks.json", TEXTS)
    out = tmp_path / "out"
    summary = embed_collections.run(
        chunked, out, models=[str(e5_model)], device="cpu", backend="torch",
        lease_dir=tmp_path / "leases", no_index=True, quiet=True,
    )  # fmt: skip
    assert summary.exit_code == 0
    stored = {p["text"]: v for v, p in read_points(out / "qdrant", "notes").values()}
    with_prompt = encode(e5_model, TEXTS, "passage")
    without = encode(e5_model, TEXTS, None)
    got = np.array([stored[t] for t in TEXTS])
    assert cosine(got, with_prompt).min() > 0.9999
    assert cosine(got, without).max() < 0.999  # the prompt really changes these vectors
    with embed_collections.open(out) as opened:
        (model,) = opened.models
        assert (model.document_prefix, model.query_prefix) == ("passage: ", "query: ")
        assert model.prefix_source == "model config"
        encoder = opened.encoder
        queries = ["where do foxes cross the river?"]
        (vectors,) = encoder.per_model(queries)
        assert cosine(vectors, encode(e5_model, queries, "query")).min() > 0.9999
        assert cosine(vectors, encode(e5_model, queries, None)).max() < 0.999
        # search scores are cosines to the query as encoded with the model's query prompt
        hits = opened.search(queries[0], ["notes"], len(TEXTS))
        expected = cosine(got, encode(e5_model, queries, "query"))
        by_text = {hit.text: hit.score for hit in hits}
        assert np.allclose([by_text[t] for t in TEXTS], expected, atol=1e-4)


def test_user_prefixes_reach_a_run_and_its_record(e5_model, tmp_path):
    chunked = tmp_path / "Chunked"
    write_chunks(chunked / "notes" / "notes_chunks.json", TEXTS[:2])
    out = tmp_path / "out"
    embed_collections.run(
        chunked, out, models=[str(e5_model)], device="cpu", backend="torch",
        lease_dir=tmp_path / "leases", no_index=True, quiet=True,
        document_prefix=[f"{e5_model}="], query_prefix={str(e5_model): "question: "},
    )  # fmt: skip
    stored = {p["text"]: v for v, p in read_points(out / "qdrant", "notes").values()}
    got = np.array([stored[t] for t in TEXTS[:2]])
    assert cosine(got, encode(e5_model, TEXTS[:2], None)).min() > 0.9999
    record = json.loads((out / "run_config.json").read_text())
    (model,) = record["models"]
    assert (model["document_prefix"], model["query_prefix"]) == ("", "question: ")
    assert model["prefix_source"] == "option"


def test_prefix_without_a_model_is_a_usage_error(e5_model, tmp_path):
    with pytest.raises(UsageError, match='--query-prefix "query: " has no model'):
        embed_collections.run(tmp_path, tmp_path / "out", query_prefix=["query: "])


def test_cli_prefix_without_a_model_exits_2_with_one_line(tmp_path):
    from helpers import cli_run_args, invoke

    result = invoke(cli_run_args(tmp_path, tmp_path / "out", ["minilm"], "--query-prefix", "q: "))
    assert result.code == 2
    assert '--query-prefix "q: " has no model; write MODEL=PREFIX' in result.err
    assert "Traceback" not in result.err
