"""Preflight: decide each model's backend once, visibly, before any embedding starts.

`auto` on CPU keeps the installed runtimes (AUTO_ORDER) whose vectors match torch fp32 on a few
check texts; that check exports the model (ONNX, OpenVINO) and loads torch, so it runs here, once
per model and runtime version, and its result is remembered beside the export. Among torch and
the runtimes that agree, `auto` then takes the fastest on a few batches of the run's own texts,
timed on this machine, and remembers that choice per machine and model beside the export too (the
rates are logged). Fingerprints are computed from the decided backend and only hash.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import time

import numpy as np

from embed_collections.atomic import write_json_atomic
from embed_collections.engine.backends import BACKENDS, create_backend
from embed_collections.engine.backends.base import default_dtype
from embed_collections.engine.backends.export import (
    CHECK_TEXTS,
    LAYOUT,
    LOSSLESS_COSINE,
    export_root,
    runtime_installed,
)
from embed_collections.engine.backends.kinds import (
    AUTO,
    AUTO_ORDER,
    INT8,
    INT8_ORDER,
    KINDS,
    ONNX,
    REFERENCE_BACKEND,
    RUNTIMES,
    quantized,
)
from embed_collections.engine.backends.runtime import RuntimeBackend, cosines
from embed_collections.engine.backends.transformer import SentenceTransformerBackend
from embed_collections.engine.executors.batches import count_tokens, run_batches
from embed_collections.engine.models.folders import fingerprint_folder
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.engine.options import CPU_BATCH_TOKENS, EngineOptions
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


MEASURE_TEXTS = 96  # texts timed per candidate backend: a few CPU batches
CHOICE_FILE = "auto-choice.json"


def machine_key() -> str:
    """What makes a speed measurement valid: this machine's CPU, its cores and the libraries."""
    versions = []
    for package in (kind.package for kind in KINDS.values()):
        try:
            versions.append(f"{package}={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    cpu = platform.processor() or platform.machine()
    return "|".join([platform.node(), cpu, f"{os.cpu_count()} cpus", *versions])


def measure_rate(spec: ModelSpec, backend_name: str, texts: list[str]) -> float:
    """Texts per second of one backend on these texts (sorted, batched by the CPU default token
    budget as in a run), after one warm-up batch."""
    backend = create_backend(spec, backend_name, "float32")
    backend.load("cpu")
    try:
        counts = count_tokens(backend, texts)
        order = sorted(range(len(texts)), key=lambda i: -counts[i])
        inputs, sorted_counts = [texts[i] for i in order], [counts[i] for i in order]
        backend.embed(inputs[:8])  # warm-up: first-call allocations, lazy compilation
        from embed_collections.engine.telemetry import DeviceTelemetry

        started = time.perf_counter()
        run_batches(
            backend, inputs, sorted_counts, CPU_BATCH_TOKENS, 0, DeviceTelemetry("cpu"),
            lambda rows, vectors: None, lambda row: None, spec.name,
        )  # fmt: skip
        return len(texts) / max(time.perf_counter() - started, 1e-9)
    finally:
        backend.unload()


def fastest_backend(spec: ModelSpec, candidates: list[str], texts: list[str]) -> str:
    """The fastest candidate on this machine for this model, measured once and remembered."""
    record_file = export_root() / fingerprint_folder(spec.path) / CHOICE_FILE
    key = machine_key()
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    same = (record.get("machine"), record.get("candidates"), record.get("batch_tokens"))
    if same == (key, candidates, CPU_BATCH_TOKENS):  # a new default budget measures again
        log.info(
            "%s: auto backend %s, measured earlier on this machine (%s)",
            spec.name, record["choice"], rates_text(record["rates"]),
        )  # fmt: skip
        return str(record["choice"])
    sample = (texts or list(CHECK_TEXTS)) * (MEASURE_TEXTS // max(1, len(texts)) + 1)
    sample = sample[:MEASURE_TEXTS]
    rates: dict[str, float] = {}
    for name in candidates:
        try:
            rates[name] = round(measure_rate(spec, name, sample), 1)
        except ModelError as error:  # a runtime that cannot run this model is not a choice
            log.warning("%s: auto could not time %s (%s)", spec.name, name, error)
            rates[name] = 0.0
    choice = max(candidates, key=lambda name: rates[name])
    log.info("%s: auto measured %s: %s is fastest", spec.name, rates_text(rates), choice)
    write_json_atomic(
        record_file,
        {"machine": key, "candidates": candidates, "rates": rates, "choice": choice,
         "texts": len(sample), "batch_tokens": CPU_BATCH_TOKENS},
    )  # fmt: skip
    return choice


def rates_text(rates: dict[str, float]) -> str:
    """`torch 210.4 texts/s, onnx 260.1 texts/s`."""
    return ", ".join(f"{name} {rate:g} texts/s" for name, rate in rates.items())


def resolve_backend(
    spec: ModelSpec | None,
    backend: str,
    device: str,
    quantize: str = "",
    dtype: str = "",
    sample: list[str] | None = None,
) -> str:
    """The concrete backend (torch, onnx, openvino, onnx-int8 or openvino-int8) for a request.
    `auto`: torch on accelerators; on CPU the fastest, on `sample` (the run's texts) on this
    machine, of torch and the installed runtimes that passed the one-time agreement check for
    this model (without a spec, no check is made: the first installed runtime)."""
    cpu, fp32 = (device or "cpu").startswith("cpu"), dtype in ("", "float32")
    explicit = backend in RUNTIMES
    misplaced = bool(quantize) and (not (explicit or backend == AUTO) or not cpu or not fp32)
    problems = (
        (quantize not in ("", INT8), f"--quantize {quantize} is not supported (choose int8)"),
        (backend != AUTO and backend not in BACKENDS, f"Unknown backend {backend} (see --help)"),
        (explicit and not cpu, f"--backend {backend} runs on CPU only (use torch on {device})"),
        (explicit and not fp32, f"--backend {backend} runs float32 only (drop --dtype {dtype})"),
        (misplaced, "--quantize int8 needs CPU, float32 and --backend onnx, openvino or auto"),
        (
            quantize and not runtime_installed(ONNX.name),
            "--quantize int8 needs onnxruntime installed",
        ),
    )
    for problem in (problem for found, problem in problems if found):
        raise UsageError(problem)
    if spec is not None and spec.static:
        if explicit:
            raise UsageError(
                f'Model "{spec.name}" is a static embedding model; --backend {backend} runs '
                f"{LAYOUT} only (use --backend auto or torch: static models are fast on torch)"
            )
        return REFERENCE_BACKEND  # a token-bag model: nothing for a runtime to speed up
    if explicit:
        return quantized(backend) if quantize else backend
    if backend != AUTO:
        return backend  # torch, or another registered backend named by the user
    if not cpu or not fp32:
        return REFERENCE_BACKEND  # auto on an accelerator, or in a precision only torch runs
    if quantize:
        return quantized(next(r for r in INT8_ORDER if runtime_installed(r)))
    installed = [runtime for runtime in AUTO_ORDER if runtime_installed(runtime)]
    if spec is None:
        return installed[0] if installed else REFERENCE_BACKEND
    candidates = [
        REFERENCE_BACKEND,
        *(runtime for runtime in installed if runtime_agrees(spec, runtime)),
    ]
    if len(candidates) == 1:
        return REFERENCE_BACKEND
    return fastest_backend(spec, candidates, sample or [])


def decide_backends(
    specs: list[ModelSpec], options: EngineOptions, sample: list[str] | None = None
) -> list[str]:
    """Each model's concrete backend, logged once with the reason it was chosen (`sample`: some
    of the run's texts, which `auto` times the candidates on)."""
    decided = []
    for spec in specs:
        prefix = spec.settings.document_prefix
        backend = resolve_backend(
            spec, options.backend, options.device, options.quantize, options.dtype,
            [prefix + text for text in sample or []],
        )  # fmt: skip
        log.info("%s: backend %s (%s)", spec.name, backend, reason(spec, backend, options))
        decided.append(backend)
    return decided


def reason(spec: ModelSpec, backend: str, options: EngineOptions) -> str:
    """Why a backend was chosen, for the log: `checked against torch: cosine 1.000000`."""
    if options.backend != AUTO:
        return f"--backend {options.backend}" + (" --quantize int8" if options.quantize else "")
    if backend in RUNTIMES:
        low = agreement(spec, backend).get("min_cosine", 0.0)
        return f"auto, checked against torch: cosine {low:.6f}; fastest measured"
    if (
        options.device.startswith("cpu")
        and options.dtype in ("", "float32")
        and any(runtime_installed(r) and runtime_agrees(spec, r) for r in AUTO_ORDER)
    ):
        return "auto; fastest measured"
    if backend.endswith(quantized("")):
        return "auto with --quantize int8"
    if not options.device.startswith("cpu"):
        return f"auto on {options.device}"
    if options.dtype not in ("", "float32"):
        return f"auto in {options.dtype}"
    return "auto; no runtime installed or none matched torch"


def backend_for_queries(backend: str, dtype: str, run_device: str, device: str) -> tuple[str, str]:
    """The backend and precision a run's model embeds queries with on `device`: the run's, where
    `device` can use them (the same kind of device, a runtime installed), else torch in the
    device's default precision (a run made on GPUs, searched from a laptop)."""
    if device.startswith("cuda") != run_device.startswith("cuda") or not dtype:
        dtype = default_dtype(device)
    runtime = backend.partition("-")[0]
    if runtime in RUNTIMES and (device != "cpu" or not runtime_installed(runtime)):
        backend = REFERENCE_BACKEND
    return backend, dtype
