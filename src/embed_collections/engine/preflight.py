"""Preflight: decide each model's backend once, visibly, before any embedding starts.

`auto` on CPU tries the installed runtimes (AUTO_ORDER) and keeps the first whose vectors match
torch fp32 on a few check texts; that check exports the model (ONNX, OpenVINO) and loads torch,
so it runs here, once per model and runtime version, and its result is remembered beside the
export. Fingerprints are computed from the decided backend and only hash.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging

import numpy as np

from embed_collections.atomic import write_json_atomic
from embed_collections.engine.backends import SentenceTransformerBackend
from embed_collections.engine.models import ModelSpec, fingerprint_folder
from embed_collections.engine.options import EngineOptions
from embed_collections.engine.runtimes import (
    AUTO_ORDER,
    CHECK_TEXTS,
    INT8_ORDER,
    LAYOUT,
    LOSSLESS_COSINE,
    RUNTIMES,
    RuntimeBackend,
    cosines,
    export_root,
    runtime_installed,
)
from embed_collections.errors import ModelError, UsageError

log = logging.getLogger(__name__)


def measure_agreement(spec: ModelSpec, runtime: str) -> dict:
    """Cosines of a runtime's vectors to torch fp32 on CHECK_TEXTS; a refused model fails."""
    try:
        candidate = RuntimeBackend(spec, runtime)
        candidate.load("cpu")
        ours = candidate.embed(list(CHECK_TEXTS))
    except ModelError as error:
        return {"passed": False, "reason": str(error)}
    reference = SentenceTransformerBackend(spec, "float32")
    reference.load("cpu")
    values = cosines(ours, reference.embed(list(CHECK_TEXTS)))
    passed = min(values) >= LOSSLESS_COSINE
    return {"passed": passed, "min_cosine": min(values), "mean_cosine": float(np.mean(values))}


def agreement(spec: ModelSpec, runtime: str) -> dict:
    """The once-per-model check that a runtime reproduces torch fp32, remembered with the export."""
    record_file = export_root() / fingerprint_folder(spec.path) / f"check-{runtime}.json"
    version = importlib.metadata.version(RUNTIMES[runtime])
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    if record.get("runtime_version") != version:  # checked again when the runtime changes
        log.info("%s: checking %s against torch (once per model and runtime)", spec.name, runtime)
        record = {**measure_agreement(spec, runtime), "runtime_version": version}
        write_json_atomic(record_file, record)
        low = record.get("min_cosine", 0)
        problem = record.get("reason") or f"{runtime} differs from torch (min cosine {low:.6f})"
        if not record["passed"]:
            log.warning(
                "%s: %s; auto uses torch (delete %s to check again)",
                *(spec.name, problem, record_file),
            )
    return record


def runtime_agrees(spec: ModelSpec, runtime: str) -> bool:
    """True when the runtime passed the agreement check for this model."""
    return bool(agreement(spec, runtime)["passed"])


def resolve_backend(
    spec: ModelSpec | None, backend: str, device: str, quantize: str = "", dtype: str = ""
) -> str:
    """The concrete backend (torch, onnx, openvino, onnx-int8 or openvino-int8) for a request.
    `auto`: torch on accelerators; on CPU the first installed runtime of AUTO_ORDER that passed
    the one-time agreement check for this model, else torch (without a spec, no check is made)."""
    cpu, fp32 = (device or "cpu").startswith("cpu"), dtype in ("", "float32")
    explicit = backend in RUNTIMES
    misplaced = bool(quantize) and (backend == "torch" or not cpu or not fp32)
    problems = (
        (quantize not in ("", "int8"), f"--quantize {quantize} is not supported (choose int8)"),
        (backend not in ("auto", "torch", *RUNTIMES), f"Unknown backend {backend} (see --help)"),
        (explicit and not cpu, f"--backend {backend} runs on CPU only (use torch on {device})"),
        (explicit and not fp32, f"--backend {backend} runs float32 only (drop --dtype {dtype})"),
        (misplaced, "--quantize int8 needs CPU, float32 and --backend onnx, openvino or auto"),
        (quantize and not runtime_installed("onnx"), "--quantize int8 needs onnxruntime installed"),
    )
    for problem in (problem for found, problem in problems if found):
        raise UsageError(problem)
    if spec is not None and spec.static:
        if explicit:
            raise UsageError(
                f'Model "{spec.name}" is a static embedding model; --backend {backend} runs '
                f"{LAYOUT} only (use --backend auto or torch: static models are fast on torch)"
            )
        return "torch"  # a token-bag model: nothing for a runtime to speed up
    if explicit:
        return backend + ("-int8" if quantize else "")
    if backend == "torch" or not cpu or not fp32:
        return "torch"  # auto on an accelerator, or in a precision only torch runs
    if quantize:
        return next(r for r in INT8_ORDER if runtime_installed(r)) + "-int8"
    installed = [runtime for runtime in AUTO_ORDER if runtime_installed(runtime)]
    if spec is None:
        return installed[0] if installed else "torch"
    return next((runtime for runtime in installed if runtime_agrees(spec, runtime)), "torch")


def decide_backends(specs: list[ModelSpec], options: EngineOptions) -> list[str]:
    """Each model's concrete backend, logged once with the reason it was chosen."""
    decided = []
    for spec in specs:
        backend = resolve_backend(
            spec, options.backend, options.device, options.quantize, options.dtype
        )
        log.info("%s: backend %s (%s)", spec.name, backend, reason(spec, backend, options))
        decided.append(backend)
    return decided


def reason(spec: ModelSpec, backend: str, options: EngineOptions) -> str:
    """Why a backend was chosen, for the log: `checked against torch: cosine 1.000000`."""
    if options.backend != "auto":
        return f"--backend {options.backend}" + (" --quantize int8" if options.quantize else "")
    if backend in RUNTIMES:
        low = agreement(spec, backend).get("min_cosine", 0.0)
        return f"auto, checked against torch: cosine {low:.6f}"
    if backend.endswith("-int8"):
        return "auto with --quantize int8"
    if not options.device.startswith("cpu"):
        return f"auto on {options.device}"
    if options.dtype not in ("", "float32"):
        return f"auto in {options.dtype}"
    return "auto; no runtime installed or none matched torch"
