"""`chunk` and `run --docs` end to end, and `ec.watch` following real file writes."""

from __future__ import annotations

import json
import threading
import time

from helpers import read_summary, run_cli, search_run

import embed_collections as ec


def write_pages(root):
    (root / "guide").mkdir(parents=True)
    (root / "guide" / "install.md").write_text(
        "# Install\n\nUse pip to install the package.\n\n## Offline\n\nCopy the wheel first.\n"
    )
    (root / "guide" / "broken.md").write_bytes(b"\xff\xfe\x00\x00")
    (root / "faq.txt").write_text("Questions and answers about the tool.\n")
    return root


def test_chunk_command_reports_and_skips(tmp_path, tiny_models):
    docs = write_pages(tmp_path / "docs")
    done = run_cli(
        ["chunk", docs, tmp_path / "chunked", "--models", tiny_models["tiny32"], "--json"],
        tmp_path,
    )
    assert done.code == 3, done.err
    report = json.loads(done.out)
    assert report["files"] == 2 and report["chunks"] == 3
    assert [s["path"].endswith("broken.md") for s in report["skipped"]] == [True]
    assert "broken.md: binary file (a NUL byte in its first 8 KB) (file skipped)" in done.err
    assert "torch" not in done.modules  # sizing reads tokenizer files, never loads a model


def test_run_from_docs_then_search(tmp_path, tiny_models):
    docs = write_pages(tmp_path / "docs")
    (docs / "guide" / "broken.md").unlink()
    out = tmp_path / "out"
    args = ["run", "--docs", docs, "--output-dir", out, "--lease-dir", tmp_path / "leases"]
    done = run_cli([*args, "--models", tiny_models["tiny32"], "--device", "cpu"], tmp_path)
    assert done.code == 0, done.err
    assert "Chunked 2 documents into 3 chunks" in done.out
    summary = read_summary(out)
    assert summary["chunking"]["chunks"] == 3 and summary["chunking"]["skipped"] == []
    assert sorted(ec.discover(out / "chunked")) == ["chunked", "guide"]
    report = (out / "report.html").read_text()
    assert "<h2>Chunking</h2>" in report and "navigation chunks left out" in report
    hits = search_run(out, "guide", "Copy the wheel first.")
    assert "Copy the wheel first." in hits[0].text


def test_watch_follows_a_saved_page_and_keeps_the_last_good_state(tmp_path, tiny_models):
    docs = write_pages(tmp_path / "docs")
    (docs / "guide" / "broken.md").unlink()
    out = tmp_path / "out"
    updates: list[dict] = []
    stop = threading.Event()
    options = {"docs": docs, "models": [str(tiny_models["tiny32"])], "device": "cpu"}
    options |= {"lease_dir": tmp_path / "leases", "quiet": True}
    thread = threading.Thread(
        target=ec.watch,
        args=(None, out),
        kwargs={"on_update": updates.append, "stop": stop, "force_polling": True, **options},
    )
    thread.start()
    try:
        wait_for(lambda: len(updates) == 1)
        page = docs / "guide" / "install.md"
        for word in ("one", "two", "Use conda to install the package."):  # a burst of saves
            page.write_text(f"# Install\n\n{word}\n")
        wait_for(lambda: len(updates) == 2)
        assert updates[1]["ok"] and updates[1]["chunking"]["written"] == 1
        hits = search_run(out, "guide", "conda")
        assert any("Use conda" in hit.text for hit in hits)
        time.sleep(0.5)
        page.write_bytes(b"\x00\xff broken")
        wait_for(lambda: len(updates) == 3)
        assert not updates[2]["ok"] and "last good chunks kept" in updates[2]["message"]
        assert "Use conda" in (out / "chunked/guide/install_chunks.json").read_text()
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
