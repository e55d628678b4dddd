"""Per-model throughput telemetry, and a wall-clock timer, reported in the run summary."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

from embed_collections.engine.backends.kinds import REFERENCE_BACKEND

MAX_TIMELINE = 120  # points of a device's throughput curve kept in the summary


@dataclass
class DeviceTelemetry:
    """What one device (one worker) did for one model."""

    device: str
    chunks: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    truncated_chunks: int = 0
    truncated_tokens: int = 0
    batches: int = 0
    oom_retries: int = 0
    non_finite_retries: int = 0
    seconds: float = 0.0
    peak_memory_bytes: int | None = None
    # [seconds since this device started embedding, chunks done], thinned to MAX_TIMELINE points:
    # the run report draws throughput over time from it
    timeline: list[list[float]] = field(default_factory=list)

    def mark(self, seconds: float) -> None:
        """Note the chunks done so far at `seconds` into the embedding (after each batch)."""
        self.timeline.append([round(seconds, 3), self.chunks])
        if len(self.timeline) > MAX_TIMELINE:
            last = [] if len(self.timeline) % 2 else [self.timeline[-1]]
            self.timeline = self.timeline[::2] + last

    def add(self, other: DeviceTelemetry) -> None:
        """Accumulate another wave (or unit) of the same device."""
        seconds, chunks = self.seconds, self.chunks  # the later wave continues from here
        for item in fields(self):
            mine, theirs = getattr(self, item.name), getattr(other, item.name)
            if item.name == "timeline":
                shifted = [[t + seconds, c + chunks] for t, c in theirs]
                self.timeline = (mine + shifted)[-MAX_TIMELINE:]
            elif item.name == "peak_memory_bytes":
                if theirs is not None:
                    self.peak_memory_bytes = max(mine or 0, theirs)
            elif isinstance(mine, (int, float)):
                setattr(self, item.name, mine + theirs)


MAX_REPORTED_TEXTS = 20


@dataclass
class ModelTelemetry:
    """What one model cost in a run; summed over the waves of a run with `add`."""

    model: str
    fingerprint: str
    device: str = "cpu"
    backend: str = REFERENCE_BACKEND
    dtype: str = "float32"
    dim: int = 0
    max_seq_length: int = 0
    loads: int = 0
    load_seconds: float = 0.0
    lease_wait_seconds: float = 0.0
    embed_seconds: float = 0.0
    chunks_embedded: int = 0
    tokens_embedded: int = 0
    padded_tokens: int = 0
    truncated_chunks: int = 0
    truncated_tokens: int = 0
    batches: int = 0
    oom_retries: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    peak_memory_bytes: int | None = None
    workers: list[dict] = field(default_factory=list)  # per worker (Ray actor): where, how much
    non_finite_chunks: int = 0  # texts whose vector stayed NaN/Inf in float32: not cached
    non_finite_texts: list[str] = field(default_factory=list)  # their first characters
    devices: list[DeviceTelemetry] = field(default_factory=list)

    def absorb(self, device: DeviceTelemetry) -> None:
        """Add one device's work to the totals and to the per-device list."""
        self.chunks_embedded += device.chunks
        self.tokens_embedded += device.tokens
        self.padded_tokens += device.padded_tokens
        self.truncated_chunks += device.truncated_chunks
        self.truncated_tokens += device.truncated_tokens
        self.batches += device.batches
        self.oom_retries += device.oom_retries
        if device.peak_memory_bytes is not None:
            self.peak_memory_bytes = max(self.peak_memory_bytes or 0, device.peak_memory_bytes)
        self.merge_device(device)

    def merge_device(self, device: DeviceTelemetry) -> None:
        """Add a device's numbers to its entry in `devices` (a new entry the first time)."""
        for mine in self.devices:
            if mine.device == device.device:
                mine.add(device)
                return
        self.devices.append(DeviceTelemetry(**asdict(device)))

    def add(self, other: ModelTelemetry) -> None:
        """Accumulate another wave's numbers of the same model."""
        for item in fields(self):
            mine, theirs = getattr(self, item.name), getattr(other, item.name)
            if item.name == "workers":
                self.workers = self.workers + list(theirs)
            elif item.name == "devices":
                for device in theirs:
                    self.merge_device(device)
            elif item.name == "non_finite_texts":
                self.non_finite_texts = (mine + theirs)[:MAX_REPORTED_TEXTS]
            elif item.name == "peak_memory_bytes":
                if theirs is not None:
                    setattr(self, item.name, max(mine or 0, theirs))
            elif isinstance(mine, (int, float)) and not isinstance(mine, bool):
                if item.name in ("dim", "max_seq_length"):
                    setattr(self, item.name, theirs or mine)
                else:
                    setattr(self, item.name, mine + theirs)

    def to_dict(self) -> dict:
        """The stored numbers plus the rates derived from them."""
        data = asdict(self)
        seconds = self.embed_seconds
        data["chunks_per_second"] = round(self.chunks_embedded / seconds, 2) if seconds else None
        data["tokens_per_second"] = round(self.tokens_embedded / seconds, 1) if seconds else None
        data["padding_efficiency"] = (
            round(self.tokens_embedded / self.padded_tokens, 4) if self.padded_tokens else None
        )
        for key in ("load_seconds", "lease_wait_seconds", "embed_seconds"):
            data[key] = round(data[key], 3)
        for device in data["devices"]:
            device["seconds"] = round(device["seconds"], 3)
            seconds = device["seconds"]
            device["chunks_per_second"] = round(device["chunks"] / seconds, 2) if seconds else None
        return data


class Timer:
    """Context manager measuring wall seconds into `.seconds`."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
