"""`ec.chunk`: documents to chunk files that fit every model, stable, mirrored, with bad files
skipped and reported; counted again here by the models' own (transformers) tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import embed_collections as ec
from embed_collections.corpus.chunks import load_collection

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "theta",
    "kappa",
    "lambda",
    "sigma",
    "omega",
]


def prose(words: int, seed: int = 0) -> str:
    """Sentences of real words (`words` of them), so tokenizers count them as a page's text."""
    out = []
    for index in range(words):
        out.append(WORDS[(index * 7 + seed) % len(WORDS)])
        if index % 12 == 11:
            out[-1] += "."
    return " ".join(out) + "."


def write_docs(root: Path) -> Path:
    """A small documentation tree: long sections, code, a table, other formats, a bad file."""
    (root / "guide").mkdir(parents=True)
    (root / "api").mkdir()
    fence = "```python\n" + "\n".join(f"value_{i} = compute({i})" for i in range(8)) + "\n```"
    table = "| name | value |\n|---|---|\n" + "\n".join(
        f"| {w} | {i} |" for i, w in enumerate(WORDS)
    )
    (root / "guide" / "intro.md").write_text(
        f"# Intro\n\n{prose(60)}\n\n## Install\n\n{prose(900, 1)}\n\n{fence}\n\n"
        f"## Settings\n\n{table}\n\n### Deep\n\n{prose(40, 2)}\n"
    )
    (root / "guide" / "one-word.md").write_text("# Big\n\n" + "x" * 3000 + "\n")
    (root / "api" / "reference.rst").write_text(
        f"Reference\n=========\n\n{prose(50)}\n\nFunctions\n---------\n\n{prose(300, 3)}\n"
    )
    (root / "api" / "page.html").write_text(
        f"<html><head><style>p{{}}</style></head><body><h1>Page</h1><p>{prose(30)}</p>"
        "<pre>def f():\n    return 1</pre></body></html>"
    )
    notebook = {
        "cells": [
            {"cell_type": "markdown", "source": ["# Notebook\n", prose(20)]},
            {"cell_type": "code", "source": "print('hi')", "outputs": []},
        ],
        "metadata": {"kernelspec": {"language": "python"}},
    }
    (root / "api" / "demo.ipynb").write_text(json.dumps(notebook))
    (root / "api" / "tool.py").write_text("def main():\n    return 0\n" * 50)
    (root / "api" / "notes.mdx").write_text("import X from 'y'\n\n# Notes\n\n" + prose(20))
    return root


@pytest.fixture
def models(tiny_models, prompt_model) -> list[str]:
    """A 128-token model, a 128-token model whose chunks carry `passage: `, and MiniLM (256)."""
    return [str(tiny_models["tiny32"]), str(prompt_model), "minilm"]


def counted(model: str, text: str, prefix: str) -> int:
    """Tokens the model reads for a chunk, by transformers' tokenizer (not the chunker's)."""
    from transformers import AutoTokenizer

    from embed_collections.engine import canonical_name, locate_model

    path = Path(model) if Path(model).exists() else locate_model(canonical_name(model), None)[0]
    return len(AutoTokenizer.from_pretrained(path)(prefix + text)["input_ids"])


def test_every_chunk_fits_every_model_with_its_prefix(tmp_path, models):
    docs = write_docs(tmp_path / "docs")
    report = ec.chunk(docs, tmp_path / "chunked", models, chunk_size=1000)
    assert report.skipped == () and report.files == 7
    limits = {models[0]: (128, ""), models[1]: (128, "passage: "), models[2]: (256, "")}
    texts = []
    for name, directory in ec.discover(tmp_path / "chunked").items():
        texts += [c.text for c in load_collection(name, directory).chunks]
    assert len(texts) == report.chunks > 20
    for model, (limit, prefix) in limits.items():
        over = [len(t) for t in texts if counted(model, t, prefix) > limit]
        assert over == [], f"{model}: {len(over)} chunks over {limit} tokens"
    # the window decided: the prefixed 128-token model is the tightest, and chunks come near it
    assert max(r for r in [report.tokens["max"]]) > 100
    assert report.sizing["capacity"] == min(m["room"] for m in report.sizing["models"].values())


def test_chunks_keep_structure_and_metadata(tmp_path, models):
    docs = write_docs(tmp_path / "docs")
    ec.chunk(docs, tmp_path / "chunked", models[:1], chunk_size=100)
    records = json.loads((tmp_path / "chunked/guide/intro_chunks.json").read_text())
    text = (docs / "guide/intro.md").read_text()
    for index, record in enumerate(records):
        meta = record["metadata"]
        assert text[meta["start_char"] : meta["end_char"]] == record["text"]
        assert meta["chunk_index"] == index and meta["chunk_id"].startswith(meta["document_id"])
        assert meta["source_file"] == "guide/intro.md" and meta["document_name"] == "intro"
        assert meta["token_count"] <= 100
        start, end = meta["start_char"], meta["end_char"]
        # never inside a word: each chunk starts and ends at a word's edge
        assert start == 0 or not (text[start - 1].isalnum() and text[start].isalnum())
        assert end == len(text) or not (text[end - 1].isalnum() and text[end].isalnum())
    paths = [r["metadata"]["section_path"] for r in records]
    assert ["Intro", "Install"] in paths and ["Intro", "Settings", "Deep"] in paths
    fence = [r["text"] for r in records if "value_0 =" in r["text"]][0]
    assert "value_7 = compute(7)" in fence  # the code block is whole where it fits
    settings = next(r for r in records if r["metadata"]["heading_text"] == "Settings")
    assert settings["metadata"]["parent_chunk_id"] == records[0]["metadata"]["chunk_id"]
    assert settings["metadata"]["child_chunk_ids"] == [records[-1]["metadata"]["chunk_id"]]
    rst = json.loads((tmp_path / "chunked/api/reference_chunks.json").read_text())
    assert ["Reference", "Functions"] in [r["metadata"]["section_path"] for r in rst]
    html = json.loads((tmp_path / "chunked/api/page_chunks.json").read_text())
    assert html[0]["text"].startswith("# Page") and "    return 1" in html[0]["text"]
    notebook = json.loads((tmp_path / "chunked/api/demo_chunks.json").read_text())
    assert "```python\nprint('hi')\n```" in notebook[0]["text"]
    mdx = json.loads((tmp_path / "chunked/api/notes_chunks.json").read_text())
    assert "import X" not in mdx[0]["text"]


def test_the_tree_is_mirrored_and_discover_names_it(tmp_path, models):
    docs = write_docs(tmp_path / "docs")
    ec.chunk(docs, tmp_path / "chunked", models[:1])
    assert sorted(ec.discover(tmp_path / "chunked")) == ["api", "guide"]
    assert sorted(p.name for p in (tmp_path / "chunked/api").iterdir()) == [
        "demo_chunks.json",
        "notes_chunks.json",
        "page_chunks.json",
        "reference_chunks.json",
        "tool_chunks.json",
    ]


def test_same_input_same_bytes_and_an_edit_touches_one_file(tmp_path, models):
    docs = write_docs(tmp_path / "docs")
    out = tmp_path / "chunked"
    ec.chunk(docs, out, models[:1])
    before = {p: p.read_bytes() for p in out.rglob("*_chunks.json")}
    again = ec.chunk(docs, out, models[:1])
    assert again.written == 0 and again.unchanged == 7
    assert {p: p.read_bytes() for p in out.rglob("*_chunks.json")} == before
    page = docs / "guide/intro.md"
    page.write_text(page.read_text().replace("### Deep", "### Deeper"))
    edited = ec.chunk(docs, out, models[:1])
    assert edited.written == 1
    changed = [p for p in before if p.read_bytes() != before[p]]
    assert changed == [out / "guide/intro_chunks.json"]
    old = json.loads(before[changed[0]])
    new = json.loads(changed[0].read_text())
    same = [(a["metadata"]["chunk_id"], a["text"]) for a in old[:-1]]
    assert same == [(b["metadata"]["chunk_id"], b["text"]) for b in new[:-1]]


def test_a_deleted_page_removes_its_chunk_file_only(tmp_path, models):
    docs = write_docs(tmp_path / "docs")
    out = tmp_path / "chunked"
    ec.chunk(docs, out, models[:1])
    theirs = out / "guide" / "handmade_chunks.json"
    theirs.write_text('[{"text": "kept"}]')
    (docs / "guide/one-word.md").unlink()
    for page in (docs / "api").iterdir():
        page.unlink()
    report = ec.chunk(docs, out, models[:1])
    assert report.removed == 6
    assert not (out / "guide/one-word_chunks.json").exists() and theirs.exists()
    assert not (out / "api").exists()  # its collection goes with its last page
    assert sorted(ec.discover(out)) == ["guide"]


def test_bad_files_are_skipped_with_their_reason_and_the_rest_chunked(tmp_path, models):
    docs = write_docs(tmp_path / "docs")
    (docs / "guide/image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (docs / "guide/latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    report = ec.chunk(docs, tmp_path / "chunked", models[:1])
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert reasons["image.png"] == "binary file (a NUL byte in its first 8 KB)"
    assert reasons["latin1.txt"].startswith("not UTF-8 text (byte 0xe9 at offset 3)")
    assert report.files == 7 and not report.ok


def test_a_bad_file_keeps_its_last_good_chunks(tmp_path, models):
    docs = write_docs(tmp_path / "docs")
    out = tmp_path / "chunked"
    ec.chunk(docs, out, models[:1])
    good = (out / "guide/intro_chunks.json").read_bytes()
    (docs / "guide/intro.md").write_bytes(b"\xff\xfe broken save")
    report = ec.chunk(docs, out, models[:1])
    assert [Path(s.path).name for s in report.skipped] == ["intro.md"]
    assert (out / "guide/intro_chunks.json").read_bytes() == good


def test_sizes_are_usage_errors(tmp_path, models):
    docs = write_docs(tmp_path / "docs")
    with pytest.raises(ec.UsageError, match="--chunk-overlap 50 must be 0 or more and less"):
        ec.chunk(docs, tmp_path / "out", models[:1], chunk_size=50, chunk_overlap=50)
    with pytest.raises(ec.UsageError, match="Source directory not found"):
        ec.chunk(tmp_path / "nope", tmp_path / "out", models[:1])


def test_navigation_is_left_out_and_counted_unless_kept(tmp_path, models):
    docs = tmp_path / "docs"
    docs.mkdir()
    menu = "\n".join(f"- [Page {i}](site/page-{i}.md)" for i in range(30))
    (docs / "page.md").write_text(f"Site | Docs\n\n{menu}\n\n# Real\n\n{prose(40)}\n")
    report = ec.chunk(docs, tmp_path / "out", models[:1])
    records = json.loads((tmp_path / "out/page_chunks.json").read_text())
    assert report.navigation_dropped >= 1
    assert not [r for r in records if "site/page-" in r["text"]]
    assert records[-1]["metadata"]["section_path"] == ["Real"]
    assert [r["metadata"]["chunk_index"] for r in records] == list(range(len(records)))
    kept = ec.chunk(docs, tmp_path / "kept", models[:1], keep_navigation=True)
    assert kept.navigation_dropped == 0 and kept.chunks == report.chunks + report.navigation_dropped


def write_docx(path: Path, paragraphs: list[str]) -> Path:
    """The smallest Word file: a zip with [Content_Types].xml, the package rels, the body."""
    import zipfile

    body = "".join(f"<w:p><w:r><w:t>{text}</w:t></w:r></w:p>" for text in paragraphs)
    word = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    package = "http://schemas.openxmlformats.org/package/2006"
    office = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
    main = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "[Content_Types].xml",
            f'<Types xmlns="{package}/content-types">'
            '<Default Extension="rels" ContentType="application/'
            'vnd.openxmlformats-package.relationships+xml"/>'
            f'<Override PartName="/word/document.xml" ContentType="{main}"/></Types>',
        )
        archive.writestr(
            "_rels/.rels",
            f'<Relationships xmlns="{package}/relationships">'
            f'<Relationship Id="r1" Type="{office}" Target="word/document.xml"/></Relationships>',
        )
        archive.writestr(
            "word/document.xml",
            f'<w:document xmlns:w="{word}"><w:body>{body}</w:body></w:document>',
        )
    return path


def test_a_word_file_is_chunked_through_the_documents_extra(tmp_path, models):
    pytest.importorskip("markitdown")
    docs = tmp_path / "docs"
    docs.mkdir()
    write_docx(docs / "memo.docx", ["Quarterly memo about the offline installer.", prose(30)])
    report = ec.chunk(docs, tmp_path / "out", models[:1])
    assert report.skipped == () and report.files == 1
    records = json.loads((tmp_path / "out/memo_chunks.json").read_text())
    assert "Quarterly memo about the offline installer." in records[0]["text"]
    assert records[0]["metadata"]["file_extension"] == ".docx"
