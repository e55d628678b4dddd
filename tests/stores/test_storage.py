"""Storage options: quantized copies in RAM with originals on disk, float16 originals, recorded
in the layout and honoured by searches, on the embedded store and the server client."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from helpers import invoke, search_run, write_chunks

from embed_collections.errors import StoreError, UsageError
from embed_collections.stores.base import PointBatch, SearchQuery, StorageOptions, VectorLayout
from embed_collections.stores.edge import EdgeStore
from embed_collections.stores.server import ServerStore

OPTIONS = [
    StorageOptions(),
    StorageOptions("none", "float16", on_disk=True),
    StorageOptions("int8"),
    StorageOptions("binary", oversampling=4),
    StorageOptions("binary-2bit", "float16"),
]


def open_store(kind, path):
    return EdgeStore(path) if kind == "edge" else ServerStore(path=path)


@pytest.mark.parametrize("kind", ["edge", "server"])
def test_every_option_round_trips_and_finds_each_point_first(tmp_path, kind):
    # local mode is slow and ignores quantization (it records it): fewer points there
    count = 300 if kind == "edge" else 40
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(count, 48)).astype(np.float32)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(count)]
    with open_store(kind, tmp_path / kind) as store:
        for n, storage in enumerate(OPTIONS):
            layout = VectorLayout({"": 48}, (), storage)
            store.ensure_collection(f"c{n}", layout)
            store.upsert(f"c{n}", PointBatch(ids, {"": vectors}, [{} for _ in ids]))
            store.finish(f"c{n}")
            assert store.layout(f"c{n}") == layout
            step = count // 10
            queries = [SearchQuery(dense={"": vectors[i]}, limit=5) for i in range(0, count, step)]
            hits = store.search(f"c{n}", queries)
            assert [h[0].id for h in hits] == ids[0:count:step]
            if kind == "edge":  # the quantized copy is really built, even for 300 points
                built = {p.name for p in (tmp_path / kind / f"c{n}").rglob("quantized*")}
                assert bool(built) == storage.quantized


def test_other_storage_options_need_recreate(tmp_path):
    with EdgeStore(tmp_path) as store:
        store.ensure_collection("c", VectorLayout({"": 8}))
        with pytest.raises(StoreError, match="int8 quantized.*--recreate"):
            store.ensure_collection("c", VectorLayout({"": 8}, (), StorageOptions("int8")))
        store.ensure_collection("c", VectorLayout({"": 8}, (), StorageOptions("int8")), True)
        assert store.layout("c").storage.quantization == "int8"


def test_a_layout_written_before_storage_options_reads_as_the_default():
    layout = VectorLayout.from_json({"dense": {"": 8}, "sparse": []})
    assert layout.storage == StorageOptions()
    assert "storage" not in layout.to_json()  # old readers still read default layouts


def test_options_are_checked_and_ram_is_computed_per_vector():
    with pytest.raises(UsageError, match='Unknown --quantization "int4"; choose one of none'):
        StorageOptions("int4")
    with pytest.raises(UsageError, match="--oversampling 0.5 must be at least 1.0"):
        StorageOptions(oversampling=0.5)
    assert StorageOptions("int8").on_disk  # quantized copy in RAM, originals on disk
    assert StorageOptions().ram_bytes(384) == 1536
    assert StorageOptions(vector_dtype="float16").ram_bytes(384) == 768
    assert StorageOptions("int8").ram_bytes(384) == 384
    assert StorageOptions("binary-2bit").ram_bytes(384) == 96
    assert StorageOptions("binary").ram_bytes(384) == 48


def test_run_records_the_options_search_honours_them_and_upload_can_change_them(
    tmp_path, tiny_models
):
    texts = [f"document {i} about topic {i % 7} with words {i * 13}" for i in range(60)]
    write_chunks(tmp_path / "Chunked" / "Docs" / "a_chunks.json", texts)
    out = tmp_path / "out"
    args = ["run", "--chunked-dir", tmp_path / "Chunked", "--output-dir", out]
    args += ["--models", tiny_models["tiny32"], "--device", "cpu", "-q", "--export"]
    args += ["--lease-dir", tmp_path / "leases", "--quantization", "int8", "--vector-dtype"]
    result = invoke([*args, "float16"])
    assert result.code == 0, result.err
    record = json.loads((out / "run_config.json").read_text())
    assert record["layout"]["storage"] == {
        "quantization": "int8",
        "vector_dtype": "float16",
        "on_disk": True,
        "oversampling": 3.0,
    }
    hits = search_run(out, "Docs", texts[5], top_k=3)
    assert hits[0].text == texts[5]
    # a re-run asking for other options is refused until --recreate
    again = invoke([*args, "float32"])
    assert again.code == 1 and "use --recreate" in again.err
    loaded = invoke(
        ["upload", out, "--qdrant-path", tmp_path / "q2", "--quantization", "binary-2bit"]
    )
    assert loaded.code == 0, loaded.err
    with EdgeStore(tmp_path / "q2") as store:
        assert store.layout("Docs").storage == StorageOptions("binary-2bit")
        assert store.count("Docs") == 60


def test_eval_reports_quality_beside_ram_and_disk_per_point(tmp_path, tiny_models):
    from embed_collections.engine.options import EngineOptions
    from embed_collections.evaluation.beir import evaluate_beir
    from embed_collections.record.config import RunConfig

    beir = tmp_path / "toy"
    (beir / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": f"unique{i} word{i * 7} text"} for i in range(40)]
    (beir / "corpus.jsonl").write_text("\n".join(map(json.dumps, docs)))
    queries = [{"_id": f"q{i}", "text": f"unique{i} word{i * 7} text"} for i in range(40)]
    (beir / "queries.jsonl").write_text("\n".join(map(json.dumps, queries)))
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(40))
    )
    config = RunConfig(
        chunked_dir=tmp_path,
        output_dir=tmp_path / "out",
        models=(str(tiny_models["tiny32"]),),
        engine=EngineOptions(device="cpu", show_progress=False, lease_dir=tmp_path).resolved(),
        storage=StorageOptions("binary-2bit"),
    )
    report = evaluate_beir(beir, config).to_json()
    assert report["storage"]["quantization"] == "binary-2bit"
    assert report["vector_ram_bytes_per_point"] == 32 * 2 / 8
    assert report["disk_bytes_per_point"] > 32 * 4  # originals, quantized copy and index
    assert report["modes"]["dense"]["ndcg@10"] > 0.9  # identical texts: rescoring finds each
