"""A sentence-transformers model exported once to ONNX (torch.onnx, not optimum, which pins
transformers < 5) for the CPU runtimes. Other module layouts than LAYOUT are refused.

Exports live in `<user cache>/exported/<model folder fingerprint>/<backend>/` (model folders may
be read-only), each built in a temporary folder and renamed into place, so none is ever half
written.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from embed_collections.engine.backends.base import (
    CountingTokenizer,
)
from embed_collections.engine.backends.kinds import CHOICES, INT8, ONNX, RUNTIMES, quantized
from embed_collections.engine.backends.transformer import SentenceTransformerBackend
from embed_collections.engine.models.folders import fingerprint_folder, user_cache_home
from embed_collections.engine.models.specs import ModelSpec
from embed_collections.errors import EmbedCollectionsError, ModelError

log = logging.getLogger(__name__)


def runtime_installed(runtime: str) -> bool:
    """True when the runtime's package (onnxruntime or openvino) can be imported."""
    return importlib.util.find_spec(RUNTIMES[runtime]) is not None


def split_backend(backend: str) -> tuple[str, str]:
    """`onnx-int8` -> (`onnx`, `int8`); a ModelError for names that are not runtime backends."""
    runtime, _, quantize = backend.partition("-")
    if runtime not in RUNTIMES or quantize not in ("", INT8):
        choices = ", ".join([*CHOICES, *map(quantized, RUNTIMES)])
        raise ModelError(f'Backend "{backend}" is not available (choose {choices})')
    return runtime, quantize


def import_openvino() -> Any:
    """OpenVINO without its usage telemetry: `import openvino` sends an event from a thread
    pool whose sender forks, which has hung a finished run at exit; blocking the telemetry
    package makes OpenVINO use its own no-op stub (unless this process imported it already)."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens")
LAYOUT = f"Transformer + Pooling ({', '.join(POOLING_MODES)}) (+ Dense) (+ Normalize)"
ACTIVATIONS = {"Identity": np.positive, "Tanh": np.tanh}  # np.positive: a copy, unchanged
TEXT_METHOD = ("forward", "last_hidden_state")
LOSSLESS_COSINE = 0.9999
MANIFEST = "manifest.json"
FORMAT = 2  # of the export folders; a change rebuilds them
EXPORT_DIR_ENV = "EMBED_COLLECTIONS_EXPORT_DIR"
CHECK_TEXTS = (  # short, code, long (truncated): where a wrong mask or truncation shows
    *("Docling converts PDF and HTML documents into Markdown.", "short"),
    *("def embed(texts):\n    return model.encode(texts)\n", "Vector search: " + "tokens " * 400),
)


def export_root() -> Path:
    """Where exported models are cached (EMBED_COLLECTIONS_EXPORT_DIR overrides the default)."""
    if os.environ.get(EXPORT_DIR_ENV):
        return Path(os.environ[EXPORT_DIR_ENV])
    return user_cache_home() / "exported"


def refuse(spec: ModelSpec, problem: str) -> ModelError:
    message = f"{problem}; the onnx and openvino backends run {LAYOUT} only (use --backend torch)"
    return ModelError(f'Model "{spec.name}" {message}')


def check_layout(spec: ModelSpec) -> None:
    """Refuse, before any export, model folders whose modules the runtimes cannot run."""
    modules_file = spec.path / "modules.json"
    if not modules_file.exists():
        return  # a plain transformers folder: sentence-transformers adds mean pooling
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in json.loads(modules_file.read_text())]
    if kinds[:2] != ["Transformer", "Pooling"] or not set(kinds[2:]) <= {"Dense", "Normalize"}:
        raise refuse(spec, f"has modules {' + '.join(kinds) or '(none)'}")


def ensure_exported(spec: ModelSpec, backend: str) -> Path:
    """The cached export for a backend, built once (fp32 ONNX first, the others from it)."""
    folder = export_root() / fingerprint_folder(spec.path) / backend
    if read_manifest(folder).get("format") == FORMAT:
        return folder
    check_layout(spec)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{backend}-", dir=folder.parent))
    log.info("%s: building the %s model once, in %s", spec.name, backend, folder)
    try:
        build_export(spec, backend, staging)
        shutil.rmtree(folder, ignore_errors=True)  # an older format, or a broken leftover
        staging.rename(folder)
    except Exception as error:  # exporters raise anything from TypeError to RuntimeError
        if read_manifest(folder).get("format") == FORMAT:
            return folder  # a concurrent run renamed its copy in first
        if isinstance(error, EmbedCollectionsError):
            raise
        problem = (str(error) or type(error).__name__).splitlines()[0]
        message = f"could not be exported for {backend}: {problem} (use --backend torch)"
        raise ModelError(f'Model "{spec.name}" {message}') from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def build_export(spec: ModelSpec, backend: str, folder: Path) -> None:
    """Write one backend's files into `folder`, the manifest last (its presence means complete)."""
    runtime, quantize = split_backend(backend)
    if backend == ONNX.name:
        manifest = export_onnx(spec, folder)
    else:
        source = ensure_exported(
            spec, quantized(ONNX.name) if quantize and runtime != ONNX.name else ONNX.name
        )
        for side_file in source.iterdir():
            if side_file.name not in (MANIFEST, "model.onnx"):
                shutil.copy2(side_file, folder / side_file.name)
        manifest = read_manifest(source)
        if runtime == ONNX.name:
            quantize_onnx(source / "model.onnx", folder / "model.onnx")
        else:
            ov = import_openvino()
            converted = ov.Core().read_model(source / "model.onnx")
            # save_model compresses weights to fp16 by default: not lossless, so switched off
            ov.save_model(converted, folder / "model.xml", compress_to_fp16=False)
    manifest.update(backend=backend, format=FORMAT)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def read_manifest(folder: Path) -> dict:
    """What an export holds ({} when absent); written last, so present means complete."""
    return json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).exists() else {}


def quantize_onnx(source: Path, target: Path) -> None:
    """Dynamic int8 of the MatMul weights, per channel: per tensor gave mean cosine 0.935 to fp32
    on Docling chunks (min 0.888), per channel 0.993 (min 0.982)."""
    from onnxruntime.quantization import quantize_dynamic  # int8 weights by default

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every tensor on the root logger
    try:
        quantize_dynamic(source, target, per_channel=True, op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)


def export_onnx(spec: ModelSpec, folder: Path) -> dict:
    """Trace the transformer to ONNX (dynamic batch and sequence), save what numpy needs, and
    return the manifest. Loaded without the run's overrides, so one export serves every
    --max-seq-length and --truncate-dim."""
    import torch

    plain = replace(spec, settings=replace(spec.settings, max_seq_length=None, truncate_dim=None))
    reference = SentenceTransformerBackend(plain, "float32")
    reference.load("cpu")
    transformer, pooling, *rest = list(reference.model)
    steps = [describe_step(spec, module, index, folder) for index, module in enumerate(rest, 2)]
    text = (getattr(transformer, "modality_config", None) or {}).get("text")  # ST 6
    if text and (text.get("method"), text.get("method_output_name")) != TEXT_METHOD:
        raise refuse(spec, f"embeds text with {text}")
    tokenizer = transformer.tokenizer
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise refuse(spec, "has no fast tokenizer")
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))

    auto_model = transformer.auto_model.eval()
    if hasattr(auto_model, "set_attn_implementation"):  # eager traces faster than sdpa: 47 vs 36/s
        auto_model.set_attn_implementation("eager")
    accepted = inspect.signature(auto_model.forward).parameters
    extra = [n for n in ["token_type_ids"] if n in tokenizer.model_input_names and n in accepted]
    names = ["input_ids", "attention_mask", *extra]

    class Encoder(torch.nn.Module):  # keywords in: transformers 5 takes no positional extras
        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs)))[0]

    encoder = Encoder()
    encoder.model = auto_model
    sample = tokenizer(["a short text", "a longer text, padded differently"], padding=True)
    arguments = tuple(torch.tensor(sample[name]) for name in names)
    outputs = ["last_hidden_state"]
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, *outputs]}
    options: dict[str, Any] = {"input_names": names, "output_names": outputs, "dynamic_axes": axes}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False  # the TorchScript exporter: no onnxscript needed
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            encoder, arguments, str(folder / "model.onnx"), opset_version=17, **options
        )
    return {
        "inputs": names,
        "pooling": pooling_mode(spec, pooling),
        "steps": steps,
        "max_seq_length": reference.max_seq_length,
        "dim": reference.dim,
        "do_lower_case": bool(getattr(transformer, "do_lower_case", False)),
        "padding": {  # keyword arguments of tokenizers' enable_padding
            "direction": getattr(tokenizer, "padding_side", "right"),
            "pad_id": int(tokenizer.pad_token_id or 0),
            "pad_type_id": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
            "pad_token": tokenizer.pad_token or "",
        },
    }


def pooling_mode(spec: ModelSpec, pooling) -> str:
    """The pooling as one name, from sentence-transformers 6 (`pooling_mode`) or 5 (a getter)."""
    mode = getattr(pooling, "pooling_mode", None)
    if not isinstance(mode, str) and hasattr(pooling, "get_pooling_mode_str"):
        mode = pooling.get_pooling_mode_str()
    if mode not in POOLING_MODES:
        raise refuse(spec, f"pools with {mode}")
    return str(mode)


def describe_step(spec: ModelSpec, module, index: int, folder: Path) -> dict:
    """A module after pooling as a manifest entry (Dense weights saved for numpy), or refuse it."""
    kind = type(module).__name__
    activation = type(getattr(module, "activation_function", None)).__name__
    if kind == "Normalize":
        return {"kind": "normalize"}
    if kind != "Dense" or activation not in ACTIVATIONS or getattr(module, "use_residual", False):
        raise refuse(spec, f"has module {index} {kind} (activation {activation})")
    tensors = {"weight": module.linear.weight, "bias": module.linear.bias}  # bias may be None
    arrays = {k: t.detach().float().numpy() for k, t in tensors.items() if t is not None}
    np.savez(folder / f"dense_{index}.npz", **arrays)
    return {"kind": "dense", "file": f"dense_{index}.npz", "activation": activation}


def sequence_limit(spec: ModelSpec, manifest: dict) -> int:
    """The tokens a runtime backend embeds of a text: the model's setting, else the export's."""
    return spec.settings.max_seq_length or int(manifest["max_seq_length"])


def export_tokenizer(spec: ModelSpec, backend: str) -> CountingTokenizer:
    """The tokenizer of a runtime backend's export (built if missing), without the model: the
    device workers' parent counts and tokenises with it for the workers."""
    return counting_tokenizer(spec, ensure_exported(spec, backend))


def counting_tokenizer(spec: ModelSpec, folder: Path) -> CountingTokenizer:
    """An export's tokenizer (its `tokenizers` file: no transformers import), as it will run."""
    manifest = read_manifest(folder)
    return CountingTokenizer.from_file(
        folder / "tokenizer.json", sequence_limit(spec, manifest), bool(manifest["do_lower_case"])
    )
