"""How models run (devices, precision, backend, batching, lease, progress): the engine's options."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from embed_collections.engine.backends.base import default_dtype
from embed_collections.engine.backends.kinds import AUTO
from embed_collections.engine.devices import check_dtype, is_cuda, parse_devices

# Tokens (padded) per forward pass. CPU: 2048 (8 texts of 256 tokens) is 5-19% faster than
# 8192 with every backend on 2 cores, the attention scores of a batch staying in cache and less
# padding (bench/README.md, "Token budget on CPU"; bench/cpu_budget.py measures another machine).
# CUDA: 65536 keeps a T4 (16 GB) well inside memory for BERT-base at 512 tokens in fp16; the
# out-of-memory back-off covers the rest. bench/gpu.py sweeps it.
CPU_BATCH_TOKENS = 2048
CUDA_BATCH_TOKENS = 65536


def default_batch_tokens(device: str) -> int:
    """The token budget per forward pass for a device."""
    return CUDA_BATCH_TOKENS if is_cuda(device) else CPU_BATCH_TOKENS


@dataclass(frozen=True)
class EngineOptions:
    """How models run: devices, precision, backend, batching, lease and progress settings."""

    device: str = ""
    dtype: str = ""
    backend: str = AUTO
    quantize: str = ""
    batch_size: int = 0
    max_batch_tokens: int = 0
    lease_dir: Path | None = None
    lease_timeout: float = 600.0
    check_interval: float = 30.0
    stall_timeout: float = 900.0  # seconds without progress on any busy worker: the model fails
    show_progress: bool = True

    @property
    def devices(self) -> list[str]:
        """The concrete devices (`cuda` expanded to every visible GPU)."""
        return parse_devices(self.device)

    def resolved(self) -> EngineOptions:
        """Fill device-dependent defaults (every GPU if present, bf16/fp16 there, token budget).

        Bad device lists and `--dtype bfloat16` on a GPU without it are usage errors here.
        """
        devices = parse_devices(self.device)
        check_dtype(devices, self.dtype)
        return replace(
            self,
            device=",".join(devices),
            dtype=self.dtype or default_dtype(devices[0]),
            max_batch_tokens=self.max_batch_tokens or default_batch_tokens(devices[0]),
        )
