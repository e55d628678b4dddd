"""BM25 sparse vectors, IDF in the embedded store, hybrid search through the real pipeline, and the
`search` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Result, engine_options, run_cli, search_run, write_chunks

from embed_collections.engine import SPARSE_VECTOR_NAME as VECTOR_NAME
from embed_collections.engine import create_sparse_encoder as create_encoder
from embed_collections.engine.options import EngineOptions
from embed_collections.errors import UsageError
from embed_collections.record.config import RunConfig
from embed_collections.runner.pipeline import run
from embed_collections.stores import PointBatch, SearchQuery, VectorLayout
from embed_collections.stores.edge import EdgeStore
from embed_collections.stores.open import point_id

MINILM = "sentence-transformers/all-MiniLM-L6-v2"

# Only the fourth chunk holds the identifier, in text about something else; the troubleshooting
# chunks are what MiniLM finds closest to the question (it ranks the identifier's chunk 5th), and
# none of them shares a word with the query, so BM25 matches the identifier's chunk alone.
IDENTIFIER_CORPUS = [
    "When the application fails to start, the status message explains what went wrong "
    "and how to fix it.",
    "Troubleshooting guide: if the service crashes, read the log file and restart the daemon.",
    "Diagnostic codes printed by the installer identify which step failed during setup.",
    "The garden party menu featured lemonade, cucumber sandwiches and strawberries; the "
    "caterer's invoice carried reference ZX-4411.",
    "Our hiking trail climbs through pine forest to a lake with views of the valley.",
    "Bake the bread at 220 degrees for thirty minutes until the crust is golden.",
    "The orchestra rehearsed the symphony twice before the evening concert.",
    "Exceptions raised by the parser include a line number so that faulty input can be located.",
]
IDENTIFIER_QUERY = "What does error ZX-4411 mean?"
IDENTIFIER_CHUNK = "notes_chunks-0003"


def engine(tmp_path: Path) -> EngineOptions:
    return engine_options(tmp_path, backend="auto")


def term_weights(text: str) -> dict[int, float]:
    indices, values = create_encoder("bm25").embed_document(text)
    return dict(zip(indices, values))


def term_index(word: str) -> int:
    indices, _ = create_encoder("bm25").embed_query(word)
    assert len(indices) == 1, word
    return indices[0]


def search_cli(*args: str) -> Result:
    """`embed-collections search ARGS` in a child process."""
    return run_cli(["search", *args], Path.cwd())


# --- sparse vectors ------------------------------------------------------------------------


def test_repeated_term_weighs_more_than_single_term():
    weights = term_weights("cat cat cat dog")
    assert weights[term_index("cat")] > weights[term_index("dog")]


def test_stemming_maps_word_forms_together():
    assert term_index("running") == term_index("runs") == term_index("run")
    assert set(term_weights("running runs")) == {term_index("run")}


def test_stop_words_are_dropped():
    assert set(term_weights("the cat and the dog")) == set(term_weights("cat dog"))
    assert create_encoder("bm25").embed_query("the and of") == ([], [])


def test_query_vector_weighs_each_unique_term_once():
    indices, values = create_encoder("bm25").embed_query("cat cat dog")
    assert sorted(indices) == sorted([term_index("cat"), term_index("dog")])
    assert values == [1.0, 1.0]


def test_unknown_sparse_kind_lists_the_choices():
    from embed_collections.errors import UsageError

    with pytest.raises(UsageError, match='--sparse "nonsense" is neither bm25 nor a SparseEncoder'):
        create_encoder("nonsense")


def test_idf_ranks_rare_term_above_frequent_common_term(tmp_path):
    encoder = create_encoder("bm25")
    texts = [f"common word number {i} appears here" for i in range(20)]
    texts += ["common common common common filler", "rare filler text"]
    vectors = [encoder.embed_document(t) for t in texts]
    query = encoder.embed_query("common rare")
    # Without IDF the doc repeating "common" would win: check the test really measures IDF.
    raw = [sum(dict(zip(*v)).get(i, 0.0) for i in query[0]) for v in vectors]
    assert max(range(len(texts)), key=raw.__getitem__) == 20
    with EdgeStore(tmp_path / "qdrant") as store:
        store.ensure_collection("c", VectorLayout({}, (VECTOR_NAME,)))
        ids = [point_id("c", str(i)) for i in range(len(texts))]
        payloads = [{"n": i} for i in range(len(texts))]
        store.upsert("c", PointBatch(ids, {}, payloads, {VECTOR_NAME: vectors}))
        store.finish("c")
        hits = store.search("c", [SearchQuery(sparse={VECTOR_NAME: query}, limit=5)])[0]
    assert [h.payload["n"] for h in hits[:2]] == [21, 20]
    assert hits[0].score > 5 * hits[1].score


# --- hybrid search through the pipeline -----------------------------------------------------


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory) -> Path:
    """A real run of the packaged MiniLM plus BM25 over the identifier corpus."""
    root = tmp_path_factory.mktemp("hybrid")
    write_chunks(root / "Chunked" / "Notes" / "notes_chunks.json", IDENTIFIER_CORPUS)
    config = RunConfig(
        chunked_dir=root / "Chunked",
        output_dir=root / "output",
        models=(MINILM,),
        sparse="bm25",
        engine=engine(root),
    )
    summary = run(config)
    assert summary.exit_code == 0, summary.failed_collections
    return config.output_dir


def test_hybrid_ranks_lexical_only_match_first_where_dense_does_not(minilm_run):
    dense = search_run(minilm_run, "Notes", IDENTIFIER_QUERY, mode="dense")
    sparse = search_run(minilm_run, "Notes", IDENTIFIER_QUERY, mode="sparse")
    hybrid = search_run(minilm_run, "Notes", IDENTIFIER_QUERY, mode="hybrid")
    dense_ids = [h.chunk_id for h in dense]
    assert dense_ids.index(IDENTIFIER_CHUNK) >= 2  # measured: 5th of 8
    assert [h.chunk_id for h in sparse] == [IDENTIFIER_CHUNK]
    assert hybrid[0].chunk_id == IDENTIFIER_CHUNK
    assert len(hybrid) == len(IDENTIFIER_CORPUS)


def test_default_mode_is_hybrid_when_the_run_stored_sparse_vectors(minilm_run):
    hits = search_run(minilm_run, "Notes", IDENTIFIER_QUERY, top_k=3)
    assert hits[0].chunk_id == IDENTIFIER_CHUNK
    assert len(hits) == 3


# --- the search command ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense_only_run(tmp_path_factory, tiny_models) -> Path:
    """A fast run with a tiny model and no sparse vectors, with two collections."""
    root = tmp_path_factory.mktemp("dense_only")
    write_chunks(root / "Chunked" / "Alpha" / "a_chunks.json", ["apples and pears", "cherries"])
    write_chunks(root / "Chunked" / "Beta" / "b_chunks.json", ["boats", "bridges", "bicycles"])
    config = RunConfig(
        chunked_dir=root / "Chunked",
        output_dir=root / "output",
        models=(str(tiny_models["tiny32"]),),
        engine=engine(root),
    )
    assert run(config).exit_code == 0
    return config.output_dir


def test_search_cli_json(dense_only_run):
    result = search_cli("Beta", "boats", "--output-dir", str(dense_only_run), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    hits = data["hits"]
    assert data["mode"] == "dense"
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert {h["chunk_id"] for h in hits} == {"b_chunks-0000", "b_chunks-0001", "b_chunks-0002"}
    assert {"score", "point_id", "text", "doc_id", "source_file", "collection"} <= set(hits[0])


def test_search_cli_unknown_collection_lists_names(dense_only_run):
    result = search_cli("Gamma", "boats", "--output-dir", str(dense_only_run))
    assert result.code == 2
    assert result.out == ""
    assert result.err.strip() == 'Error: Unknown collection "Gamma". Available: Alpha, Beta'


def test_search_cli_sparse_mode_without_sparse_vectors(dense_only_run):
    result = search_cli("Alpha", "apples", "--output-dir", str(dense_only_run), "--mode", "sparse")
    assert result.code == 2
    assert result.err.strip() == (
        'Error: Search mode "sparse" needs sparse vectors; this run had none (use mode dense, '
        "or re-run with --sparse bm25)"
    )


def test_search_cli_without_a_run(tmp_path):
    result = search_cli("Alpha", "apples", "--output-dir", str(tmp_path))
    assert result.code == 2
    assert "run_config.json is missing" in result.err


def test_sparse_language_is_configurable_and_checked():
    german = create_encoder("bm25", "german")
    english = create_encoder("bm25", "english")
    assert german.fingerprint != english.fingerprint
    # German stop-words are dropped in German only
    assert len(german.embed_query("und der Hund")[0]) == 1
    assert len(english.embed_query("und der Hund")[0]) == 3
    with pytest.raises(UsageError, match='unsupported language: "klingon"'):
        create_encoder("bm25", "klingon")
