"""`--executor ray`: the same run on a local Ray cluster (one per test session, 2 CPUs, a small
object store), an actor killed mid-shard, and the usage error without the extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    cosine,
    encode,
    need_module,
    read_points,
    run_cli,
    unused_port,
    write_chunks,
)

import embed_collections
from embed_collections.engine.cache import EmbeddingCache, text_digest
from embed_collections.engine.executors.ray_actors import KILL_ONCE_ENV, cut_shards
from embed_collections.engine.executors.ray_cluster import (
    Cluster,
    cluster_engine,
    dtype_for_capabilities,
)
from embed_collections.engine.options import CPU_BATCH_TOKENS, EngineOptions
from embed_collections.errors import UsageError
from embed_collections.record.config import RunConfig
from embed_collections.runner.pipeline import run

SRC = Path(embed_collections.__file__).resolve().parents[1]
SHARED = "Both collections quote this paragraph about installing the package."
CORPUS = {
    "alpha/alpha_chunks.json": [f"Alpha note {i}: the fox jumps over dog {i}." for i in range(9)]
    + [SHARED],
    "beta/beta_chunks.json": [f"Beta step {i}: run command {i} " * (1 + i % 4) for i in range(11)]
    + [SHARED],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-corpus")
    for name, texts in CORPUS.items():
        write_chunks(root / name, texts)
    return root


def make_config(corpus: Path, output: Path, models: list[Path], executor: str) -> RunConfig:
    """A run of `models` on CPU with torch (no runtime export), the embedded store in `output`."""
    engine = EngineOptions(device="cpu", backend="torch", batch_size=4, show_progress=False)
    return RunConfig(
        chunked_dir=corpus,
        output_dir=output,
        models=tuple(str(m) for m in models),
        engine=engine.resolved(),
        executor=executor,
        build_index=False,
    )


def cached_vectors(config: RunConfig, fingerprint: str, dim: int) -> np.ndarray:
    """Every corpus text's vector of one model, in a fixed order."""
    digests = sorted({text_digest(t) for texts in CORPUS.values() for t in texts})
    with EmbeddingCache(config.embedding_cache_path) as cache:
        return cache.get_vectors(fingerprint, digests, dim)


def test_ray_run_matches_local_and_survives_a_killed_actor(
    ray_session, corpus, prompt_model, tmp_path, monkeypatch
):
    model = prompt_model  # declares `passage: `, which the actors must put before every text
    local_config = make_config(corpus, tmp_path / "local", [model], "local")
    local = run(local_config)
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    config = make_config(corpus, tmp_path / "ray", [model], "ray")
    summary = run(config)
    assert summary.exit_code == 0
    assert summary.extra.executor == "ray" and summary.extra.ray["cpus"] == 2
    phases = summary.extra.phases  # joining Ray counts in the run's time
    assert "ray start-up" in phases and sum(phases.values()) <= summary.extra.total_seconds
    # the actor's process really was SIGKILLed mid-shard, and Ray restarted it
    telemetry, local_telemetry = (
        summary.extra.models[str(model)],
        local.extra.models[str(model)],
    )
    (worker,) = telemetry["workers"]
    assert worker["restarted"] and worker["loads"] == 2
    assert int(marker.read_text()) in worker["pids"] and worker["device"] == "cpu"
    # nothing lost or duplicated: each pending text came back once, each chunk is one point
    unique = len({t for texts in CORPUS.values() for t in texts})
    assert telemetry["chunks_embedded"] == worker["chunks"] == telemetry["cache_misses"] == unique
    assert telemetry["tokens_embedded"] == local_telemetry["tokens_embedded"]
    for path, texts in CORPUS.items():
        name = path.split("/")[0]
        assert summary.results[name].points_in_store == local.results[name].points_in_store
        assert summary.results[name].points_in_store == len(texts)
    dim = telemetry["dim"]
    ours = cached_vectors(config, telemetry["fingerprint"], dim)
    theirs = cached_vectors(local_config, local_telemetry["fingerprint"], dim)
    assert cosine(ours, theirs).min() >= 0.9999
    texts = sorted({t for texts in CORPUS.values() for t in texts}, key=text_digest)
    assert cosine(ours, encode(model, texts, "passage")).min() >= 0.9999
    assert cosine(ours, encode(model, texts, None)).max() < 0.999
    # every shard the actors wrote was indexed in place by the driver: no file is left over
    with EmbeddingCache(config.embedding_cache_path) as cache:
        assert list(cache.shard_dir(telemetry["fingerprint"]).iterdir()) == []
    events = summary.extra.lease_events
    kinds = [(e["event_type"], e["device"].split("@")[0]) for e in events]
    assert kinds == [
        ("acquire", "ray:1xcpu"),
        ("acquire", "ray-actor-0"),
        ("release", "ray-actor-0"),
        ("release", "ray:1xcpu"),
    ]


def test_ray_executor_without_the_extra_is_a_usage_error(corpus, tiny_models, tmp_path):
    fake = tmp_path / "site"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text('raise ImportError("No module named ray")\n')
    args = ["run", "--chunked-dir", corpus, "--output-dir", tmp_path / "out"]
    args += ["--models", tiny_models["tiny32"], "--executor", "ray", "--device", "cpu"]
    result = run_cli(args, tmp_path, env={"PYTHONPATH": f"{fake}:{SRC}"})
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "Error: --executor ray needs Ray, which is not importable (No module named ray); "
        'pip install "embed-collections[ray]"'
    ]


def test_local_run_never_imports_ray(corpus, tiny_models, tmp_path):
    config = make_config(corpus, tmp_path / "out", [tiny_models["tiny32"]], "local")
    script = (
        "import sys; from pathlib import Path; "
        "from embed_collections.record.config import RunConfig; "
        "from embed_collections.engine.options import EngineOptions; "
        "from embed_collections.runner.pipeline import run; "
        f"engine = EngineOptions(device='cpu', backend='torch', show_progress=False).resolved(); "
        f"run(RunConfig(chunked_dir=Path({str(corpus)!r}), output_dir=Path({str(tmp_path)!r}), "
        f"models=({str(config.models[0])!r},), engine=engine, build_index=False)); "
        "print('ray' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_cuda_on_a_cluster_without_gpus_is_a_usage_error(
    ray_session, corpus, tiny_models, tmp_path
):
    config = make_config(corpus, tmp_path / "ray", [tiny_models["tiny32"]], "ray")
    config = replace(config, engine=replace(config.engine, device="cuda"))
    with pytest.raises(Exception) as caught:
        run(config)
    assert caught.value.exit_code == 2
    assert "has none (2 CPUs on 1 node(s))" in str(caught.value)


def test_unreachable_ray_address_fails_before_any_model_loads(corpus, tiny_models, tmp_path):
    need_module("ray")
    with unused_port() as port:  # held, not listening: nobody answers there
        address = f"127.0.0.1:{port}"
        args = ["run", "--chunked-dir", corpus, "--output-dir", tmp_path / "out"]
        args += ["--models", tiny_models["tiny32"], "--executor", "ray", "--ray-address", address]
        result = run_cli(args, tmp_path, env={"PYTHONPATH": str(SRC)})
    assert result.code == 1
    assert (
        result.err.strip()
        .splitlines()[-1]
        .startswith(f"Error: Ray cluster at {address} is unreachable (")
    )
    assert "Acquired" not in result.err


def test_the_cluster_not_the_driver_chooses_the_device():
    gpus = Cluster(address="head:6379", cpus=32, gpus=2, nodes=2, started_here=False)
    cpus = replace(gpus, gpus=0)
    # (an unset --dtype is asked of the cluster's GPUs: dtype_for_capabilities below)
    engine = cluster_engine(EngineOptions(device="", dtype="float16"), gpus)
    assert (engine.device, engine.dtype, engine.max_batch_tokens) == ("cuda", "float16", 65536)
    engine = cluster_engine(EngineOptions(device="cuda", dtype="bfloat16"), gpus)  # no local GPU
    assert (engine.device, engine.dtype) == ("cuda", "bfloat16")
    engine = cluster_engine(EngineOptions(device=""), cpus)
    assert (engine.device, engine.dtype, engine.max_batch_tokens) == (
        "cpu",
        "float32",
        CPU_BATCH_TOKENS,
    )
    with pytest.raises(UsageError, match=r"at head:6379 has none \(32 CPUs on 2 node\(s\)\)"):
        cluster_engine(EngineOptions(device="cuda:1"), cpus)


def test_ray_gpus_get_bf16_where_every_one_has_it_like_local_gpus():
    assert dtype_for_capabilities([8, 9]) == "bfloat16"  # Ampere, Hopper
    assert dtype_for_capabilities([8, 7]) == "float16"  # one T4 in the pool
    assert dtype_for_capabilities([]) == "float16"


def test_shards_hold_similar_lengths_and_every_text_once():
    texts = [("word " * n).strip() for n in (5, 90, 12, 44, 3, 60, 7, 21, 33)]
    shards = cut_shards(texts, actors=1)
    assert sorted(i for shard in shards for i in shard) == list(range(len(texts)))
    assert len(shards) == 3  # ceil(9 / (1 actor x 4 shards per actor)) = 3 texts per shard
    assert [len(texts[i]) for i in shards[0]] == sorted((len(t) for t in texts), reverse=True)[:3]


def test_the_driver_receives_names_not_vectors(ray_session, tiny_models, tmp_path):
    import pickle

    from embed_collections.engine.executors.ray_actors import ShardEmbedder
    from embed_collections.engine.models.resolve import resolve_ensemble

    (spec,) = resolve_ensemble([str(tiny_models["tiny48"])], None, None, False, None, None)
    actor = ray_session.remote(ShardEmbedder).remote(
        0, spec, "torch", "float32", "cpu", 32, 4096, {}
    )
    texts = [f"shard text number {i} about a topic" for i in range(200)]
    digests = [text_digest(t) for t in texts]
    folder = tmp_path / "shards"
    result = ray_session.get(actor.embed.remote(0, texts, digests, str(folder)))
    ray_session.kill(actor)
    shard, name, finite, counts, _ = result
    received = len(pickle.dumps(result))
    vector_bytes = (folder / f"{name}.f32").stat().st_size
    assert vector_bytes == 200 * 48 * 4 and all(finite) and len(counts) == 200
    # what came back before (the same plus every vector) vs now: under 5%, at only 48 dimensions
    assert received / (received + vector_bytes) < 0.05
    with EmbeddingCache(tmp_path / "embeddings.sqlite") as cache:
        assert cache.adopt_shard("fp", folder / f"{name}.json") == 200
        assert cache.missing("fp", digests) == []


WAVE_TEXTS = {  # one collection per wave at --wave-size 6; SHARED crosses waves
    "alpha": [f"Alpha wave note {i} about foxes and dogs." for i in range(6)] + [SHARED],
    "beta": [f"Beta wave step {i}: run command {i} " * (1 + i % 3) for i in range(6)] + [SHARED],
    "gamma": [f"Gamma wave fact {i} on vector search." for i in range(6)],
}


@pytest.fixture(scope="module")
def waves_corpus(tmp_path_factory) -> Path:
    """Three collections, a record without text (skipped) and a file that is not JSON."""
    root = tmp_path_factory.mktemp("ray-waves")
    for name, texts in WAVE_TEXTS.items():
        write_chunks(root / name / f"{name}_chunks.json", texts)
    bad = [{"metadata": {"chunk_id": "beta-bad"}}]  # no text: skipped
    (root / "beta" / "beta2_chunks.json").write_text(json.dumps(bad), encoding="utf-8")
    (root / "gamma" / "broken_chunks.json").write_text("{not json", encoding="utf-8")
    return root


@pytest.mark.slow  # 15 s; waves are also run locally by tests/runner/test_waves.py
def test_a_three_wave_run_starts_each_models_pool_once(
    ray_session, waves_corpus, tiny_models, tmp_path
):
    models = [tiny_models["tiny32"], tiny_models["tiny48"]]
    single = run(make_config(waves_corpus, tmp_path / "single", models, "local"))
    local = run(
        replace(make_config(waves_corpus, tmp_path / "local", models, "local"), wave_size=6)
    )
    config = replace(make_config(waves_corpus, tmp_path / "ray", models, "ray"), wave_size=6)
    summary = run(config)
    assert (single.extra.waves, local.extra.waves, summary.extra.waves) == (1, 3, 3)
    assert summary.exit_code == single.exit_code == 3  # gamma's broken file
    # file errors and skipped records are counted once, not once per pass over the corpus
    counts = ("file_errors", "skipped_records")
    assert (
        [getattr(summary.extra, k) for k in counts]
        == [getattr(single.extra, k) for k in counts]
        == [1, 1]
    )
    assert summary.failed_collections == single.failed_collections
    unique = len({t for texts in WAVE_TEXTS.values() for t in texts})
    pids = set()
    for model in models:
        telemetry = summary.extra.models[str(model)]
        (worker,) = telemetry["workers"]  # one actor, started once for the three waves
        assert telemetry["loads"] == worker["loads"] == 1 and len(worker["pids"]) == 1
        assert worker["shards"] >= 3 and worker["chunks"] == unique
        assert telemetry["chunks_embedded"] == unique
        assert single.extra.models[str(model)]["chunks_embedded"] == unique
        pids.update(worker["pids"])
    assert len(pids) == 2  # each model in its own pool, one after the other
    kinds = [(e["event_type"], e["device"].split("@")[0]) for e in summary.extra.lease_events]
    pool = [("acquire", "ray:1xcpu"), ("acquire", "ray-actor-0")]
    pool += [("release", "ray-actor-0"), ("release", "ray:1xcpu")]
    assert kinds == pool + pool  # one pool per model for the run
    # the store equals the local executor's (ids and vectors), and so do the summary's numbers
    for name, texts in WAVE_TEXTS.items():
        ours = read_points(config.store_path, name)
        theirs = read_points(tmp_path / "local" / "qdrant", name)
        assert sorted(ours) == sorted(theirs) and len(ours) == len(texts)
        for point, (vector, _) in ours.items():
            assert cosine(np.array([vector]), np.array([theirs[point][0]])).min() >= 0.9999
        result, expected = summary.results[name], local.results[name]
        assert result.embedded_now == expected.embedded_now
        assert result.points_in_store == single.results[name].points_in_store == len(texts)
    assert summary.results["beta"].embedded_now == {str(m): 6 for m in models}  # SHARED: alpha's
    assert single.results["beta"].embedded_now == {str(m): 7 for m in models}
    assert all(r.processing_time > 0 for r in summary.results.values())
    log = (config.output_dir / "embedding_v6.log").read_text(encoding="utf-8")
    assert log.count("Processing collection: beta") == 1  # the re-read logs no second header
