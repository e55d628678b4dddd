"""Joining a Ray cluster for `--executor ray`: connect (or start a local one), check its devices,
decide the engine options its GPUs allow, route Ray's own log lines into the run's log.

Ray is imported only inside these functions: the local executor never imports it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from embed_collections.engine.options import EngineOptions, default_batch_tokens
from embed_collections.errors import EmbedCollectionsError, UsageError

log = logging.getLogger(__name__)

EXTRA = "embed-collections[ray]"


def import_ray() -> Any:
    """Ray itself, or a usage error naming the extra that installs it."""
    try:
        import ray
    except ImportError as error:
        raise UsageError(
            f'--executor ray needs Ray, which is not importable ({error}); pip install "{EXTRA}"'
        ) from error
    return ray


@dataclass(frozen=True)
class Cluster:
    """What the driver sees of the Ray cluster it joined."""

    address: str
    cpus: float
    gpus: float
    nodes: int
    started_here: bool

    def describe(self) -> dict[str, Any]:
        """For the summary."""
        return {"address": self.address, "cpus": self.cpus, "gpus": self.gpus, "nodes": self.nodes}


def probe_address(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the address, when nothing listens at a host:port Ray address."""
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and friends: Ray resolves them itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise EmbedCollectionsError(
            f"Ray cluster at {address} is unreachable ({error.strerror or error}); start it with "
            "`ray start --head` there, or fix --ray-address / RAY_ADDRESS"
        ) from error


class RayLogForwarder(logging.Handler):
    """Hands Ray's own log records to this module's logger: the run's log, in its format."""

    def emit(self, record: logging.LogRecord) -> None:
        level = min(record.levelno, logging.INFO)  # Ray's start-up notices are not our warnings
        log.log(level, "Ray: %s", record.getMessage())


@contextmanager
def ray_logs_routed() -> Iterator[None]:
    """While Ray starts, its logger writes through ours instead of straight to stderr."""
    ray_logger = logging.getLogger("ray")
    handlers, propagate = ray_logger.handlers[:], ray_logger.propagate
    ray_logger.handlers[:] = [RayLogForwarder()]
    ray_logger.propagate = False
    try:
        yield
    finally:
        ray_logger.handlers[:] = handlers
        ray_logger.propagate = propagate


def connect(address: str | None) -> Cluster:
    """Join the Ray cluster at `address` (else RAY_ADDRESS, else start one sized to this machine).

    An already initialised Ray (a test session, a notebook) is used as it is.
    """
    ray = import_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    started = False
    if not ray.is_initialized():
        if address:
            probe_address(address)
        try:
            with ray_logs_routed():
                ray.init(
                    address=address or "local",  # not a cluster found on disk: the one asked for
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
        except (ConnectionError, RuntimeError, TimeoutError) as error:
            raise EmbedCollectionsError(
                f"Ray cluster at {address or 'a new local instance'} could not be joined "
                f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
                "check --ray-address / RAY_ADDRESS"
            ) from error
        started = not address
    resources = ray.cluster_resources()
    alive = [node for node in ray.nodes() if node.get("Alive")]
    return Cluster(
        address=address or ray.get_runtime_context().gcs_address,
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        nodes=len(alive),
        started_here=started,
    )


def cluster_engine(engine: EngineOptions, cluster: Cluster) -> EngineOptions:
    """The engine options for the cluster: cuda when it has GPUs (unless a device was asked)."""
    if engine.device.startswith("cuda") and cluster.gpus < 1:
        raise UsageError(
            f"--device {engine.device} asks for GPUs, but the Ray cluster at {cluster.address} has "
            f"none ({cluster.cpus:g} CPUs on {cluster.nodes} node(s)); use --device cpu or add "
            "GPU nodes"
        )
    device = engine.device or ("cuda" if cluster.gpus >= 1 else "cpu")
    if device.startswith("cuda"):
        # The GPUs are the cluster's: this machine may have none, so they are asked themselves.
        return replace(
            engine,
            device="cuda",
            dtype=engine.dtype or cluster_gpu_dtype(int(cluster.gpus), engine.lease_timeout),
            max_batch_tokens=engine.max_batch_tokens or default_batch_tokens("cuda"),
        )
    return replace(engine, device=device).resolved()


def gpu_capability() -> int:
    """The major compute capability of the GPU a Ray task was given (it sees it as cuda:0)."""
    import torch

    return int(torch.cuda.get_device_capability(0)[0])


def dtype_for_capabilities(majors: list[int]) -> str:
    """bf16 when every GPU has it (compute capability 8.0+, as locally), else fp16 (T4, V100)."""
    return "bfloat16" if majors and min(majors) >= 8 else "float16"


def cluster_gpu_dtype(gpus: int, timeout: float) -> str:
    """The half precision for the cluster's GPUs, asked of them (one probe task per GPU, spread);
    fp16, which every generation runs, when they do not answer in time."""
    ray = import_ray()
    probe = ray.remote(num_gpus=1, scheduling_strategy="SPREAD")(gpu_capability)
    try:
        majors = ray.get([probe.remote() for _ in range(max(1, gpus))], timeout=timeout)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as error:
        log.warning("GPU capability of the Ray cluster unknown (%s): float16", ray_error(error))
        return "float16"
    dtype = dtype_for_capabilities(majors)
    log.info("Ray cluster GPUs: compute capability %s, %s", sorted(set(majors)), dtype)
    return dtype


@contextmanager
def cluster_session(address: str | None, engine: EngineOptions) -> Iterator[EngineOptions]:
    """Preflight before any model loads: join Ray, check the device; yields the engine options
    the cluster's devices decide."""
    cluster = connect(address)
    log.info(
        "Ray cluster %s: %g CPUs, %g GPUs on %d node(s)",
        cluster.address,
        cluster.cpus,
        cluster.gpus,
        cluster.nodes,
    )
    try:
        yield cluster_engine(engine, cluster)
    finally:
        if cluster.started_here:
            import_ray().shutdown()


def describe_cluster() -> dict[str, Any]:
    """The joined cluster's address and resources, for the summary ({} when Ray is not up)."""
    ray = import_ray()
    if not ray.is_initialized():
        return {}
    return connect(None).describe()


def ray_error(error: BaseException) -> str:
    """The first line of a Ray error's cause, for a one-line message."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__
