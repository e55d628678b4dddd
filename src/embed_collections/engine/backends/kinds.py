"""The backends by name: the one place a backend's name, the package that runs it and its rank in
`auto`'s choice are spelled (`engine/backends/__init__.py` maps them to their classes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendKind:
    """A backend's facts: its name, the package it needs, whether it runs an ONNX export on CPU."""

    name: str
    package: str
    runtime: bool = False  # an exported model run on CPU (float32, or int8 with --quantize)


TORCH = BackendKind("torch", "torch")
ONNX = BackendKind("onnx", "onnxruntime", runtime=True)
OPENVINO = BackendKind("openvino", "openvino", runtime=True)
KINDS = {kind.name: kind for kind in (TORCH, ONNX, OPENVINO)}

AUTO = "auto"  # measure on the run's texts (CPU), torch elsewhere
REFERENCE_BACKEND = TORCH.name  # sentence-transformers: every other backend is checked against it
INT8 = "int8"  # the one `--quantize` choice, a suffix of the runtime's name (`onnx-int8`)
RUNTIMES = {kind.name: kind.package for kind in KINDS.values() if kind.runtime}
AUTO_ORDER = (OPENVINO.name, ONNX.name)  # fastest lossless first (bench/backends.py)
INT8_ORDER = (ONNX.name, OPENVINO.name)  # fastest int8 first (bench/backends.py)
CHOICES = (AUTO, *KINDS)  # what `--backend` accepts


def quantized(runtime: str) -> str:
    """`onnx` -> `onnx-int8`."""
    return f"{runtime}-{INT8}"


def is_reference(backend: str) -> bool:
    """True for torch and for `auto` before a choice is made (both run the model folder itself)."""
    return backend in (AUTO, REFERENCE_BACKEND)
