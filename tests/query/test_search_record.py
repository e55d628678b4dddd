"""What `search` trusts in a run's record: paths relative to the record (a moved copy searches
its own store), model fingerprints (a replaced model is refused), never `trust_remote_code`
(only the user's flag runs a model's own code); and what it shows (mode, readable rows)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import cli_run_args, invoke, run_cli, write_chunks

import embed_collections as ec
from embed_collections.engine.models.tiny import build_tiny_model
from embed_collections.errors import ModelError

QUERY = "pruning roses in winter"


def with_remote_code(model: Path, marker: Path) -> Path:
    """A model whose config maps to its own module, which leaves `marker` when it runs."""
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModel": "custom.CustomModel"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertConfig as CustomConfig, BertModel as CustomModel\n"
    )
    return model


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_models):
    """A plain run of a tiny model (another model's weights will replace it)."""
    root = tmp_path_factory.mktemp("record")
    model = tiny_models["tiny32"]
    write_chunks(root / "Chunked/Garden/roses_chunks.json", ["Prune roses in winter.", "Sun"])
    write_chunks(root / "Chunked/Kitchen/bread_chunks.json", ["Bake bread.", "Knead dough."])
    ec.run(
        root / "Chunked",
        root / "out",
        models=[str(model)],
        device="cpu",
        backend="torch",
        quiet=True,
        lease_dir=str(root / "leases"),
    )
    return root, model


def top_ids(out: Path, **options) -> list[tuple[str, str]]:
    with ec.open(out, **options) as opened:
        return [(h.collection, h.chunk_id) for h in opened.search(QUERY)]


def test_a_moved_copy_searches_its_own_store(recorded, tmp_path):
    root, _ = recorded
    expected = top_ids(root / "out")
    moved = shutil.copytree(root / "out", tmp_path / "moved")
    (root / "out").rename(root / "out-away")  # the original store is gone meanwhile
    try:
        with ec.open(moved) as opened:
            assert Path(opened.store.location) == moved / "qdrant"
            assert [(h.collection, h.chunk_id) for h in opened.search(QUERY)] == expected
    finally:
        (root / "out-away").rename(root / "out")


def test_qdrant_path_searches_a_store_loaded_elsewhere(recorded, tmp_path):
    root, _ = recorded
    elsewhere = shutil.copytree(root / "out" / "qdrant", tmp_path / "store")
    with ec.open(root / "out", qdrant_path=elsewhere) as opened:
        assert Path(opened.store.location) == elsewhere
    assert top_ids(root / "out", qdrant_path=elsewhere) == top_ids(root / "out")


def test_a_replaced_model_is_refused_naming_it_and_the_fix(recorded, tmp_path, tiny_models):
    root, model = recorded
    replaced = shutil.copytree(model, tmp_path / "replaced-model")
    shutil.copy(tiny_models["tiny48"] / "model.safetensors", replaced / "model.safetensors")
    out = shutil.copytree(root / "out", tmp_path / "out")
    record = json.loads((out / "run_config.json").read_text())
    record["models"][0]["path"] = str(replaced)
    (out / "run_config.json").write_text(json.dumps(record))
    with pytest.raises(ModelError, match=r"changed since the run embedded with it") as error:
        ec.open(out)
    assert str(replaced) in str(error.value) and "re-run `embed-collections run`" in str(
        error.value
    )
    result = invoke(["search", "Garden", QUERY, "--output-dir", out])
    assert result.code == 1 and result.err.startswith("Error: Model ")


def test_the_table_says_the_mode_and_fits_the_terminal(recorded, monkeypatch):
    root, _ = recorded
    monkeypatch.setenv("COLUMNS", "90")
    result = invoke(["search", "all", QUERY, "--output-dir", root / "out"])
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "Mode: dense; score = cosine of query and chunk"
    assert lines[1].split() == ["#", "score", "collection", "source", "text"]
    assert max(len(line) for line in lines) <= 90
    assert {line.split()[2] for line in lines[3:]} == {"Garden", "Kitchen"}


def test_where_filters_from_the_command_line(recorded):
    root, _ = recorded
    args = ["search", "all", QUERY, "--output-dir", root / "out", "--json"]
    result = invoke([*args, "--where", "source_file=Kitchen/bread_chunks.json"])
    assert result.code == 0, result.err
    hits = json.loads(result.out)["hits"]
    assert [h["chunk_id"] for h in hits] and {h["collection"] for h in hits} == {"Kitchen"}
    bad = invoke([*args, "--where", "source_file"])
    assert bad.code == 2 and "is not FIELD=VALUE" in bad.err


@pytest.mark.slow  # a run and a search in children: a model's own code never runs in pytest
def test_the_records_trust_remote_code_never_runs_the_models_code(tmp_path):
    marker = tmp_path / "remote-code-ran"
    model = with_remote_code(build_tiny_model(tmp_path / "model", 32, seed=5), marker)
    chunked = tmp_path / "Chunked"
    write_chunks(chunked / "Garden/roses_chunks.json", ["Prune roses in winter.", "Sun"])
    out = tmp_path / "out"
    made = run_cli(
        [*cli_run_args(chunked, out, [model]), "--backend", "torch", "--trust-remote-code"],
        tmp_path,
    )
    assert made.code == 0, made.err
    assert json.loads((out / "run_config.json").read_text())["trust_remote_code"] is True
    marker.unlink()  # the run was allowed to run it
    args = ["search", "all", QUERY, "--output-dir", out, "--json"]
    refused = invoke(args)
    assert refused.code == 2 and "pass --trust-remote-code" in refused.err, refused.err
    assert not marker.exists()
    allowed = run_cli([*args, "--trust-remote-code"], tmp_path)  # the user's flag runs it
    assert allowed.code == 0 and json.loads(allowed.out)["hits"], allowed.err
    assert marker.exists()
