"""`read` and the token-budgeted context block on a real run (a tiny model, Qdrant Edge): chunks
with their neighbours in document order, sections, documents, overlaps said once, the slower
path of a store loaded before positions were stored, and diversity through the store's MMR."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from context_corpus import NOTES, guide_text, write_context_corpus
from qdrant_edge import EdgeShard, Filter, UpdateOperation

import embed_collections as ec
from embed_collections.errors import UsageError
from embed_collections.query.context import TokenCounter, check_budget
from embed_collections.query.diversity import mmr_order
from embed_collections.query.reading import UnknownChunkError, join_chunks, text_overlap
from embed_collections.stores.base import LOOKUP_INDEXES, SearchQuery
from embed_collections.stores.edge import EdgeStore


def embed_run(chunked: Path, out: Path, model: Path) -> Path:
    ec.run(
        chunked,
        out,
        models=[str(model)],
        device="cpu",
        backend="torch",
        quiet=True,
        lease_dir=str(out.parent / "leases"),
        sparse="bm25",
    )
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_models) -> Path:
    root = tmp_path_factory.mktemp("context")
    chunked = write_context_corpus(root / "Chunked")
    return embed_run(chunked, root / "out", tiny_models["tiny32"])


@pytest.fixture(scope="module")
def opened(run_dir):
    with ec.open(run_dir) as collections:
        yield collections


def test_points_carry_indexed_positions_and_sections(opened):
    assert opened.store.payload_indexes("Garden") >= set(LOOKUP_INDEXES)
    chunk = opened.reader.chunk("Garden", "guide-0006")
    assert (chunk.position, chunk.section, chunk.doc_id) == (6, "Watering", "doc-guide")
    bare = opened.reader.chunk("Kitchen", "notes_chunks#2")
    assert bare.position == 2  # no chunk_index: the record's order in its file


def test_read_joins_neighbours_without_repeating_the_overlap(opened):
    block = opened.read("Garden", "guide-0003", before=1, after=1)
    assert len(block.pieces) == 1
    piece = block.pieces[0]
    assert piece.text == guide_text(2, 4)
    assert piece.text.count("outward bud.") == 1 and piece.text.count("first of all.") == 1
    assert piece.chunk_ids == ("guide-0002", "guide-0003", "guide-0004")
    assert (piece.first_index, piece.last_index, piece.section) == (2, 4, "Pruning")
    assert piece.start_char is not None and piece.end_char is not None
    assert piece.end_char - piece.start_char == len(piece.text)  # offsets and text agree
    assert block.text.startswith("[1] [Garden] Garden/guide_chunks.json § Pruning (chunks 2-4")
    assert block.notes == []


def test_neighbours_follow_document_order_across_a_gap_in_chunk_index(opened):
    block = opened.read("Garden", "guide-0004", after=1)
    assert block.pieces[0].chunk_ids == ("guide-0004", "guide-0006")  # 5 was never stored
    first = opened.read("Garden", "guide-0000", before=3, after=0)
    assert first.pieces[0].chunk_ids == ("guide-0000",)  # the document's start


def test_read_section_and_document(opened):
    section = opened.read("Garden", "guide-0004", section=True)
    assert section.pieces[0].chunk_ids == ("guide-0002", "guide-0003", "guide-0004")
    whole = opened.read("Garden", document_id="doc-guide")
    assert [c for p in whole.pieces for c in p.chunk_ids][:2] == ["guide-0000", "guide-0001"]
    assert len([c for p in whole.pieces for c in p.chunk_ids]) == 7 and not whole.truncated
    by_file = opened.read("Garden", source_file="Garden/guide_chunks.json")
    assert by_file.text == whole.text
    cut = opened.read("Garden", document_id="doc-guide", max_tokens=40)
    assert cut.truncated and 0 < cut.tokens <= 40


def test_bare_texts_are_read_in_record_order(opened):
    block = opened.read("Kitchen", "notes_chunks#1", before=1, after=1)
    assert block.pieces[0].text == "\n\n".join(NOTES[:3])
    assert block.pieces[0].section == ""


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"chunk_id": "nope"}, UnknownChunkError, 'chunk_id "nope" is not in collection'),
        ({"document_id": "nope"}, UnknownChunkError, 'document_id "nope" is not in'),
        ({"chunk_id": "guide-0003", "before": -1}, UsageError, "before is -1"),
        ({"document_id": "doc-guide", "max_tokens": -5}, UsageError, "max_tokens is -5"),
        ({}, UsageError, "give document_id"),
    ],
)
def test_bad_reads_name_the_argument_and_the_fix(opened, arguments, error, message):
    with pytest.raises(error, match=message):
        opened.read("Garden", **arguments)


def test_a_read_of_an_unknown_collection_lists_the_choices(opened):
    with pytest.raises(UsageError, match='Unknown collection "Gardn". Available: Garden'):
        opened.read("Gardn", "guide-0003")


def test_context_block_fits_its_budget_grouped_by_document_in_order(opened):
    block = opened.search_context("pruning roses", max_tokens=120, top_k=4)
    assert 0 < block.tokens <= 120
    assert opened.token_counter.count(block.text) == block.tokens
    documents = [p.doc_id for p in block.pieces]
    assert documents == sorted(documents, key=documents.index)  # each document's pieces together
    for doc in set(documents):
        starts = [p.first_index for p in block.pieces if p.doc_id == doc]
        assert starts == sorted(starts)
    assert all(f"[{i}] [" in block.text for i in range(1, len(block.pieces) + 1))
    texts = [c for p in block.pieces for c in p.text.split("\n\n")]
    assert texts.count(NOTES[0]) <= 1  # identical texts (notes 0 and 3) said once
    wide = opened.search_context("pruning roses", max_tokens=2000, top_k=4)
    chunks = {c for p in wide.pieces for c in p.chunk_ids}
    assert len(chunks) > 4 and wide.tokens <= 2000  # the hits widened with their neighbours


def test_token_counter_uses_the_models_tokenizer(opened, tiny_models):
    counter = opened.token_counter
    assert counter.tokenizer is not None
    assert counter.count("prune the roses") == len(
        counter.tokenizer.encode("prune the roses", add_special_tokens=False).ids
    )
    assert TokenCounter.for_model(None).count("x" * 40) == 10  # the estimate
    with pytest.raises(UsageError, match="max_tokens is 0"):
        check_budget(0)


def test_overlaps_are_found_from_the_texts_without_offsets():
    assert text_overlap("the end of a long sentence", "a long sentence goes on") == 15
    assert text_overlap("abc", "abd") == 0


def test_join_uses_offsets_when_present(opened):
    chunks = opened.reader.neighbours(opened.reader.chunk("Garden", "guide-0003"), 1, 1)
    assert join_chunks(chunks) == guide_text(2, 4)


def test_diversity_uses_the_stores_mmr_and_pushes_duplicates_down(opened):
    plain = opened.search("bake bread", "Kitchen", top_k=4, mode="dense")
    same = opened.search("bake bread", "Kitchen", top_k=4, mode="dense", diversity=0.0)
    assert [h.chunk_id for h in plain] == [h.chunk_id for h in same]
    diverse = opened.search("bake bread", "Kitchen", top_k=2, mode="dense", diversity=1.0)
    assert {h.text for h in diverse} != {NOTES[0]}  # two copies of one text are not both top
    assert len({h.text for h in diverse}) == 2
    hybrid = opened.search("bake bread", "Kitchen", top_k=2, diversity=1.0)  # MMR here
    assert len({h.text for h in hybrid}) == 2
    with pytest.raises(UsageError, match="diversity is 2"):
        opened.search("bake bread", diversity=2)


def test_edge_mmr_reorders_near_duplicates(tmp_path):
    from embed_collections.stores.base import PointBatch, VectorLayout

    store = EdgeStore(tmp_path / "store")
    store.ensure_collection("c", VectorLayout(dense={"": 3}))
    vectors = np.array([[1, 0, 0], [0.99, 0.01, 0], [0.7, 0.7, 0], [0, 0, 1]], dtype=np.float32)
    ids = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(1, 5)]
    store.upsert("c", PointBatch(ids, {"": vectors}, [{"n": i} for i in range(4)]))
    query = {"": np.array([1, -0.05, 0], dtype=np.float32)}
    nearest = store.search("c", [SearchQuery(dense=query, limit=2)])[0]
    diverse = store.search("c", [SearchQuery(dense=query, limit=2, diversity=0.9)])[0]
    assert [h.payload["n"] for h in nearest] == [0, 1]
    assert [h.payload["n"] for h in diverse][0] == 0 and diverse[1].payload["n"] != 1
    order = mmr_order([0.99, 0.98, 0.7, 0.0], [{"": v} for v in vectors], {"": 1.0}, 2, 0.9)
    assert order == [0, [h.payload["n"] for h in diverse][1]]  # the same algorithm here
    store.close()


def test_a_store_loaded_before_positions_still_reads_and_says_how_to_upgrade(
    run_dir, tmp_path, tiny_models
):
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    shard_dir = old / "qdrant" / "Garden"
    shard = EdgeShard.load(str(shard_dir))
    shard.update(UpdateOperation.delete_payload_by_filter(Filter(must=[]), ["position", "section"]))
    for field in LOOKUP_INDEXES:
        shard.update(UpdateOperation.delete_field_index(field))
    shard.flush()
    shard.close()
    with ec.open(old) as collections:
        block = collections.read("Garden", "guide-0003", before=1, after=1)
        assert block.pieces[0].text == guide_text(2, 4)
        assert block.pieces[0].section == "Pruning"  # from metadata.section_path
        assert any("run `embed-collections run` again" in note for note in block.notes)
        assert collections.read("Garden", "guide-0004", section=True).pieces[0].chunk_ids == (
            "guide-0002",
            "guide-0003",
            "guide-0004",
        )
    embed_run(run_dir.parent / "Chunked", old, tiny_models["tiny32"])  # the upgrade it names
    with ec.open(old) as collections:
        block = collections.read("Garden", "guide-0003", before=1, after=1)
        assert block.notes == [] and collections.reader.chunk("Garden", "guide-0003").position == 3
        assert collections.store.payload_indexes("Garden") >= set(LOOKUP_INDEXES)


def test_positions_are_chunk_index_or_record_order():
    from embed_collections.corpus.chunks import Chunk
    from embed_collections.runner.collection import document_positions

    indexed = [Chunk("t", f"a{i}", "a", "a.json", {"chunk_index": i * 2}) for i in range(3)]
    bare = [Chunk("t", f"b{i}", "b", "b.json", {}) for i in range(3)]
    clash = [Chunk("t", f"c{i}", "c", "c.json", {"chunk_index": 1}) for i in range(2)]
    positions = document_positions(indexed + bare + clash)
    assert [positions[f"a{i}"] for i in range(3)] == [0, 2, 4]
    assert [positions[f"b{i}"] for i in range(3)] == [0, 1, 2]
    assert [positions[f"c{i}"] for i in range(2)] == [0, 1]  # equal chunk_index: record order


def test_cli_read_and_search_with_a_budget(run_dir, tmp_path):
    from helpers import invoke

    run_dir = shutil.copytree(run_dir, tmp_path / "out")  # the module's `opened` holds the store

    done = invoke(["read", "Garden", "guide-0003", "--before", "1", "--after", "1",
                   "--output-dir", run_dir])  # fmt: skip
    assert done.code == 0, done.err
    assert done.out.startswith("[1] [Garden] Garden/guide_chunks.json § Pruning")
    assert guide_text(2, 4) in done.out
    missing = invoke(["read", "Garden", "nope", "--output-dir", run_dir])
    assert missing.code == 2 and 'chunk_id "nope" is not in collection "Garden"' in missing.err
    block = invoke(["search", "all", "pruning", "--max-tokens", "120", "--json",
                    "--output-dir", run_dir])  # fmt: skip
    assert block.code == 0, block.err
    data = json.loads(block.out)
    assert 0 < data["tokens"] <= 120 and data["text"].startswith("[1] [")
    document = invoke(["read", "Garden", "--document-id", "doc-guide", "--json",
                       "--output-dir", run_dir])  # fmt: skip
    assert len([c for p in json.loads(document.out)["pieces"] for c in p["chunk_ids"]]) == 7
