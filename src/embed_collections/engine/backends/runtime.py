"""CPU runtimes: a model exported to ONNX, run by onnxruntime or OpenVINO with its fast
tokenizer and numpy pooling."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from embed_collections.engine.backends.base import (
    TokenisedOnce,
    pad_rows,
)
from embed_collections.engine.backends.export import (
    ACTIVATIONS,
    counting_tokenizer,
    ensure_exported,
    import_openvino,
    read_manifest,
    runtime_installed,
    sequence_limit,
    split_backend,
)
from embed_collections.engine.backends.kinds import ONNX, RUNTIMES
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.errors import ModelError

log = logging.getLogger(__name__)


INT8_SAMPLE = 64  # texts compared with the fp32 twin, to tell users what int8 costs


class RuntimeBackend(TokenisedOnce):
    """A model exported to ONNX and run on CPU by onnxruntime or OpenVINO, pooled with numpy."""

    def __init__(self, spec: ModelSpec, backend: str = ONNX.name, threads: int | None = None):
        self.runtime, self.quantize = split_backend(backend)
        self.spec, self.backend, self.name, self.threads = spec, backend, spec.name, threads
        self.dim = spec.settings.truncate_dim or spec.dim or 0
        self.max_seq_length = spec.settings.max_seq_length or 512
        self.reference: RuntimeBackend | None = None  # the fp32 twin an int8 backend checks with
        self.cosines: list[float] = []
        self.tokenised = {}  # ids from `token_counts` or the workers' parent, until batched

    def load(self, device: str = "cpu") -> None:
        if not device.startswith("cpu"):
            raise ModelError(f'Backend "{self.backend}" runs on CPU only, not {device}')
        if not runtime_installed(self.runtime):
            extra = f"pip install 'embed-collections[{self.runtime}]'"
            raise ModelError(f'Backend "{self.backend}" needs {RUNTIMES[self.runtime]} ({extra})')
        folder = ensure_exported(self.spec, self.backend)
        self.manifest = manifest = read_manifest(folder)
        self.max_seq_length = sequence_limit(self.spec, manifest)
        self.dim = self.spec.settings.truncate_dim or int(manifest["dim"])
        self.counter = counting_tokenizer(self.spec, folder)
        self.steps = [load_step(folder, step) for step in manifest["steps"]]
        opener = open_onnxruntime if self.runtime == ONNX.name else open_openvino
        self.session = opener(folder, self.threads)
        if self.quantize:
            self.reference = RuntimeBackend(self.spec, self.runtime, self.threads)
            self.reference.load(device)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Untruncated token counts (special tokens included), used to sort and to report cuts;
        each text's ids are kept for its batch (`TokenisedOnce`)."""
        return self.count_and_keep(texts)

    def feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The model's inputs for a batch, padded to its longest text as the export expects."""
        padding = self.manifest["padding"]
        arrays = pad_rows(
            self.rows(texts), padding["pad_id"], padding["pad_type_id"],
            padding["direction"] == "left",
        )  # fmt: skip
        return {name: arrays[name] for name in self.manifest["inputs"]}

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.infer(texts)
        if self.reference is not None:
            sample = texts[: INT8_SAMPLE - len(self.cosines)]
            self.cosines.extend(cosines(vectors[: len(sample)], self.reference.infer(sample)))
            if len(self.cosines) >= INT8_SAMPLE:
                self.report_agreement()
        return vectors

    def infer(self, texts: list[str]) -> np.ndarray:
        """Vectors of texts, without the int8 agreement sampling of `embed`."""
        arrays = self.feeds(texts)
        vectors = pool(self.session(arrays), arrays["attention_mask"], self.manifest["pooling"])
        for step in self.steps:
            vectors = step(vectors)
        vectors = vectors[:, : self.spec.settings.truncate_dim or None]
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def report_agreement(self) -> None:
        """Tell the user what int8 costs: cosine to fp32 on the first (longest) texts embedded."""
        if self.cosines and self.reference is not None:
            log.warning(
                "%s: %s agrees with %s fp32 at mean cosine %.4f, min %.4f over %d texts "
                "(int8 pays on CPUs with VNNI or AMX; drop --quantize for exact vectors)",
                *(self.name, self.backend, self.runtime),
                *(float(np.mean(self.cosines)), float(np.min(self.cosines)), len(self.cosines)),
            )
        self.reference = None

    def unload(self) -> None:
        self.report_agreement()
        self.session = None
        self.tokenised.clear()


def open_onnxruntime(folder: Path, threads: int | None):
    """An onnxruntime CPU session on every available core unless told otherwise."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1  # its default: physical cores
    options.log_severity_level = 3
    cpu = ["CPUExecutionProvider"]  # required to be explicit where a GPU build is installed
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=cpu)
    return lambda feeds: session.run(["last_hidden_state"], feeds)[0]


def open_openvino(folder: Path, threads: int | None):
    """An OpenVINO CPU request; f32 forced, since CPUs with bf16 units otherwise default to bf16."""
    ov = import_openvino()

    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:  # a CPU worker's share: pinned threads of two workers would land on one core
        config.update({"INFERENCE_NUM_THREADS": str(threads), "ENABLE_CPU_PINNING": "NO"})
    compiled = ov.Core().compile_model(folder / "model.xml", "CPU", config)
    return lambda feeds: compiled(feeds)[0]


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence-transformers' Pooling in numpy, padding excluded the same way."""
    if mode == "cls":
        return hidden[:, 0].copy()
    weights = mask.astype(hidden.dtype)
    if mode == "max":
        return np.where(weights[..., None] > 0, hidden, np.float32(-1e9)).max(axis=1)
    counts = np.clip(weights.sum(axis=1, keepdims=True), 1e-9, None)
    total = np.einsum("bsh,bs->bh", hidden, weights)
    return total / (np.sqrt(counts) if mode == "mean_sqrt_len_tokens" else counts)


def load_step(folder: Path, step: dict):
    """A post-pooling step (Dense or Normalize) as a numpy function."""
    if step["kind"] == "normalize":
        return lambda v: v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
    weights = np.load(folder / step["file"])
    weight, activation = weights["weight"], ACTIVATIONS[step["activation"]]
    bias = weights["bias"] if "bias" in weights else np.float32(0)
    return lambda v: activation(v @ weight.T + bias)


def cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    norms = np.clip(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12, None)
    return [float(c) for c in np.sum(a * b, axis=1) / norms]
