"""How models run (device, precision, backend, batching, lease, progress): the engine's options."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from embed_collections.backends import default_device, default_dtype


@dataclass(frozen=True)
class EngineOptions:
    """How models run: device, precision, backend, batching, lease and progress settings."""

    device: str = ""
    dtype: str = ""
    backend: str = "auto"
    quantize: str = ""
    batch_size: int = 0
    lease_dir: Path | None = None
    lease_timeout: float = 600.0
    check_interval: float = 30.0
    show_progress: bool = True

    def resolved(self) -> EngineOptions:
        """Fill device-dependent defaults: cuda if present, fp16 there, batch 128 vs 32 on CPU."""
        device = self.device or default_device()
        return replace(
            self,
            device=device,
            dtype=self.dtype or default_dtype(device),
            batch_size=self.batch_size or (128 if device.startswith("cuda") else 32),
        )
