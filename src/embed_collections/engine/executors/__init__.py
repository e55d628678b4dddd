"""Where models run: the table of executors, by name (`--executor NAME`).

A new executor is a `ModelSession` subclass (`local.py`; `embed(texts) -> ModelTelemetry`,
`close()`, `holds_device`) sharing `batches.run_batches`, and one `Executor` line here. An
executor that runs on a cluster also says how to join it (`start`) and describe it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from embed_collections.engine.executors.local import LocalSession, ModelSession
from embed_collections.engine.executors.ray_actors import RaySession
from embed_collections.engine.executors.ray_cluster import cluster_session, describe_cluster
from embed_collections.engine.options import EngineOptions
from embed_collections.errors import UsageError


@dataclass(frozen=True)
class Executor:
    """An executor: its session class and, for a cluster, how to join it and describe it."""

    name: str
    session: type[ModelSession]
    # (address, engine options) -> the options resolved by the cluster, held for the run
    start: Callable[[str | None, EngineOptions], AbstractContextManager[EngineOptions]] | None = (
        None
    )
    describe: Callable[[], dict[str, Any]] | None = None

    @property
    def on_cluster(self) -> bool:
        """Devices, leases and precision are the cluster's, not this machine's."""
        return self.start is not None


LOCAL = Executor("local", LocalSession)
RAY = Executor("ray", RaySession, start=cluster_session, describe=describe_cluster)
EXECUTORS = {executor.name: executor for executor in (LOCAL, RAY)}
DEFAULT_EXECUTOR = LOCAL.name
ADDRESS_EXECUTOR = RAY.name  # what a cluster address (`--ray-address`) implies


def executor_for(name: str) -> Executor:
    """The executor called `name`, or a usage error listing them."""
    if name not in EXECUTORS:
        raise UsageError(f'Unknown executor "{name}". Choose one of {", ".join(EXECUTORS)}')
    return EXECUTORS[name]
