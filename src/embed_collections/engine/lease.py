"""Exclusive per-device lease: one model at a time on a device, across processes, with telemetry."""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from embed_collections.engine.devices import physical_key
from embed_collections.engine.models.folders import user_cache_home
from embed_collections.errors import LeaseTimeoutError

logger = logging.getLogger(__name__)

T = TypeVar("T")

_POLL_SECONDS = 0.1
_EVENT_TYPES = ("acquire", "release")


@dataclass(frozen=True)
class LeaseEvent:
    """One acquire or release of a device lease, as recorded for telemetry."""

    event_type: str
    model: str
    device: str
    timestamp: str
    wait_seconds: float
    peak_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.event_type not in _EVENT_TYPES:
            raise ValueError(f"LeaseEvent event_type must be one of {_EVENT_TYPES}")

    def to_dict(self) -> dict[str, Any]:
        """Return the event as a JSON-ready dict."""
        return asdict(self)


def default_lease_dir() -> Path:
    """Return the per-user folder holding the device lock files (shared by every run)."""
    return user_cache_home() / "leases"


def holder_record(model: str) -> dict[str, Any]:
    """What a lease file says about its holder: who (pid, command), for which model, since when."""
    return {
        "pid": os.getpid(),
        "model": model,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv else "",
        "since": datetime.now().isoformat(timespec="seconds"),
    }


def describe_holder(info: dict[str, Any]) -> str:
    """`held by pid 123 (embed-collections run ...) for model X since 2026-01-01T10:00:00`."""
    command = f" ({info['command']})" if info.get("command") else ""
    since = f" since {info['since']}" if info.get("since") else ""
    return f"held by pid {int(info['pid'])}{command} for model {info['model']}{since}"


def _uses_cuda(device: str) -> bool:
    # torch is imported only here so that importing this module stays cheap.
    if not device.startswith("cuda"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


class DeviceLease:
    """Context manager holding the exclusive inter-process lease on one device for one model."""

    def __init__(
        self,
        model: str,
        device: str,
        lease_dir: Path | None = None,
        max_wait_time: float = 600.0,
        check_interval: float = 30.0,
        required_memory_bytes: int | None = None,
        events: list[LeaseEvent] | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.lease_dir = Path(lease_dir) if lease_dir is not None else default_lease_dir()
        self.max_wait_time = max_wait_time
        self.check_interval = check_interval
        self.required_memory_bytes = required_memory_bytes
        self._events = events if events is not None else []
        self._fd: int | None = None
        self._cuda = False
        self._held: list[object] = []

    @property
    def events(self) -> list[LeaseEvent]:
        """Acquire/release events; the list passed in, so several leases can share one."""
        return self._events

    @property
    def lock_path(self) -> Path:
        """Lock file of this device, shared by every process using the same lease folder.

        A GPU's lock is named after the physical device (UUID or PCI bus id), so `cuda`, `cuda:0`
        and a remapped CUDA_VISIBLE_DEVICES all meet on one lock.
        """
        if re.fullmatch(r"cuda(:\d+)?", self.device):
            name = physical_key(self.device)
        else:
            name = self.device.replace(":", "_").replace("/", "_")
        return self.lease_dir / f"{name}.lock"

    @property
    def is_held(self) -> bool:
        """Whether this lease is currently acquired."""
        return self._fd is not None

    def acquire(self) -> None:
        """Wait (up to `max_wait_time`) for the device, then record an "acquire" event."""
        if self._fd is not None:
            return
        start = time.monotonic()
        deadline = start + self.max_wait_time
        self.lease_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._lock(fd, start, deadline)
            # Truncate-and-write only after locking, so waiters never lose the holder's name.
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder_record(self.model)).encode(), 0)
            self._cuda = _uses_cuda(self.device)
            if self._cuda:
                self._wait_for_memory(start, deadline)
        except BaseException:
            os.close(fd)  # closing the descriptor drops the flock
            raise
        self._fd = fd
        waited = time.monotonic() - start
        self._record("acquire", waited, None)
        logger.info(
            "GPU Lease: Acquired for %s on %s (waited %.1fs)", self.model, self.device, waited
        )

    def hold(self, obj: T) -> T:
        """Make the lease own `obj` (the loaded model) so release drops it; returns `obj`."""
        self._held.append(obj)
        return obj

    def release(self) -> None:
        """Drop held objects, free device memory, unlock, and record a "release" event."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self._held.clear()
            gc.collect()
            peak = self._peak_memory_bytes()
        finally:
            # The lock file is never deleted: unlinking flock files lets two holders coexist.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._record("release", 0.0, peak)
        logger.info("GPU Lease: Released for %s on %s", self.model, self.device)

    def __enter__(self) -> DeviceLease:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _record(self, event_type: str, wait_seconds: float, peak: int | None) -> None:
        now = datetime.now().isoformat(timespec="microseconds")
        self._events.append(
            LeaseEvent(event_type, self.model, self.device, now, wait_seconds, peak)
        )

    def _wait(
        self, ready: Callable[[], bool], blocker: Callable[[], str], start: float, deadline: float
    ) -> None:
        """Poll `ready` until it holds; `blocker` says what is in the way, for logs and errors."""
        next_log = start + self.check_interval
        while not ready():
            now = time.monotonic()
            if now >= deadline:
                raise LeaseTimeoutError(
                    f"Device lease on {self.device} for model {self.model} not acquired after "
                    f"{now - start:.1f}s ({blocker()}). Wait for the device to free up, "
                    "or use --lease-timeout to wait longer."
                )
            if now >= next_log:
                logger.warning(
                    "Waiting for lease on %s for model %s (%s, %.0fs elapsed)",
                    self.device, self.model, blocker(), now - start,
                )  # fmt: skip
                next_log += self.check_interval
            time.sleep(min(_POLL_SECONDS, deadline - now))

    def _lock(self, fd: int, start: float, deadline: float) -> None:
        def try_lock() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        def holder() -> str:
            try:
                return describe_holder(json.loads(os.pread(fd, 4096, 0)))
            except (OSError, ValueError, KeyError, TypeError):
                return "held by another process"

        self._wait(try_lock, holder, start, deadline)

    def _wait_for_memory(self, start: float, deadline: float) -> None:
        import torch

        needed = self.required_memory_bytes or 0
        last_free = [0]  # the reading that failed, so messages quote the value that was compared

        def enough() -> bool:
            last_free[0] = int(torch.cuda.mem_get_info(self.device)[0]) if needed else 0
            return last_free[0] >= needed

        def shortfall() -> str:
            return f"only {_gib(last_free[0])} free, {_gib(needed)} required"

        self._wait(enough, shortfall, start, deadline)
        torch.cuda.reset_peak_memory_stats(self.device)

    def _peak_memory_bytes(self) -> int:
        if self._cuda:
            import torch

            torch.cuda.empty_cache()
            return int(torch.cuda.max_memory_allocated(self.device))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is bytes on macOS and KiB on Linux.
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024
