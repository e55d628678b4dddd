"""`run --export/--create-zip` and `upload`, end to end with tiny real models and real stores."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
import sys
import zipfile
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
from helpers import Result, read_summary, run_cli, write_chunks

from embed_collections.archive import export
from embed_collections.archive.export import finish_export
from embed_collections.archive.upload import (
    MANIFEST_FILE,
    open_export,
    parse_manifest,
    upload_export,
)
from embed_collections.engine.combine import combine_vectors
from embed_collections.engine.options import EngineOptions
from embed_collections.errors import ArchiveError, UsageError
from embed_collections.record.config import RunConfig
from embed_collections.record.files import SUMMARY_FILE
from embed_collections.runner.pipeline import run
from embed_collections.stores.base import SearchQuery, VectorLayout
from embed_collections.stores.edge import EdgeStore
from embed_collections.stores.open import point_id
from embed_collections.stores.server import ServerStore

SECRET = "sk-test-secret-0123456789"
TEXTS = {
    "Alpha": {
        "intro_chunks.json": [
            "Install the package with pip.",
            "Naïve café — ünïcödé ✓ 日本語のテキスト",
            "def main():\n    return 42\n",
            "Install the package with pip.",  # a duplicate text
            "Vectors are stored in Qdrant.",
        ],
        "guide_chunks.json": [
            "Chunks are embedded model by model.",
            "The cache keys texts by their sha256.",
            "Emoji 🚀 and math ∑ x² survive the round trip.",
            "A zip archive bundles every export file.",
            "The manifest lists each file with a checksum.",
        ],
    },
    "beta_docs": {
        "notes_chunks.json": [
            f"Beta note number {i}: {'lorem ipsum ' * (i % 4)}" for i in range(11)
        ]
    },
}


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chunked")
    for collection, files in TEXTS.items():
        for name, texts in files.items():
            write_chunks(root / collection / name, texts)
    return root


def make_config(tiny_models, chunked: Path, output: Path, **kw) -> RunConfig:
    engine = EngineOptions(device="cpu", show_progress=False, lease_dir=output.parent / "leases")
    return RunConfig(
        chunked_dir=chunked,
        output_dir=output,
        models=(str(tiny_models["tiny32"]), str(tiny_models["tiny48"])),
        engine=engine.resolved(),
        export=True,
        **kw,
    )


@pytest.fixture(scope="module")
def concat_run(tiny_models, chunked, tmp_path_factory):
    """concat + bm25, stored in the embedded store, exported and zipped."""
    output = tmp_path_factory.mktemp("concat") / "output"
    config = make_config(
        tiny_models, chunked, output, create_zip=True, sparse="bm25", qdrant_api_key=SECRET
    )
    summary = run(config)
    assert summary.exit_code == 0, summary.failed_collections
    return output, summary


@pytest.fixture(scope="module")
def named_run(tiny_models, chunked, tmp_path_factory):
    """named vectors, export only (no store, no zip)."""
    output = tmp_path_factory.mktemp("named") / "output"
    summary = run(make_config(tiny_models, chunked, output, combine="named", upload=False))
    assert summary.exit_code == 0, summary.failed_collections
    return output, summary


def archive_of(output: Path) -> Path:
    (archive,) = output.glob("embeddings_*.zip")
    return archive


def exported(output: Path, collection: str) -> tuple[list[dict], list[str], dict]:
    folder = output / collection
    metadata = json.loads((folder / f"{collection}_metadata.json").read_text("utf-8"))
    texts = json.loads((folder / f"{collection}_texts.json").read_text("utf-8"))
    stats = json.loads((folder / f"{collection}_stats.json").read_text("utf-8"))
    return metadata, texts, stats


def expected_payload(text: str, meta: dict) -> dict:
    fields = ("chunk_id", "doc_id", "source_file", "metadata")
    return {
        "text": text,
        **{key: meta[key] for key in fields},
        "content_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def test_export_files_are_aligned_and_match_direct_encodes(concat_run, tiny_models):
    from sentence_transformers import SentenceTransformer

    output, summary = concat_run
    metadata, texts, stats = exported(output, "Alpha")
    expected_texts = TEXTS["Alpha"]["guide_chunks.json"] + TEXTS["Alpha"]["intro_chunks.json"]
    assert sorted(texts) == sorted(expected_texts) and len(texts) == 10
    assert [m["point_id"] for m in metadata] == [point_id("Alpha", m["chunk_id"]) for m in metadata]
    vectors = np.load(output / "Alpha" / "Alpha_embeddings.npy")
    assert vectors.dtype == np.float32 and vectors.shape == (10, 80)
    per_model = [
        SentenceTransformer(str(tiny_models[name]), device="cpu").encode(texts)
        for name in ("tiny32", "tiny48")
    ]
    direct = combine_vectors(per_model, [1.0, 1.0], "concat")[""]
    np.testing.assert_allclose(vectors, direct, atol=1e-5)
    sparse = [json.loads(line) for line in (output / "Alpha" / "Alpha_sparse.jsonl").open()]
    assert [row["point_id"] for row in sparse] == [m["point_id"] for m in metadata]
    assert stats["counts"]["points"] == 10 and stats["counts"]["unique_texts"] == 9
    assert stats["dimension"] == 80 and stats["combine"] == "concat"
    assert stats["layout"] == {"dense": {"": 80}, "sparse": ["bm25"]}
    assert stats["sparse"]["kind"] == "bm25" and len(stats["models"]) == 2
    assert stats["vector_norms"][""]["min"] == pytest.approx(1.0, abs=1e-5)
    assert stats["timings"]["processing_time"] == summary.results["Alpha"].processing_time > 0
    assert summary.results["Alpha"].export_dir == str(output / "Alpha")
    leftovers = [
        p
        for p in output.rglob(".*")
        if p.is_file() and "qdrant" not in p.parts and p.name != ".embed-collections.lock"
    ]
    assert not leftovers
    for path in output.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".jsonl", ".py", ".txt"}:
            assert SECRET not in path.read_text("utf-8"), path


def test_manifest_lists_every_file_with_its_sha256(concat_run):
    output, _ = concat_run
    text = (output / MANIFEST_FILE).read_text("utf-8")
    assert text.startswith("EMBEDDING ARCHIVE MANIFEST\n" + "=" * 80 + "\nGenerated: ")
    assert "\nCompression: deflated\n" in text and "\nSUMMARY:\n  Total files: 13\n" in text
    entries = parse_manifest(text, "test")
    on_disk = {SUMMARY_FILE} | {
        p.relative_to(output).as_posix()
        for name in ("Alpha", "beta_docs")
        for p in (output / name).iterdir()
    }
    assert {e.path for e in entries} == on_disk
    for entry in entries:
        data = (output / entry.path).read_bytes()
        assert (entry.size, entry.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    summary = read_summary(output)
    assert summary["export"]["archive"] == archive_of(output).name


def test_zip_starts_with_manifest_and_passes_testzip(concat_run):
    output, _ = concat_run
    with zipfile.ZipFile(archive_of(output)) as archive:
        names = archive.namelist()
        assert names[0] == MANIFEST_FILE and archive.testzip() is None
        entries = parse_manifest(archive.read(MANIFEST_FILE).decode(), "zip")
        assert names[1:] == [e.path for e in entries]
        assert all(not n.startswith("/") and ".." not in n for n in names)
        assert archive.getinfo("Alpha/Alpha_texts.json").compress_type == zipfile.ZIP_DEFLATED


def test_upload_zip_into_fresh_edge_store_reproduces_points(concat_run, tmp_path):
    output, _ = concat_run
    with EdgeStore(tmp_path / "edge") as store:
        assert upload_export(archive_of(output), store) == {"Alpha": 10, "beta_docs": 11}
        assert upload_export(archive_of(output), store, ["Alpha"]) == {"Alpha": 10}
        assert store.count("Alpha") == 10  # same ids: a second load adds nothing
        assert store.layout("Alpha") == VectorLayout({"": 80}, ("bm25",))
        metadata, texts, _ = exported(output, "Alpha")
        vectors = np.load(output / "Alpha" / "Alpha_embeddings.npy")
        ids = [m["point_id"] for m in metadata]
        assert store.point_ids("Alpha") == set(ids)
        hits = store.search("Alpha", [SearchQuery(dense={"": v}, limit=1) for v in vectors])
        for i, (hit,) in enumerate(hits):
            duplicate = texts.count(texts[i]) > 1
            assert hit.score == pytest.approx(1.0, abs=1e-5)
            assert duplicate or (hit.id, hit.payload) == (
                ids[i],
                expected_payload(texts[i], metadata[i]),
            )
    with EdgeStore(output / "qdrant") as original:
        assert original.point_ids("Alpha") == set(ids)


def test_upload_into_local_mode_sends_exactly_the_exported_vectors(concat_run, tmp_path):
    output, _ = concat_run
    with ServerStore(path=tmp_path / "local") as store:
        assert upload_export(output, store, recreate=True) == {"Alpha": 10, "beta_docs": 11}
        for collection in ("Alpha", "beta_docs"):
            metadata, texts, _ = exported(output, collection)
            vectors = np.load(output / collection / f"{collection}_embeddings.npy")
            sparse = [
                json.loads(x) for x in (output / collection / f"{collection}_sparse.jsonl").open()
            ]
            ids = [m["point_id"] for m in metadata]
            records = store.client.retrieve(collection, ids, with_vectors=True)
            by_id = {str(r.id): r for r in records}
            for i, point in enumerate(ids):
                record = by_id[point]
                assert record.payload == expected_payload(texts[i], metadata[i])
                np.testing.assert_allclose(record.vector[""], vectors[i], atol=1e-6)
                assert record.vector["bm25"].indices == sparse[i]["indices"]
                assert record.vector["bm25"].values == pytest.approx(sparse[i]["values"])


def test_named_mode_writes_one_npy_per_vector_name(named_run, tmp_path):
    output, _ = named_run
    names = sorted(p.name for p in (output / "Alpha").iterdir())
    assert names == [
        "Alpha_metadata.json",
        "Alpha_stats.json",
        "Alpha_texts.json",
        "Alpha_tiny32_embeddings.npy",
        "Alpha_tiny48_embeddings.npy",
        "Alpha_upload_script.py",
    ]
    assert np.load(output / "Alpha" / "Alpha_tiny48_embeddings.npy").shape == (10, 48)
    assert "\nCompression: none\n" in (output / MANIFEST_FILE).read_text("utf-8")
    assert not list(output.glob("*.zip"))
    with EdgeStore(tmp_path / "edge") as store:
        assert upload_export(output, store, ["beta_docs"]) == {"beta_docs": 11}
        assert store.layout("beta_docs") == VectorLayout({"tiny32": 32, "tiny48": 48})


@pytest.mark.parametrize("which", ["concat", "named"])
def test_upload_script_recreates_the_collection_idempotently(
    which, concat_run, named_run, tmp_path
):
    output, _ = concat_run if which == "concat" else named_run
    script = output / "Alpha" / "Alpha_upload_script.py"
    moved = shutil.copytree(output / "Alpha", tmp_path / "elsewhere")  # finds files beside itself
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, str(moved / script.name), "--path", str(tmp_path / "q")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "10 points uploaded, 10 in the collection" in done.stdout
    from qdrant_client import QdrantClient

    metadata, texts, _ = exported(output, "Alpha")
    client = QdrantClient(path=str(tmp_path / "q"))
    try:
        records, _ = client.scroll("Alpha", limit=100, with_vectors=True)
        assert client.count("Alpha", exact=True).count == 10
        by_id = {str(r.id): r for r in records}
        assert set(by_id) == {m["point_id"] for m in metadata}
        for meta, text in zip(metadata, texts):
            assert by_id[meta["point_id"]].payload == expected_payload(text, meta)
        if which == "named":
            assert set(by_id[metadata[0]["point_id"]].vector) == {"tiny32", "tiny48"}
    finally:
        client.close()


def rewrite_zip(source: Path, target: Path, change=None, extra=()) -> Path:
    """Copy a zip entry by entry, letting `change(name, data)` alter contents, adding `extra`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            new.writestr(info, change(info.filename, data) if change else data)
        for info, data in extra:
            new.writestr(info, data)
    return target


def test_truncated_zip_is_refused(concat_run, tmp_path):
    data = archive_of(concat_run[0]).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[:-300])
    with pytest.raises(ArchiveError, match=r"cut\.zip: not a readable zip archive .*truncated"):
        open_export(cut)


@pytest.mark.parametrize(
    ("name", "mode", "message"),
    [
        ("../evil.txt", 0o644, "unsafe entry '../evil.txt'"),
        ("/etc/evil", 0o644, "unsafe entry '/etc/evil'"),
        ("Alpha/link", stat.S_IFLNK | 0o777, "entry 'Alpha/link' is a symlink"),
    ],
)
def test_unsafe_zip_entries_are_refused(concat_run, tmp_path, name, mode, message):
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    bad = rewrite_zip(archive_of(concat_run[0]), tmp_path / "bad.zip", extra=[(info, "x")])
    with pytest.raises(ArchiveError, match=f"bad.zip: {message}"):
        upload_export(bad, EdgeStore(tmp_path / "edge"))
    assert not (tmp_path / "edge").exists()  # refused before touching the store


def test_tampered_file_is_refused_in_zip_and_directory(concat_run, tmp_path):
    output, _ = concat_run

    def tamper(name: str, data: bytes) -> bytes:
        return data.replace(b"pip", b"pep") if name == "Alpha/Alpha_texts.json" else data

    bad = rewrite_zip(archive_of(output), tmp_path / "tampered.zip", tamper)
    with pytest.raises(ArchiveError, match=r"Alpha/Alpha_texts\.json fails its checksum"):
        open_export(bad)
    copy = shutil.copytree(
        output, tmp_path / "dir", ignore=shutil.ignore_patterns("qdrant", "cache", "*.zip")
    )
    with (copy / "beta_docs" / "beta_docs_embeddings.npy").open("r+b") as handle:
        handle.truncate(200)
    with pytest.raises(ArchiveError, match=r"beta_docs/beta_docs_embeddings\.npy is 200 bytes"):
        open_export(copy)
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(ArchiveError, match=r"MANIFEST\.txt is missing"):
        open_export(copy)


def test_failed_archive_verification_deletes_the_archive(concat_run, tmp_path):
    output, _ = concat_run
    copy = shutil.copytree(
        output, tmp_path / "out", ignore=shutil.ignore_patterns("qdrant", "cache", "*.zip")
    )
    entries = parse_manifest((copy / MANIFEST_FILE).read_text("utf-8"), "copy")
    (copy / "Alpha" / "Alpha_stats.json").write_text("{}")  # changed after the manifest
    target = copy / "embeddings_test.zip"
    with pytest.raises(ArchiveError, match=r"Alpha/Alpha_stats\.json is 2 bytes"):
        export.create_archive(target, entries, "stored")
    assert not list(copy.glob("*.zip*")) and not list(copy.glob(".*zip*"))


def test_archive_refused_when_the_disk_is_full(concat_run, small_disk):
    copy = shutil.copytree(
        concat_run[0],
        small_disk / "out",
        ignore=shutil.ignore_patterns("qdrant", "cache", "*.zip", "report.html"),
    )
    entries = parse_manifest((copy / MANIFEST_FILE).read_text("utf-8"), "copy")
    with pytest.raises(
        ArchiveError, match=r"Not enough free disk in .*: 64\.\d\d MB needed, 1\d\.\d\d MB free"
    ):
        export.create_archive(copy / "e.zip", entries, "deflated")
    assert not list(copy.glob("*.zip*")) and not list(copy.glob(".*zip*"))


def test_unknown_collection_is_a_usage_error(concat_run, tmp_path):
    with pytest.raises(UsageError, match='Unknown collection "Gamma".*Available: Alpha, beta_docs'):
        upload_export(archive_of(concat_run[0]), EdgeStore(tmp_path / "e"), ["Gamma"])


def cli(*args: str) -> Result:
    return run_cli(["upload", *args], Path.cwd())


def test_upload_cli_loads_and_reports_counts(concat_run, tmp_path):
    archive = archive_of(concat_run[0])
    done = cli(str(archive), "--qdrant-path", str(tmp_path / "q"), "--json")
    assert done.code == 0, done.err
    assert json.loads(done.out) == {"Alpha": 10, "beta_docs": 11}
    done = cli(str(archive), "--qdrant-path", str(tmp_path / "q"), "--collections", "beta_docs")
    assert done.code == 0, done.err
    assert done.out.split("\n")[2].split() == ["beta_docs", "11"]


def test_upload_cli_bad_archive_is_one_line_error(concat_run, tmp_path):
    cut = tmp_path / "cut.zip"
    cut.write_bytes(archive_of(concat_run[0]).read_bytes()[:-50])
    done = cli(str(cut), "--qdrant-path", str(tmp_path / "q"))
    assert done.code == 1
    assert done.err.startswith("Error: ") and done.err.count("\n") == 1
    assert "Traceback" not in done.err and "cut.zip" in done.err
    done = cli(str(cut))
    assert done.code == 2 and "--qdrant-path" in done.err


def test_upload_refuses_an_export_holding_nan_before_writing(concat_run, tmp_path):
    output, _ = concat_run
    copy = Path(
        shutil.copytree(output, tmp_path / "export", ignore=shutil.ignore_patterns("*.zip"))
    )
    npy = copy / "Alpha" / "Alpha_embeddings.npy"
    old = hashlib.sha256(npy.read_bytes()).hexdigest()
    array = np.load(npy)
    array[3, 0] = np.nan
    np.save(npy, array)
    manifest = copy / MANIFEST_FILE
    new = hashlib.sha256(npy.read_bytes()).hexdigest()
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    with EdgeStore(tmp_path / "edge") as store:
        with pytest.raises(ArchiveError, match=r"Alpha_embeddings\.npy row 3 holds NaN"):
            upload_export(copy, store, ["Alpha"])
        assert store.layout("Alpha") is None  # nothing was created or written


def test_upload_refuses_an_export_with_a_duplicate_point_id(concat_run, tmp_path):
    output, _ = concat_run
    copy = Path(
        shutil.copytree(output, tmp_path / "export", ignore=shutil.ignore_patterns("*.zip"))
    )
    (path,) = (copy / "Alpha").glob("*metadata*")
    old = hashlib.sha256(path.read_bytes()).hexdigest()
    metadata = json.loads(path.read_text(encoding="utf-8"))
    first, second = metadata[0]["point_id"], metadata[1]["point_id"]
    # the same number of bytes, so only the checksum changes
    path.write_bytes(path.read_bytes().replace(second.encode(), first.encode()))
    manifest = copy / MANIFEST_FILE
    new = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    done = cli(str(copy), "--qdrant-path", str(tmp_path / "q"), "--collections", "Alpha")
    assert done.code == 1, done.err
    assert "1 point ids occur twice" in done.err and first in done.err
    assert "Traceback" not in done.err


def test_a_new_zip_replaces_the_previous_one(concat_run, tiny_models, chunked, tmp_path):
    output, summary = concat_run
    assert summary.extra.phases["export"] > 0  # timed apart from the store
    copy = tmp_path / "output"
    shutil.copytree(output, copy, ignore=shutil.ignore_patterns("qdrant", "cache"))
    moved = copy_summary(summary, output, copy)
    older = copy / "embeddings_2020-01-01_00-00-00.zip"
    shutil.copy(archive_of(output), older)
    config = make_config(tiny_models, chunked, copy, create_zip=True, sparse="bm25")
    created = finish_export(config, moved)
    assert created is not None and created != older
    assert sorted(copy.glob("embeddings_*.zip")) == [created]


def copy_summary(summary, output: Path, copy: Path):
    """The run's summary with its export folders moved from `output` to `copy`."""
    moved = deepcopy(summary)
    for result in moved.results.values():
        if result.export_dir:
            result.export_dir = str(copy / Path(result.export_dir).relative_to(output))
    return moved


def test_the_upload_script_is_a_standalone_module():
    """Linted and type-checked as part of the package, yet it imports nothing of it (it runs
    beside an export with only numpy and qdrant-client), and its template refuses to run."""
    import ast

    from embed_collections.archive import upload_script

    source = Path(upload_script.__file__).read_text()
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not any(str(name).startswith("embed_collections") for name in imported)
    done = subprocess.run(
        [sys.executable, upload_script.__file__], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "template" in done.stderr
