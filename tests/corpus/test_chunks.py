"""Reading chunk files written to tmp_path: every accepted shape and every kind of bad input."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from helpers import nested_dict, write_chunks

from embed_collections.corpus.chunks import Chunk, load_chunk_file, load_collection
from embed_collections.errors import ChunkFileError


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_original_chunk_file_shape(tmp_path: Path):
    path = write_chunks(tmp_path / "Docling" / "intro_chunks.json", ["one", "two"])
    chunks, warnings, records, skipped = load_chunk_file(path, root=tmp_path)
    assert (warnings, records, skipped) == ([], 2, 0)
    assert chunks[1] == Chunk(
        text="two",
        chunk_id="intro_chunks-0001",
        doc_id="intro",
        source_file="Docling/intro_chunks.json",
        metadata={"chunk_id": "intro_chunks-0001"},
    )
    assert load_chunk_file(path)[0][0].source_file == "intro_chunks.json"
    with pytest.raises(dataclasses.FrozenInstanceError):
        chunks[0].text = "changed"  # type: ignore[misc]


@pytest.mark.parametrize("key", ["chunks", "data", "records", "items"])
def test_object_holding_the_list(tmp_path: Path, key: str):
    path = write_json(tmp_path / "a_chunks.json", {"source": "x", key: [{"text": "hello"}]})
    chunks, _, records, _ = load_chunk_file(path)
    assert [c.text for c in chunks] == ["hello"]
    assert records == 1


def test_plain_strings_and_alternative_keys(tmp_path: Path):
    records = [
        "just text",
        {"content": "from content", "meta": {"id": 7}},
        {"page_content": "from page_content", "metadata": {"doc_id": "D"}},
    ]
    chunks, warnings, _, _ = load_chunk_file(write_json(tmp_path / "mix_chunks.json", records))
    assert warnings == []
    assert [c.text for c in chunks] == ["just text", "from content", "from page_content"]
    assert [c.chunk_id for c in chunks] == ["mix_chunks#0", "7", "mix_chunks#2"]
    assert [c.doc_id for c in chunks] == ["mix", "mix", "D"]
    assert chunks[0].metadata == {}


def test_ids_and_metadata_merge(tmp_path: Path):
    records = [
        {
            "text": "t",
            "metadata": {"chunk_id": "c1", "document_id": "doc-9", "lang": "en"},
            "lang": "fr",  # metadata wins over a top-level key of the same name
            "url": "https://x",
        },
        {"text": "u", "id": 42, "doc_id": 5, "metadata": None},
        {"text": "v", "metadata": {"chunk_id": None, "id": ""}},
    ]
    chunks, warnings, _, _ = load_chunk_file(write_json(tmp_path / "p_chunks.json", records))
    assert warnings == []
    assert chunks[0].metadata == {
        "chunk_id": "c1",
        "document_id": "doc-9",
        "lang": "en",
        "url": "https://x",
    }
    assert (chunks[0].chunk_id, chunks[0].doc_id) == ("c1", "doc-9")
    assert (chunks[1].chunk_id, chunks[1].doc_id) == ("42", "5")
    assert (chunks[2].chunk_id, chunks[2].doc_id) == ("p_chunks#2", "p")


def test_text_kept_exactly(tmp_path: Path):
    code = "  def f():\n\treturn 1\n\n\n  "
    chunks, _, _, _ = load_chunk_file(write_json(tmp_path / "c_chunks.json", [code]))
    assert chunks[0].text == code


def test_bom_is_accepted(tmp_path: Path):
    path = tmp_path / "bom_chunks.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"text": "caf\u00e9"}]).encode("utf-8"))
    assert load_chunk_file(path)[0][0].text == "caf\u00e9"


def test_invalid_json_names_line_and_column(tmp_path: Path):
    path = tmp_path / "bad_chunks.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": }\n]', encoding="utf-8")
    with pytest.raises(ChunkFileError) as error:
        load_chunk_file(path)
    assert str(error.value) == (
        f"{path.as_posix()}: not valid JSON: Expecting value at line 3 column 12"
    )


def test_not_utf8(tmp_path: Path):
    path = tmp_path / "latin_chunks.json"
    path.write_bytes('[{"text": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(ChunkFileError, match=r"not UTF-8 text \(byte 0xe9 at offset 14\)$"):
        load_chunk_file(path)


@pytest.mark.parametrize(
    ("data", "found"),
    [
        ({"rows": [], "meta": {}}, 'found an object with keys "rows", "meta"'),
        ({"chunks": "not a list"}, 'found an object with keys "chunks"'),
        (42, "found a number"),
        ("text", "found a string"),
    ],
)
def test_unknown_shape(tmp_path: Path, data: object, found: str):
    path = write_json(tmp_path / "odd_chunks.json", data)
    with pytest.raises(ChunkFileError) as error:
        load_chunk_file(path)
    assert "unknown shape" in str(error.value)
    assert str(error.value).endswith(found)


def test_bad_records_are_skipped_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    records = [
        {"text": "good"},
        {"metadata": {}},
        {"text": ""},
        {"text": " \n\t"},
        {"text": 12},
        {"content": None},
        17,
        None,
        {"text": "bad meta", "metadata": ["x"]},
        "",
        {"text": "also good"},
    ]
    path = write_json(tmp_path / "Docling" / "a_chunks.json", records)
    chunks, warnings, count, skipped = load_chunk_file(path)
    assert [c.text for c in chunks] == ["good", "also good"]
    assert [c.chunk_id for c in chunks] == ["a_chunks#0", "a_chunks#10"]
    assert (count, skipped, len(warnings)) == (11, 9, 9)
    p = path.as_posix()
    assert warnings[0] == f'{p} record 1: "text" is missing or empty (record skipped)'
    assert warnings[3] == f'{p} record 4: "text" is a number, not a string (record skipped)'
    assert warnings[4] == f'{p} record 5: "content" is missing or empty (record skipped)'
    assert warnings[5] == f"{p} record 6: is a number, not an object or a string (record skipped)"
    assert warnings[7] == (f'{p} record 8: "metadata" is an array, not an object (record skipped)')
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert logged == warnings


def test_many_bad_records_are_all_counted_but_few_listed(tmp_path: Path):
    path = write_json(tmp_path / "m_chunks.json", [{"text": ""}] * 50 + ["ok"])
    chunks, warnings, records, skipped = load_chunk_file(path)
    assert (len(chunks), records, skipped) == (1, 51, 50)
    assert len(warnings) == 21
    assert warnings[-1] == f"{path.as_posix()}: 30 more bad records not listed"


def test_collection_keeps_going_past_bad_files(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    directory = tmp_path / "Docling"
    write_chunks(directory / "a_chunks.json", ["a0", "a1"])
    (directory / "b_chunks.json").write_text("{not json", encoding="utf-8")
    (directory / "c_chunks.json").write_bytes(b"\xff\xfe[]")
    write_json(directory / "d_chunks.json", [{"text": "d0"}, {"text": ""}])
    (directory / "notes.json").write_text("[]", encoding="utf-8")
    write_chunks(directory / "nested" / "n_chunks.json", ["belongs to another collection"])
    loaded = load_collection("Docling", directory, root=tmp_path)
    assert [c.text for c in loaded.chunks] == ["a0", "a1", "d0"]
    assert loaded.chunks[2].source_file == "Docling/d_chunks.json"
    stats = loaded.stats
    assert (stats.files, stats.records, stats.skipped_records, stats.duplicate_ids) == (4, 4, 1, 0)
    assert len(stats.file_errors) == 2
    assert "b_chunks.json: not valid JSON" in stats.file_errors[0]
    assert "c_chunks.json: not UTF-8" in stats.file_errors[1]
    assert len(loaded.warnings) == 1 and "d_chunks.json record 1" in loaded.warnings[0]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"{e} (file skipped)" for e in stats.file_errors]


def test_duplicate_ids_are_made_unique(tmp_path: Path):
    directory = tmp_path / "dups"
    write_json(directory / "a_chunks.json", [{"text": "1", "id": "x"}, {"text": "2", "id": "x"}])
    write_json(
        directory / "b_chunks.json",
        [{"text": "3", "id": "x"}, {"text": "4", "id": "x#2"}, {"text": "5", "id": "y"}],
    )
    loaded = load_collection("dups", directory)
    # "x#2" is a real id further on, so the renamed copies skip it.
    assert [c.chunk_id for c in loaded.chunks] == ["x", "x#3", "x#4", "x#2", "y"]
    assert loaded.stats.duplicate_ids == 2
    assert loaded.warnings[0] == 'dups: duplicate chunk_id "x" in a_chunks.json renamed to "x#3"'
    assert len({c.chunk_id for c in loaded.chunks}) == len(loaded.chunks)


def test_empty_list_and_empty_collection(tmp_path: Path):
    path = write_json(tmp_path / "e" / "empty_chunks.json", [])
    assert load_chunk_file(path) == ([], [], 0, 0)
    loaded = load_collection("e", tmp_path / "e")
    assert loaded.chunks == ()
    assert loaded.stats.files == 1 and loaded.stats.file_errors == ()


def test_poison_records_are_refused_one_by_one(tmp_path: Path):
    nested = nested_dict(300)
    records = [
        {"text": "fine one"},
        {"text": "deep", "metadata": nested},
        {"text": "not finite", "metadata": {"score": float("inf")}},
        {"text": "x" * (2 * 1024 * 1024)},
        {"text": "fine two"},
    ]
    path = tmp_path / "p_chunks.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    chunks, warnings, read, skipped = load_chunk_file(path, tmp_path)
    assert [c.text for c in chunks] == ["fine one", "fine two"]
    assert (read, skipped) == (5, 3)
    assert "record 1: metadata is nested deeper than 32 levels (record skipped)" in warnings[0]
    assert "record 2: metadata holds the non-finite number inf" in warnings[1]
    assert "record 3: payload is 2048 KiB, over the 1024 KiB limit" in warnings[2]
