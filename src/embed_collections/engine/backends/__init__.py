"""How a model runs: the table of backends (by the names in `kinds.py`) and the one factory.

A new backend is a `Backend` subclass (`base.py`) in a module of this room, one `BackendKind` in
`kinds.py` and one line in `BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable

from embed_collections.engine.backends.base import Backend
from embed_collections.engine.backends.kinds import (
    ONNX,
    OPENVINO,
    REFERENCE_BACKEND,
    TORCH,
    is_reference,
)
from embed_collections.engine.backends.runtime import RuntimeBackend
from embed_collections.engine.backends.static import StaticBackend
from embed_collections.engine.backends.transformer import SentenceTransformerBackend
from embed_collections.engine.models.specs import ModelSpec


def torch_backend(spec: ModelSpec, backend: str, dtype: str | None, threads: int | None):
    """sentence-transformers on torch; a token-bag model runs there only (`StaticBackend`)."""
    return StaticBackend(spec, dtype) if spec.static else SentenceTransformerBackend(spec, dtype)


def runtime_backend(spec: ModelSpec, backend: str, dtype: str | None, threads: int | None):
    """An ONNX export run by onnxruntime or OpenVINO, float32 or `-int8`."""
    return RuntimeBackend(spec, backend, threads)


BACKENDS: dict[str, Callable[[ModelSpec, str, str | None, int | None], Backend]] = {
    TORCH.name: torch_backend,
    ONNX.name: runtime_backend,
    OPENVINO.name: runtime_backend,
}

__all__ = ["BACKENDS", "REFERENCE_BACKEND", "create_backend"]


def create_backend(
    spec: ModelSpec,
    backend: str = REFERENCE_BACKEND,
    dtype: str | None = None,
    threads: int | None = None,
) -> Backend:
    """The backend for a model, not loaded yet: a decided name (`backends.choice`), `auto`
    meaning torch here, `onnx-int8` the quantized runtime. `threads`: the CPU threads a runtime
    may use (a CPU worker's share of the cores; torch's are set per process)."""
    name = REFERENCE_BACKEND if is_reference(backend) else backend.partition("-")[0]
    return BACKENDS.get(name, runtime_backend)(spec, backend, dtype, threads)
