"""The Ray executor: a model's pending texts embedded by a pool of Ray actors, cached by the driver.

A `RaySession` (the `local_executor.ModelSession` interface) per model per run; the pipeline picks
it with `--executor ray`. The driver keeps the run's logic (dedup, cache, model-major order,
combine, store); for each wave it cuts the model's pending unique texts into shards, and the
model's pool of actors (one per GPU with `num_gpus=1`, or one per node on CPU), started at the
first wave with work and kept until the session closes, loads the model once per actor for the
whole run and embeds the shards. Each actor writes a finished shard
as files under the cache folder (`cache.write_shard`: raw float32 rows plus a manifest; shared
storage on a multi-node cluster) and returns only its name, token counts and which rows are
finite; the driver indexes the rows file in place as a cache segment (`adopt_shard`), so vectors
never travel through Ray's object store. A killed driver indexes the finished shard files on its
next run instead of embedding them again, and a killed actor is restarted by Ray, which re-runs
its shard (`max_restarts`, `max_task_retries`), so no scheduler of ours is involved.

Ray Core (`ActorPool.map_unordered`) rather than Ray Data: the pending texts are already in the
driver's memory and every shard must be indexed by the driver's cache, so a Dataset would add an
execution engine (streaming executor, object spilling, `map_batches` ~25% slower than a plain
loop, ray #44905) around the same actor class, and would hide which actor embedded which shard,
which the summary reports. The pool is about a hundred lines.

Tokenisation happens in the actors, not on the driver: one driver tokenises about 1,900 texts/s
(docs/measurements.md), 15 hours for 100 M chunks. The driver orders texts by character length
to cut shards of similar lengths; each actor sorts its shard by token count and returns the counts.
Joining the cluster is `ray_cluster.py`. Ray is imported only inside functions: the local
executor never imports it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from embed_collections.engine.backends import create_backend
from embed_collections.engine.cache import EmbeddingCache, write_shard
from embed_collections.engine.executors.batches import (
    TokenBudget,
    progress_bar,
    report_non_finite,
    run_batches,
    start_telemetry,
)
from embed_collections.engine.executors.local import ModelSession
from embed_collections.engine.executors.ray_cluster import connect, import_ray, ray_error
from embed_collections.engine.lease import LeaseEvent
from embed_collections.engine.lifeline import die_with_driver
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.engine.options import EngineOptions, default_batch_tokens
from embed_collections.engine.telemetry import DeviceTelemetry, ModelTelemetry, Timer
from embed_collections.errors import (
    LeaseTimeoutError,
    ModelError,
    UsageError,
)

log = logging.getLogger(__name__)

SHARD_TEXTS = 1024  # most texts per shard: ~1.5 MB of 384-d vectors back per shard
SHARDS_PER_ACTOR = 4  # at least this many shards per actor, so a slow actor does not hold the tail
MAX_RESTARTS = 3  # Ray restarts a dead actor this often and re-runs its unfinished shards
# Fault injection for tests: a marker path; the first actor to get a shard creates the marker and
# SIGKILLs its own process mid-shard (once: the restarted actor sees the marker and goes on).
KILL_ONCE_ENV = "EMBED_COLLECTIONS_RAY_KILL_ONCE"
FORWARDED_ENV = ("EMBED_COLLECTIONS_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")


@dataclass(frozen=True)
class PoolPlan:
    """How many actors, and what each asks Ray for."""

    actors: int
    num_cpus: float
    num_gpus: float


def plan_pool(device: str) -> PoolPlan:
    """One actor per GPU on cuda; on CPU one per node, each taking the smallest node's CPUs."""
    ray = import_ray()
    if device.startswith("cuda"):
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus < 1:
            raise UsageError(f"--device {device}: the Ray cluster has no GPUs (use --device cpu)")
        return PoolPlan(actors=gpus, num_cpus=1, num_gpus=1)
    cpus = [
        float(node["Resources"]["CPU"])
        for node in ray.nodes()
        if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) >= 1
    ]
    if not cpus:
        raise UsageError("The Ray cluster has no CPUs to run actors on")
    return PoolPlan(actors=len(cpus), num_cpus=math.floor(min(cpus)), num_gpus=0)


def cut_shards(inputs: list[str], actors: int) -> list[list[int]]:
    """Row indices in shards of similar length, longest first (an OOM shows early)."""
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    size = max(1, min(SHARD_TEXTS, math.ceil(len(order) / (actors * SHARDS_PER_ACTOR))))
    return [order[start : start + size] for start in range(0, len(order), size)]


class ShardEmbedder:
    """A Ray actor: loads one model once on its device and embeds shards of texts."""

    def __init__(
        self,
        index: int,
        spec: ModelSpec,
        backend: str,
        dtype: str,
        device: str,
        batch_size: int,
        max_batch_tokens: int,
        env: dict[str, str],
        driver: tuple[str, int] = ("", 0),
    ):
        os.environ.update(env)
        die_with_driver(*driver)
        self.index, self.name = index, spec.name
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        # Inside Ray a GPU actor sees only its own GPU (CUDA_VISIBLE_DEVICES): it is cuda:0.
        self.device = "cuda" if device.startswith("cuda") else device
        # One budget for every shard: an out-of-memory halving outlives the shard that hit it.
        self.budget = TokenBudget(max_batch_tokens or default_batch_tokens(self.device))
        with Timer() as timer:
            self.backend = create_backend(spec, backend, dtype)
            self.backend.load(self.device)
        self.load_seconds = timer.seconds

    def describe(self) -> dict[str, Any]:
        """Who this actor is: index, process, node, device, load time, model shape."""
        import ray

        context = ray.get_runtime_context()
        gpus = ",".join(str(g) for g in ray.get_gpu_ids())
        return {
            "actor": self.index,
            "pid": os.getpid(),
            "node": context.get_node_id()[:12],
            "node_ip": ray.util.get_node_ip_address(),
            "device": f"{self.device} (GPU {gpus})" if gpus else self.device,
            "load_seconds": self.load_seconds,
            "restarted": bool(context.was_current_actor_reconstructed),
            "dim": self.backend.dim,
            "max_seq_length": self.backend.max_seq_length,
        }

    def embed(
        self, shard: int, texts: list[str], digests: list[bytes], folder: str
    ) -> tuple[int, str, list[bool], list[int], dict]:
        """Embed a shard and leave it in `folder` as a shard file (`cache.write_shard`); return
        only its name, which rows are finite (NaN rows: non-finite even in float32), untruncated
        token counts and statistics, so vectors never travel through Ray to the driver. The
        shared batch loop does the batching by token budget, the out-of-memory back-off and the
        float32 re-run (`batches.run_batches`)."""
        started = time.perf_counter()
        counts = self.backend.token_counts(texts)
        order = sorted(range(len(texts)), key=lambda i: -counts[i])
        vectors = np.full((len(texts), self.backend.dim), np.nan, dtype=np.float32)
        stats = DeviceTelemetry(device=self.device)

        def deliver(rows: list[int], block: np.ndarray) -> None:
            vectors[[order[r] for r in rows]] = block
            kill_once_after_first_batch()

        run_batches(
            self.backend,
            [texts[i] for i in order],
            [counts[i] for i in order],
            self.max_batch_tokens,
            self.batch_size,
            stats,
            deliver,
            lambda row: None,  # left NaN: the driver reports and skips it
            self.name,
            self.budget,
        )
        summary: dict[str, Any] = {
            "batches": stats.batches,
            "padded_tokens": stats.padded_tokens,
            "oom_retries": stats.oom_retries,
        }
        summary.update(self.describe(), seconds=time.perf_counter() - started)
        name = f"{uuid.uuid4().hex}"
        write_shard(Path(folder), name, digests, vectors, counts)
        finite: list[bool] = np.isfinite(vectors).all(axis=1).tolist()  # type: ignore[assignment]
        return shard, name, finite, counts, summary


def kill_once_after_first_batch() -> None:
    """Test fault hook: SIGKILL this actor's process mid-shard, once per marker file."""
    marker = os.environ.get(KILL_ONCE_ENV)
    if not marker or Path(marker).exists():
        return
    Path(marker).write_text(str(os.getpid()), encoding="utf-8")
    os.kill(os.getpid(), signal.SIGKILL)


def forwarded_env() -> dict[str, str]:
    """The driver's settings the actors need (offline mode, export and cache folders, hooks)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


class RaySession(ModelSession):
    """One model's actor pool for a whole run: started at the first call with texts to embed,
    kept for every later wave, killed at `close` (which frees its GPUs: Ray's resource is the
    lease). `telemetry.loads` counts actor starts (Ray's restarts included) over the session."""

    holds_device = True

    def __init__(
        self, spec: ModelSpec, fingerprint: str, cache: EmbeddingCache, options: EngineOptions
    ):
        super().__init__(spec, fingerprint, cache, options)
        self.ray = import_ray()
        if not self.ray.is_initialized():
            connect(None)
        self.actors: list = []
        self.described: list[dict] = []
        self.workers: dict[int, dict] = {}  # per actor, over the whole session
        self.pool_label = ""
        cache.adopt_finished_shards(fingerprint)  # a killed run's finished shards are not redone

    def embed(self, texts: dict[bytes, str]) -> ModelTelemetry:
        """Embed one wave's missing texts on the pool (started now if this is its first work)."""
        spec, fingerprint, cache, options = self.spec, self.fingerprint, self.cache, self.options
        telemetry = start_telemetry(spec, fingerprint, cache, options, f"ray:{options.device}")
        missing = cache.missing(fingerprint, texts)
        telemetry.cache_hits = len(texts) - len(missing)
        telemetry.cache_misses = len(missing)
        if not missing:
            log.info("%s: all %d texts cached, model not loaded", spec.name, len(texts))
            return self.record(telemetry)
        loads_before = sum(w["loads"] for w in self.workers.values())
        if not self.actors:
            self.start(telemetry)
        info = self.described[0]
        telemetry.dim, telemetry.max_seq_length = info["dim"], info["max_seq_length"]
        log.info(
            "%s: embedding %d texts (%d cached) on %d Ray actor(s) (%s)",
            spec.name,
            len(missing),
            telemetry.cache_hits,
            len(self.actors),
            options.device,
        )
        with Timer() as embed_timer:
            run_pool(
                self.ray,
                self.actors,
                spec,
                fingerprint,
                missing,
                texts,
                cache,
                telemetry,
                options,
                self.workers,
            )
        telemetry.embed_seconds = embed_timer.seconds
        telemetry.loads = sum(w["loads"] for w in self.workers.values()) - loads_before
        self.record(telemetry)
        assert self.telemetry is not None
        self.telemetry.workers = sorted(self.workers.values(), key=lambda w: w["actor"])
        return telemetry

    def start(self, telemetry: ModelTelemetry) -> None:
        """Create the pool and wait until every actor holds its resources and its model."""
        ray, spec, options = self.ray, self.spec, self.options
        plan = plan_pool(options.device)
        actor_class = ray.remote(
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS,
            scheduling_strategy="SPREAD",
        )(ShardEmbedder)
        self.pool_label = f"ray:{plan.actors}x{options.device}"
        env = forwarded_env()
        created = time.perf_counter()
        self.actors = [
            actor_class.remote(
                i,
                spec,
                telemetry.backend,
                options.dtype,
                options.device,
                options.batch_size,
                options.max_batch_tokens,
                env,
                (socket.gethostname(), os.getpid()),
            )  # fmt: skip
            for i in range(plan.actors)
        ]
        self.described = start_pool(
            ray, self.actors, spec, options, self.events, self.pool_label, created
        )
        for info in self.described:
            record_worker(self.workers, info)
        telemetry.load_seconds = max(d["load_seconds"] for d in self.described)
        telemetry.lease_wait_seconds = next(
            e for e in self.events if e.device == self.pool_label
        ).wait_seconds
        info = self.described[0]
        self.cache.register_model(
            self.fingerprint,
            info["dim"],
            {"model": spec.name, "path": str(spec.path), "max_seq_length": info["max_seq_length"]},
        )

    def close(self) -> None:
        """Kill the pool (frees its GPUs) and record the releases."""
        for actor in self.actors:
            self.ray.kill(actor)
        if self.actors:
            release_events(self.events, self.spec.name, self.pool_label)
        self.actors = []


def start_pool(
    ray: Any,
    actors: list,
    spec: ModelSpec,
    options: EngineOptions,
    events: list[LeaseEvent],
    pool_label: str,
    created: float,
) -> list[dict]:
    """Wait for every actor to hold its resources and its model; record the acquire events."""
    try:
        described = ray.get([a.describe.remote() for a in actors], timeout=options.lease_timeout)
    except ray.exceptions.GetTimeoutError as error:
        raise LeaseTimeoutError(
            f"Ray actors for model {spec.name} not started after {options.lease_timeout:g}s (the "
            f"cluster lacks free {options.device} resources); wait, or raise --lease-timeout"
        ) from error
    except ray.exceptions.RayError as error:
        raise ModelError(
            f'Model "{spec.name}" could not start on the Ray cluster: {ray_error(error)}'
        ) from error
    waited = time.perf_counter() - created
    events.append(LeaseEvent("acquire", spec.name, pool_label, now(), waited))
    for d in described:
        wait = max(0.0, waited - d["load_seconds"])
        events.append(LeaseEvent("acquire", spec.name, actor_label(d), now(), wait))
    return described


def actor_label(info: dict) -> str:
    """How an actor appears in lease events: `ray-actor-0@node/device`."""
    return f"ray-actor-{info['actor']}@{info['node']}/{info['device']}"


def release_events(events: list[LeaseEvent], model: str, pool_label: str) -> None:
    """A release for every actor that acquired, then one for the pool."""
    held = [e.device for e in events if e.event_type == "acquire" and e.device != pool_label]
    for label in held:
        events.append(LeaseEvent("release", model, label, now(), 0.0))
    if any(e.device == pool_label for e in events):
        events.append(LeaseEvent("release", model, pool_label, now(), 0.0))


def now() -> str:
    return datetime.now().isoformat(timespec="microseconds")


def run_pool(
    ray: Any,
    actors: list,
    spec: ModelSpec,
    fingerprint: str,
    missing: list[bytes],
    texts: dict[bytes, str],
    cache: EmbeddingCache,
    telemetry: ModelTelemetry,
    options: EngineOptions,
    workers: dict[int, dict],
) -> None:
    """Hand out shards, cache each one as it comes back; per-actor telemetry goes to `workers`."""
    from ray.util import ActorPool

    prefix = spec.settings.document_prefix
    inputs = [prefix + texts[d] for d in missing]
    shards = cut_shards(inputs, len(actors))
    limit = telemetry.max_seq_length
    folder = cache.shard_dir(fingerprint)
    pool = ActorPool(actors)
    results = pool.map_unordered(
        lambda actor, shard: actor.embed.remote(
            shard,
            [inputs[i] for i in shards[shard]],
            [missing[i] for i in shards[shard]],
            str(folder),
        ),
        list(range(len(shards))),
    )
    with progress_bar(spec, len(inputs), options) as bar:
        while True:
            try:
                shard, name, finite, counts, stats = next(results)
            except StopIteration:
                break
            except ray.exceptions.RayError as error:
                raise ModelError(
                    f'Model "{spec.name}" failed on the Ray cluster after {MAX_RESTARTS} actor '
                    f"restarts: {ray_error(error)} (finished shards are cached; re-run to resume)"
                ) from error
            rows = shards[shard]
            report_non_finite(telemetry, [inputs[r] for r, ok in zip(rows, finite) if not ok])
            kept = cache.adopt_shard(fingerprint, folder / f"{name}.json")
            used = [min(c, limit) for c in counts]
            telemetry.chunks_embedded += kept
            telemetry.tokens_embedded += sum(used)
            telemetry.padded_tokens += stats["padded_tokens"]
            telemetry.truncated_chunks += sum(1 for c in counts if c > limit)
            telemetry.truncated_tokens += sum(max(0, c - limit) for c in counts)
            telemetry.batches += stats["batches"]
            telemetry.oom_retries += stats["oom_retries"]
            record_worker(workers, stats, len(rows), sum(used))
            bar.update(len(rows))


def record_worker(workers: dict[int, dict], stats: dict, chunks: int = 0, tokens: int = 0) -> None:
    """Add a shard (or, with no chunks, the actor's start) to its actor's telemetry.

    A new process id means Ray restarted the actor (and loaded the model again there).
    """
    worker = workers.setdefault(
        stats["actor"],
        {
            "actor": stats["actor"],
            "node": stats["node"],
            "node_ip": stats["node_ip"],
            "device": stats["device"],
            "pids": [],
            "loads": 0,
            "shards": 0,
            "chunks": 0,
            "tokens": 0,
            "seconds": 0.0,
        },
    )
    if stats["pid"] not in worker["pids"]:
        worker["pids"].append(stats["pid"])
        worker["loads"] += 1
    worker["restarted"] = worker.get("restarted", False) or stats["restarted"]
    if not chunks:
        return
    worker["shards"] += 1
    worker["chunks"] += chunks
    worker["tokens"] += tokens
    worker["seconds"] = round(worker["seconds"] + stats["seconds"], 3)
